r"""`python edit.py <command>`: the paper's four editing applications plus boundary training.

  python edit.py interpolate    --checkpoint CKPT --src_dir INV_A --dst_dir INV_B --output OUT
  python edit.py manipulate     --checkpoint CKPT --codes_dir INV --boundary boundaries/age.npy --output OUT
  python edit.py train-boundary --checkpoint CKPT --num_samples 20000 --classifier my.module:smile --output OUT
  python edit.py style-mix      --checkpoint CKPT --style_dir INV_A --content_dir INV_B --output OUT
  python edit.py diffuse        --checkpoint CKPT --targets targets.txt --contexts contexts.txt --output OUT

INV folders are written by invert.py (idinvert_jax/inversion_folder.py): inverted_codes.npy [N, L, D],
image_list.txt (one input path per line, in code order) and <name>_ori.png. Every command writes labelled PNG
grids, an index.html showing them, and the edited codes as .npy (all atomically). This module only parses flags,
reads the inputs and calls the jobs in idinvert_jax/editing/jobs.py.

Exit codes: 0 done; 1 nothing could be done (usage error, missing checkpoint or input folder, bad boundary).
Every command works on whole folders / code sets, so there is no partial result (code 2).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from idinvert_jax import exit_codes
from idinvert_jax.editing import jobs
from idinvert_jax.editing.jobs import EditError


def show_progress(flag: bool | None) -> bool:
  """--progress / --no-progress, else a bar whenever stderr is a terminal (a diffusion runs for minutes)."""
  return sys.stderr.isatty() if flag is None else bool(flag)


def load_checkpoint(path: str, names: Sequence[str] | None = ("generator",)):
  from idinvert_jax import export
  return export.load_models(path, names=names)


def read_folder(directory: str, models):
  """An invert.py folder's names, codes and originals, checked against the checkpoint's generator."""
  from idinvert_jax import inversion_folder
  num_layers, w_dim, resolution = jobs.generator_shape(models)
  return inversion_folder.read(directory, num_layers, w_dim, resolution)


def parse_indices(text: str | None, count: int | None = None, what: str = "indices") -> list[int] | None:
  """'0,2,5-7' -> [0, 2, 5, 6, 7] (sorted, unique); '' / None -> None. Checks 0 <= i < count."""
  if text is None or not str(text).strip():
    return None
  indices = set()
  for part in str(text).replace(" ", "").split(","):
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
    if not match:
      raise EditError(f"{what} {text!r} is not a list like '0,2,5-7'; fix the flag.")
    lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
    indices.update(range(lo, hi + 1))
  if count is not None:
    bad = sorted(i for i in indices if not 0 <= i < count)
    if bad:
      raise EditError(f"{what} {bad} are out of range 0..{count - 1}; fix the flag.")
  return sorted(indices)


def _load_images(entries: Sequence[str], resolution: int) -> tuple[list[str], np.ndarray]:
  """(paths, images [N, R, R, 3] in [-1, 1]) from image files, folders or .txt lists, as invert.py reads them."""
  from idinvert_jax import data
  paths = [str(path) for path in data.expand_inputs(entries)]
  return paths, np.stack([data.load_image(p, resolution) for p in paths])


def _describe(args: argparse.Namespace) -> str:
  """The command line that reproduces this run (for the HTML page)."""
  parts = [f"python edit.py {args.command}"]
  for key, value in sorted(vars(args).items()):
    if key in ("command", "func") or value in (None, "", False, []):
      continue
    if value is True:
      parts.append(f"--{key}")
    elif isinstance(value, (list, tuple)):
      parts.append(f"--{key} " + " ".join(map(str, value)))
    else:
      parts.append(f"--{key}={value}")
  return "Command: " + " ".join(parts)


def command_line(command: str, **flags) -> str:
  """The 'Command: python edit.py ...' line of a page: the edit.py call that repeats a job run with these flag
  values (the others at their defaults). For callers of editing.jobs that want their pages to say it."""
  argv = [command]
  for key, value in flags.items():
    if value is None or value is False:
      continue
    if value is True:
      argv.append(f"--{key}")
    elif isinstance(value, (list, tuple)):
      argv += [f"--{key}"] + [str(v) for v in value]
    else:
      argv.append(f"--{key}={value}")
  return _describe(build_parser().parse_args(argv))


# ---------------------------------------------------------------------------------------------------------------
# Commands: flags -> inputs -> one job -> its folder.

def run_interpolate(args: argparse.Namespace) -> Path:
  """Every source x target pair, `--steps` intermediate codes plus both inversions, linear in W+."""
  models = load_checkpoint(args.checkpoint)
  source = read_folder(args.src_dir, models)
  target = read_folder(args.dst_dir, models) if args.dst_dir else source
  result = jobs.interpolate(models, source, target, args.steps,
                            parse_indices(args.src, len(source.names), "--src"),
                            parse_indices(args.dst, len(target.names), "--dst"), args.batch_size)
  result.write(args.output, _describe(args))
  return Path(args.output)


def run_manipulate(args: argparse.Namespace) -> Path:
  """Moves every code along a boundary normal on the boundary's layers by linspace(start, end, steps)."""
  models = load_checkpoint(args.checkpoint)
  images = read_folder(args.codes_dir, models)
  layers = parse_indices(args.layers, jobs.generator_shape(models)[0], "--layers")
  result = jobs.manipulate(models, images, args.boundary, args.start, args.end, args.steps, layers=layers,
                           conditions=args.conditions, truncation_strength=args.truncation_strength,
                           batch_size=args.batch_size)
  result.write(args.output, _describe(args))
  return Path(args.output)


def run_style_mix(args: argparse.Namespace) -> Path:
  """Every style x content: the content code with the style code's layers from --mix_layer_start on."""
  models = load_checkpoint(args.checkpoint)
  result = jobs.style_mix(models, read_folder(args.style_dir, models), read_folder(args.content_dir, models),
                          args.mix_layer_start, args.batch_size)
  result.write(args.output, _describe(args))
  return Path(args.output)


def run_diffuse(args: argparse.Namespace) -> Path:
  """Pastes each target's crop into every context and re-inverts with the masked objective."""
  from idinvert_jax.editing import diffuse as diffuse_lib

  models = load_checkpoint(args.checkpoint, names=None)
  if models.encoder_vars is None:
    raise EditError(f"{args.checkpoint} has no encoder; diffusion starts from the encoder's code - use a "
                    "checkpoint with an encoder.")
  if models.perceptual_vars is None and not args.no_perceptual:
    from idinvert_jax.convert import vgg16  # pylint: disable=import-outside-toplevel
    loaded = vgg16.load_perceptual(models.config.model)  # config.model.perceptual.weights, as invert.py does
    if loaded is not None:
      models.perceptual, models.perceptual_vars = loaded
    else:  # As invert.py and the demo: warn and go on with the pixel objective, never random VGG weights.
      logging.warning("%s has no VGG16 weights: the perceptual term is off (pixel loss only); add them with the "
                      "converter (--perceptual vgg16.pth) or set config.model.perceptual.weights",
                      args.checkpoint)
      args.no_perceptual = True
  _, _, resolution = jobs.generator_shape(models)
  settings = diffuse_lib.diffusion_settings(models.config, num_iterations=args.num_iterations,
                                            learning_rate=args.learning_rate,
                                            loss_weight_feat=0.0 if args.no_perceptual else args.loss_weight_feat,
                                            batch_size=args.batch_size, num_results=args.num_results)
  target_paths, targets = _load_images(args.targets, resolution)
  context_paths, contexts = _load_images(args.contexts, resolution)
  result = jobs.diffuse(models, targets, contexts, settings, args.crop_size, args.center_x, args.center_y,
                        target_names=[Path(p).stem for p in target_paths],
                        context_names=[Path(p).stem for p in context_paths], target_sources=target_paths,
                        context_sources=context_paths, progress=show_progress(args.progress))
  result.write(args.output, _describe(args))
  return Path(args.output)


def _import_callable(spec: str) -> Callable:
  module_name, _, attr = spec.partition(":")
  if not module_name or not attr:
    raise EditError(f"--classifier={spec!r}; use 'package.module:function'.")
  try:
    return getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError) as e:
    raise EditError(f"--classifier={spec!r} cannot be imported ({e}); check the module path.") from None


def run_train_boundary(args: argparse.Namespace) -> Path:
  """Fits an InterFaceGAN boundary on W+ codes scored by labels or a classifier."""
  from idinvert_jax import inversion_folder
  from idinvert_jax.editing import boundaries

  if bool(args.labels) == bool(args.classifier):
    raise EditError("train-boundary: pass exactly one of --labels (file of scores) and --classifier "
                    "(module:function scoring images).")
  models = load_checkpoint(args.checkpoint) if args.checkpoint else None
  codes, source = None, ""
  if args.codes_dir or args.codes:
    path = Path(args.codes_dir) / inversion_folder.CODES_FILE if args.codes_dir else Path(args.codes)
    if not path.is_file():
      raise FileNotFoundError(f"{path} does not exist; pass --codes_dir (an invert.py folder) or --codes "
                              "(a .npy of [N, L, D] codes).")
    codes, source = np.load(path, allow_pickle=False).astype(np.float32), str(path)
  scores = boundaries.read_scores(args.labels, args.label_column) if args.labels else None
  num_layers = codes.shape[1] if codes is not None and codes.ndim == 3 else (
      jobs.generator_shape(models)[0] if models is not None else None)
  attribute = args.attribute or args.label_column or (Path(args.labels).stem if args.labels
                                                      else args.classifier.partition(":")[2])
  result = jobs.train_boundary(
      codes, scores, attribute, models=models,
      classifier=_import_callable(args.classifier) if args.classifier else None, num_samples=args.num_samples,
      truncation_psi=args.truncation_psi, truncation_layers=args.truncation_layers,
      layers=parse_indices(args.layers, num_layers, "--layers"),
      per_layer=args.per_layer, ratio=args.ratio, split=args.split, method=args.method, c=args.c,
      num_steps=args.num_steps, seed=args.seed, source=source, batch_size=args.batch_size)
  boundary_path = result.write(args.output, _describe(args))
  print(f"{boundary_path}: validation accuracy {result.boundary.accuracy:.4f}")
  return Path(args.output)


# ---------------------------------------------------------------------------------------------------------------
# Argument parsing.

def _common(parser: argparse.ArgumentParser, needs_checkpoint: bool = True, batch_size: int | None = 8,
            batch_help: str = "Codes synthesised per generator call.") -> None:
  parser.add_argument("--checkpoint", required=needs_checkpoint, default=None,
                      help="Model checkpoint folder (convert/train output) or a training workdir.")
  parser.add_argument("--output", required=True, help="Folder for the PNG grids, index.html and codes.")
  parser.add_argument("--batch_size", type=int, default=batch_size, help=batch_help)


def build_parser() -> argparse.ArgumentParser:
  parser = exit_codes.ArgumentParser(prog="edit.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True, metavar="command")

  p = sub.add_parser("interpolate", help="Linear interpolation between inverted codes.",
                     description=run_interpolate.__doc__)
  _common(p)
  p.add_argument("--src_dir", required=True, help="invert.py output folder with the source codes.")
  p.add_argument("--dst_dir", default="", help="invert.py folder with the target codes (default: --src_dir).")
  p.add_argument("--src", default="", help="Source indices, e.g. '0,2-4' (default: all).")
  p.add_argument("--dst", default="", help="Target indices, e.g. '1,5' (default: all).")
  p.add_argument("--steps", type=int, default=5,
                 help="Intermediate codes between the two inversions (official: 5; endpoints are added).")
  p.set_defaults(func=run_interpolate)

  p = sub.add_parser("manipulate", help="Move inverted codes along a semantic boundary.",
                     description=run_manipulate.__doc__)
  _common(p)
  p.add_argument("--codes_dir", required=True, help="invert.py output folder with the codes to edit.")
  p.add_argument("--boundary", required=True,
                 help="Boundary: official pickled .npy, plain [1,D]/[1,L,D] .npy, or train-boundary's .npz.")
  p.add_argument("--conditions", nargs="*", default=[],
                 help="Boundaries whose attributes must not change (conditional manipulation).")
  p.add_argument("--layers", default="",
                 help="W+ layers to edit, e.g. '0-5' (default: the boundary's own layers, else all).")
  p.add_argument("--start", type=float, default=-3.0, help="First distance (official: -3).")
  p.add_argument("--end", type=float, default=3.0, help="Last distance (official: 3).")
  p.add_argument("--steps", type=int, default=7, help="Number of distances (official: 7).")
  p.add_argument("--truncation_strength", action="store_true",
                 help="Scale steps on truncated layers by psi (for codes sampled with truncation).")
  p.set_defaults(func=run_manipulate)

  p = sub.add_parser("train-boundary", help="Fit an InterFaceGAN boundary in W+.",
                     description=run_train_boundary.__doc__)
  _common(p, needs_checkpoint=False)
  p.add_argument("--codes_dir", default="", help="invert.py folder whose inverted_codes.npy are scored.")
  p.add_argument("--codes", default="", help="A .npy of [N, L, D] codes (instead of --codes_dir).")
  p.add_argument("--num_samples", type=int, default=10000,
                 help="Codes sampled from --checkpoint's generator when no codes are given.")
  p.add_argument("--truncation_psi", type=float, default=None, help="Truncation for sampled codes "
                 "(default: the generator's).")
  p.add_argument("--truncation_layers", type=int, default=None, help="Truncated layers for sampled codes.")
  p.add_argument("--labels", default="", help="Scores/labels, one per code in code order (for sampled codes: "
                 "the order of sampled_codes.npy of the same --seed): .npy or .csv/.txt.")
  p.add_argument("--label_column", default=None, help="CSV column holding the score (default: the last).")
  p.add_argument("--classifier", default="",
                 help="'module:function' mapping images [N,H,W,3] in [-1,1] to scores [N] (needs --checkpoint).")
  p.add_argument("--attribute", default="", help="Name of the attribute and of the .npz file (default: "
                 "--label_column, the labels file's name, or the classifier's function name).")
  p.add_argument("--layers", default="", help="W+ layers the boundary lives on, e.g. '0-5' (default: all).")
  p.add_argument("--per_layer", action="store_true", help="One classifier per layer instead of one on all.")
  p.add_argument("--ratio", type=float, default=0.02,
                 help="Fraction of highest and of lowest scores kept (official 0.02; 0.5 for 0/1 labels).")
  p.add_argument("--split", type=float, default=0.7, help="Train fraction of the kept samples.")
  p.add_argument("--method", choices=("svm", "logistic"), default="svm", help="Linear classifier.")
  p.add_argument("--c", type=float, default=1.0, help="Inverse regularisation strength (as sklearn's C).")
  p.add_argument("--num_steps", type=int, default=200, help="L-BFGS iterations.")
  p.add_argument("--seed", type=int, default=0, help="Seed of the sampling and of the train/val split.")
  p.set_defaults(func=run_train_boundary)

  p = sub.add_parser("style-mix", help="Copy fine layers of style codes into content codes.",
                     description=run_style_mix.__doc__)
  _common(p)
  p.add_argument("--style_dir", required=True, help="invert.py folder with the style codes.")
  p.add_argument("--content_dir", required=True, help="invert.py folder with the content codes.")
  p.add_argument("--mix_layer_start", type=int, default=None,
                 help="First W+ layer taken from the style (default: official 10 of 14, scaled to L).")
  p.set_defaults(func=run_style_mix)

  p = sub.add_parser("diffuse", help="Semantic diffusion of a target crop into context images.",
                     description=run_diffuse.__doc__)
  _common(p, batch_size=None, batch_help="Contexts optimised together (default: the checkpoint's "
          "config.invert.batch_size).")
  p.add_argument("--targets", nargs="+", required=True, help="Target images: files, folders or .txt lists.")
  p.add_argument("--contexts", nargs="+", required=True, help="Context images: files, folders or .txt lists.")
  p.add_argument("--crop_size", type=int, default=None, help="Side of the pasted square (official 110 at 256 "
                 "px; default scaled to the resolution).")
  p.add_argument("--center_x", type=int, default=None, help="Column of the crop centre (official 125 at 256).")
  p.add_argument("--center_y", type=int, default=None, help="Row of the crop centre (official 145 at 256).")
  p.add_argument("--num_iterations", type=int, default=None,
                 help="Optimisation steps (default: the checkpoint's config.invert, official 100).")
  p.add_argument("--learning_rate", type=float, default=None,
                 help="Adam step size (default: the checkpoint's config.invert, official 0.01).")
  p.add_argument("--loss_weight_feat", type=float, default=None,
                 help="Perceptual weight (default: the checkpoint's config.invert, official 5e-5).")
  p.add_argument("--num_results", type=int, default=None,
                 help="Intermediate results shown (default: the checkpoint's config.invert, official 5).")
  p.add_argument("--no_perceptual", action="store_true",
                 help="Pixel loss only (for checkpoints without VGG16 weights).")
  p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                 help="Show a progress bar (default: when stderr is a terminal).")
  p.set_defaults(func=run_diffuse)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    args.func(args)
  except (ValueError, OSError) as e:  # User-fixable errors (bad inputs, missing or unwritable paths): one line.
    print(f"edit.py {args.command}: {e}", file=sys.stderr)
    return exit_codes.NOTHING_DONE
  print(f"wrote {Path(args.output) / 'index.html'}")
  return exit_codes.OK
