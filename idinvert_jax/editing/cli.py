r"""`python edit.py <command>`: the paper's four editing applications plus boundary training.

  python edit.py interpolate    --checkpoint CKPT --src_dir INV_A --dst_dir INV_B --output OUT
  python edit.py manipulate     --checkpoint CKPT --codes_dir INV --boundary boundaries/age.npy --output OUT
  python edit.py train-boundary --checkpoint CKPT --num_samples 20000 --classifier my.module:smile --output OUT
  python edit.py style-mix      --checkpoint CKPT --style_dir INV_A --content_dir INV_B --output OUT
  python edit.py diffuse        --checkpoint CKPT --targets targets.txt --contexts contexts.txt --output OUT

INV folders are written by invert.py: inverted_codes.npy [N, L, D], image_list.txt (one input path per line,
in code order) and <name>_ori.png. Every command writes labelled PNG grids, an index.html showing them, and
the edited codes as .npy (all atomically).
"""
from __future__ import annotations

import argparse
import functools
import importlib
import math
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from idinvert_jax import files
from idinvert_jax import report

# Rows per PNG grid: a long job is split over several pages of one HTML file.
ROWS_PER_GRID = 16


class EditError(ValueError):
  """A user-fixable problem with an editing command's inputs."""


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers: models, rendering, inversion folders, images.

def load_checkpoint(path: str, names: Sequence[str] = ("generator",)):
  from idinvert_jax import export
  return export.load_models(path, names=names)


def generator_shape(models) -> tuple[int, int, int]:
  """(num_layers L, w_dim D, resolution) of the bundle's generator."""
  G = models.generator
  return int(G.num_layers), int(G.w_dim), int(G.resolution)


@functools.lru_cache(maxsize=None)
def _jitted(name: str):
  """Compiled generator functions with the module as a static argument: modules built from equal configs are
  equal, so every command (and every test) in one process shares one compilation per shape."""
  import jax
  from idinvert_jax.models import generator as generator_lib

  if name == "synthesize":
    return jax.jit(lambda G, v, wp: generator_lib.synthesize(G, v, wp), static_argnums=0)
  return jax.jit(lambda G, v, z, psi, layers: generator_lib.truncate(G, v, generator_lib.mapping(G, v, z), psi,
                                                                     layers), static_argnums=(0, 3, 4))


def make_renderer(models, batch_size: int = 8) -> Callable[[np.ndarray], np.ndarray]:
  """codes [M, L, D] -> images [M, H, W, 3] in [-1, 1], one compiled synthesis for every fixed-size batch."""
  G, variables = models.generator, models.generator_vars
  synthesize = functools.partial(_jitted("synthesize"), G)

  def render(codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes, np.float32)
    shape = codes.shape
    flat = codes.reshape((-1,) + shape[-2:])
    images = []
    for lo in range(0, flat.shape[0], batch_size):
      batch = flat[lo:lo + batch_size]
      real = batch.shape[0]
      if real < batch_size:  # Pad so every call reuses one compilation.
        batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - real, axis=0)])
      images.append(np.asarray(synthesize(variables, batch))[:real])
    images = np.concatenate(images, axis=0)
    return images.reshape(shape[:-2] + images.shape[1:])

  return render


def load_image(path, resolution: int) -> np.ndarray:
  """An image file as float32 [R, R, 3] in [-1, 1], resized as invert.py does."""
  from idinvert_jax import data
  return data.load_image(path, resolution)


def unique_names(paths: Sequence[Path]) -> list[str]:
  """File stems made unique with _2, _3, ... in order: the rule invert.py names its <name>_ori.png files by."""
  seen: dict[str, int] = {}
  names = []
  for path in paths:
    seen[path.stem] = seen.get(path.stem, 0) + 1
    names.append(path.stem if seen[path.stem] == 1 else f"{path.stem}_{seen[path.stem]}")
  return names


def read_inversion_dir(directory: str, resolution: int, num_layers: int, w_dim: int):
  """(names, codes [N, L, D], originals [N, R, R, 3] or None) from an invert.py output folder."""
  directory = Path(directory)
  codes_path, list_path = directory / "inverted_codes.npy", directory / "image_list.txt"
  for path in (codes_path, list_path):
    if not path.is_file():
      raise FileNotFoundError(f"{path} does not exist; pass a folder written by invert.py (it holds "
                              "inverted_codes.npy and image_list.txt).")
  codes = np.load(codes_path, allow_pickle=False).astype(np.float32)
  names = unique_names([Path(line.strip()) for line in list_path.read_text().splitlines() if line.strip()])
  if codes.ndim != 3 or codes.shape[1:] != (num_layers, w_dim):
    raise EditError(f"{codes_path} holds codes of shape {codes.shape}; this generator needs [N, {num_layers}, "
                    f"{w_dim}] - invert with the same checkpoint.")
  if len(names) != codes.shape[0]:
    raise EditError(f"{list_path} lists {len(names)} images but {codes_path} has {codes.shape[0]} codes; "
                    "re-run invert.py into a fresh folder.")
  originals = []
  for name in names:
    path = directory / f"{name}_ori.png"
    if not path.is_file():
      originals = None
      break
    originals.append(load_image(path, resolution))
  return names, codes, None if originals is None else np.stack(originals)


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


def expand_images(entries: Sequence[str]) -> list[str]:
  """Image paths from entries that are image files, folders or .txt lists (as invert.py reads its inputs)."""
  from idinvert_jax import data
  return [str(path) for path in data.expand_inputs(entries)]


def _blank(resolution: int) -> np.ndarray:
  return np.full((resolution, resolution, 3), 200, np.uint8)


def _for_display(image: np.ndarray, min_size: int = 64) -> np.ndarray:
  """uint8 cell, enlarged by an integer factor (nearest) to at least `min_size` px so labels fit above it."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = files.to_uint8(image)
  factor = max(1, math.ceil(min_size / image.shape[0]))
  return image if factor == 1 else np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def write_grids(output: Path, stem: str, rows: list, row_labels: list[str], col_labels: list[str],
                caption: str) -> list[tuple[str, str]]:
  """Writes rows as PNG grids of <= ROWS_PER_GRID rows; returns (relative path, caption) for the HTML page."""
  images = []
  pages = max(1, math.ceil(len(rows) / ROWS_PER_GRID))
  for page in range(pages):
    lo, hi = page * ROWS_PER_GRID, (page + 1) * ROWS_PER_GRID
    name = f"{stem}.png" if pages == 1 else f"{stem}_{page:03d}.png"
    cells = [[_for_display(cell) for cell in row] for row in rows[lo:hi]]
    report.save_grid(output / name, cells, row_labels=row_labels[lo:hi], col_labels=col_labels)
    images.append((name, caption if pages == 1 else f"{caption} (part {page + 1} of {pages})"))
  return images


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


# ---------------------------------------------------------------------------------------------------------------
# Commands.

def run_interpolate(args: argparse.Namespace) -> Path:
  """Every source x target pair, `--steps` intermediate codes plus both inversions, linear in W+."""
  from idinvert_jax.editing import interpolate as interpolate_lib

  output = Path(args.output)
  models = load_checkpoint(args.checkpoint)
  num_layers, w_dim, resolution = generator_shape(models)
  if args.steps < 0:
    raise EditError(f"--steps={args.steps}; pass 0 or more intermediate steps.")
  src_names, src_codes, src_images = read_inversion_dir(args.src_dir, resolution, num_layers, w_dim)
  if args.dst_dir:
    dst_names, dst_codes, dst_images = read_inversion_dir(args.dst_dir, resolution, num_layers, w_dim)
  else:
    dst_names, dst_codes, dst_images = src_names, src_codes, src_images
  src_ids = parse_indices(args.src, len(src_names), "--src") or list(range(len(src_names)))
  dst_ids = parse_indices(args.dst, len(dst_names), "--dst") or list(range(len(dst_names)))
  codes = np.asarray(interpolate_lib.interpolate_all_pairs(src_codes[src_ids], dst_codes[dst_ids],
                                                           args.steps + 2))
  files.atomic_save_npy(output / "interpolated_codes.npy", codes)
  images = make_renderer(models, args.batch_size)(codes)        # [S, T, steps + 2, H, W, 3]
  blank = _blank(resolution)
  rows, labels = [], []
  for i, s in enumerate(src_ids):
    for j, t in enumerate(dst_ids):
      src_image = blank if src_images is None else src_images[s]
      dst_image = blank if dst_images is None else dst_images[t]
      rows.append([src_image] + list(images[i, j]) + [dst_image])
      labels.append(f"{src_names[s]} -> {dst_names[t]}")
  cols = (["Source", "Source inv."] + [f"Step {k:02d}" for k in range(1, args.steps + 1)] +
          ["Target inv.", "Target"])
  grids = write_grids(output, "interpolation", rows, labels, cols, "Rows: source -> target pairs.")
  text = (f"Linear interpolation in W+ between {len(src_ids)} source and {len(dst_ids)} target codes, "
          f"{args.steps} intermediate steps. Codes: interpolated_codes.npy [S, T, steps + 2, L, D].\n\n"
          + _describe(args))
  report.write_html(output / "index.html", "Interpolation",
                    [report.Section("Interpolation", text=text, images=grids)])
  return output


def load_direction(path: str, num_layers: int):
  from idinvert_jax.editing import boundaries
  boundary = boundaries.load_boundary(path)
  try:
    return boundary, boundary.layerwise(num_layers)
  except ValueError as e:
    raise EditError(f"{path}: {e}") from None


def run_manipulate(args: argparse.Namespace) -> Path:
  """Moves every code along a boundary normal on the boundary's layers by linspace(start, end, steps)."""
  from idinvert_jax.editing import manipulate as manipulate_lib

  output = Path(args.output)
  models = load_checkpoint(args.checkpoint)
  num_layers, w_dim, resolution = generator_shape(models)
  names, codes, originals = read_inversion_dir(args.codes_dir, resolution, num_layers, w_dim)
  boundary, direction = load_direction(args.boundary, num_layers)
  if direction.shape[1] != w_dim:
    raise EditError(f"{args.boundary}: boundary of width {direction.shape[1]}; this generator has w_dim {w_dim}.")
  layers = parse_indices(args.layers, num_layers, "--layers")
  if layers is None:
    layers = list(boundary.layers) if boundary.layers else None
  if args.conditions:
    conditions = [load_direction(path, num_layers)[1] for path in args.conditions]
    direction = manipulate_lib.conditional_direction(direction, conditions, layers)
  strength = None
  if args.truncation_strength:
    G = models.generator
    psi = G.truncation_psi if G.truncation_psi is not None else 1.0
    strength = manipulate_lib.truncation_strength(num_layers, psi, G.truncation_layers or 0)
  distances = manipulate_lib.edit_distances(args.start, args.end, args.steps)
  edited = np.asarray(manipulate_lib.manipulate(codes, direction, distances,
                                                layers=None if layers is None else tuple(layers),
                                                strength=strength))
  files.atomic_save_npy(output / "manipulated_codes.npy", edited)
  images = make_renderer(models, args.batch_size)(np.concatenate([codes[:, None], edited], axis=1))
  rows = [[_blank(resolution) if originals is None else originals[n]] + list(images[n])
          for n in range(len(names))]
  cols = ["Original", "Inverted"] + [f"d={d:+.2f}" for d in distances]
  name = Path(args.boundary).stem
  grids = write_grids(output, f"manipulation_{name}", rows, names, cols, f"Boundary {name}; rows: images.")
  text = (f"Boundary {args.boundary} (attribute '{boundary.attribute}'), layers "
          f"{'all' if layers is None else layers}, conditions {args.conditions or 'none'}, distances "
          f"{args.start}..{args.end} in {args.steps} steps. Codes: manipulated_codes.npy [N, steps, L, D].\n\n"
          + _describe(args))
  report.write_html(output / "index.html", f"Manipulation: {name}",
                    [report.Section("Manipulation", text=text, images=grids)])
  return output


def run_style_mix(args: argparse.Namespace) -> Path:
  """Every style x content: the content code with the style code's layers from --mix_layer_start on."""
  from idinvert_jax.editing import style_mix

  output = Path(args.output)
  models = load_checkpoint(args.checkpoint)
  num_layers, w_dim, resolution = generator_shape(models)
  style_names, style_codes, style_images = read_inversion_dir(args.style_dir, resolution, num_layers, w_dim)
  content_names, content_codes, content_images = read_inversion_dir(args.content_dir, resolution, num_layers,
                                                                    w_dim)
  start = style_mix.default_mix_layer_start(num_layers) if args.mix_layer_start is None else args.mix_layer_start
  if not 0 <= start < num_layers:
    raise EditError(f"--mix_layer_start={start} is outside 0..{num_layers - 1} for this generator.")
  mix_layers = tuple(range(start, num_layers))
  codes = np.asarray(style_mix.mix_styles(style_codes, content_codes, mix_layers))
  files.atomic_save_npy(output / "mixed_codes.npy", codes)
  render = make_renderer(models, args.batch_size)
  images = render(codes)                                          # [S, C, H, W, 3]
  if content_images is None:
    content_images = render(content_codes)
  if style_images is None:
    style_images = render(style_codes)
  rows = [[_blank(resolution)] + list(content_images)]
  rows += [[style_images[s]] + list(images[s]) for s in range(len(style_names))]
  grids = write_grids(output, "style_mixing", rows, ["content:"] + [f"style {n}" for n in style_names],
                      ["Style"] + list(content_names),
                      "First row: content images; first column: style images; cell: mixed result.")
  text = (f"Layers {start}..{num_layers - 1} of {num_layers} come from the style code. "
          f"Codes: mixed_codes.npy [styles, contents, L, D].\n\n" + _describe(args))
  report.write_html(output / "index.html", "Style mixing",
                    [report.Section("Style mixing", text=text, images=grids)])
  return output


def run_diffuse(args: argparse.Namespace) -> Path:
  """Pastes each target's crop into every context and re-inverts with the masked objective."""
  from idinvert_jax.editing import diffuse as diffuse_lib

  output = Path(args.output)
  models = load_checkpoint(args.checkpoint, names=None)
  if models.encoder_vars is None:
    raise EditError(f"{args.checkpoint} has no encoder; diffusion starts from the encoder's code - use a "
                    "checkpoint with an encoder.")
  if models.perceptual_vars is None and not args.no_perceptual:
    raise EditError(f"{args.checkpoint} has no perceptual (VGG16) model; add one with the converter or pass "
                    "--no_perceptual for a pixel-only objective.")
  num_layers, w_dim, resolution = generator_shape(models)
  crop, cx, cy = diffuse_lib.default_crop(resolution)
  crop = crop if args.crop_size is None else args.crop_size
  cx = cx if args.center_x is None else args.center_x
  cy = cy if args.center_y is None else args.center_y
  diffuse_lib.crop_mask(resolution, crop, cx, cy)  # Fails early with a clear message.
  section = diffuse_lib.diffusion_invert_config(models.config, num_iterations=args.num_iterations,
                                                learning_rate=args.learning_rate,
                                                loss_weight_feat=0.0 if args.no_perceptual else
                                                args.loss_weight_feat,
                                                batch_size=args.batch_size, num_results=args.num_results)
  target_paths, context_paths = expand_images(args.targets), expand_images(args.contexts)
  contexts = np.stack([load_image(p, resolution) for p in context_paths])
  all_codes, rows, labels, cols = [], [], [], None
  for target_path in target_paths:
    target = load_image(target_path, resolution)
    result = diffuse_lib.diffuse(target, contexts, models, section, crop, cx, cy, progress=args.progress)
    all_codes.append(result.codes)
    # The last snapshot is the result itself; it is shown once, as the last column.
    snapshots = [(step, images) for step, images in result.snapshots if step < section.num_iterations]
    cols = (["Target", "Context", "Copy-paste", "Encoder"] + [f"Step {step}" for step, _ in snapshots]
            + [f"Result ({section.num_iterations})"])
    for c, context_path in enumerate(context_paths):
      rows.append([target, contexts[c], result.stitched[c], result.encoder_outputs[c]]
                  + [images[c] for _, images in snapshots] + [result.results[c]])
      labels.append(f"{Path(target_path).stem} -> {Path(context_path).stem}")
  codes = np.stack(all_codes)                                     # [T, C, L, D]
  files.atomic_save_npy(output / "diffused_codes.npy", codes)
  files.atomic_write_text(output / "target_list.txt", "\n".join(target_paths) + "\n")
  files.atomic_write_text(output / "context_list.txt", "\n".join(context_paths) + "\n")
  grids = write_grids(output, "diffusion", rows, labels, cols, "Rows: target -> context pairs.")
  text = (f"Crop {crop} px centred at x={cx}, y={cy}; {section.num_iterations} steps, lr "
          f"{section.learning_rate}, perceptual weight {section.loss_weight_feat}, no encoder term. "
          f"Codes: diffused_codes.npy [targets, contexts, L, D].\n\n" + _describe(args))
  report.write_html(output / "index.html", "Semantic diffusion",
                    [report.Section("Semantic diffusion", text=text, images=grids)])
  return output


def _import_callable(spec: str) -> Callable:
  module_name, _, attr = spec.partition(":")
  if not module_name or not attr:
    raise EditError(f"--classifier={spec!r}; use 'package.module:function'.")
  try:
    return getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError) as e:
    raise EditError(f"--classifier={spec!r} cannot be imported ({e}); check the module path.") from None


def sample_codes(models, num: int, seed: int, truncation_psi: float | None, truncation_layers: int | None,
                 batch_size: int) -> np.ndarray:
  """z ~ N(0, I) -> mapping -> truncation (generator defaults unless given): [num, L, D] W+ codes."""
  G, variables = models.generator, models.generator_vars
  to_wp = lambda v, z: _jitted("map_and_truncate")(G, v, z, truncation_psi, truncation_layers)
  z = np.random.default_rng(seed).standard_normal((num, G.z_dim)).astype(np.float32)
  codes = []
  for lo in range(0, num, batch_size):
    batch = z[lo:lo + batch_size]
    real = batch.shape[0]
    batch = np.concatenate([batch, np.zeros((batch_size - real, G.z_dim), np.float32)])
    codes.append(np.asarray(to_wp(variables, batch))[:real])
  return np.concatenate(codes)


def run_train_boundary(args: argparse.Namespace) -> Path:
  """Fits an InterFaceGAN boundary on W+ codes scored by labels or a classifier."""
  from idinvert_jax.editing import boundaries
  from idinvert_jax.editing import manipulate as manipulate_lib

  output = Path(args.output)
  if bool(args.labels) == bool(args.classifier):
    raise EditError("train-boundary: pass exactly one of --labels (file of scores) and --classifier "
                    "(module:function scoring images).")
  models = load_checkpoint(args.checkpoint) if args.checkpoint else None
  if args.codes_dir or args.codes:
    path = Path(args.codes_dir) / "inverted_codes.npy" if args.codes_dir else Path(args.codes)
    if not path.is_file():
      raise FileNotFoundError(f"{path} does not exist; pass --codes_dir (an invert.py folder) or --codes "
                              "(a .npy of [N, L, D] codes).")
    codes = np.load(path, allow_pickle=False).astype(np.float32)
    source = str(path)
  else:
    if models is None:
      raise EditError("train-boundary: give codes (--codes_dir / --codes) or a --checkpoint to sample "
                      "--num_samples codes from.")
    codes = sample_codes(models, args.num_samples, args.seed, args.truncation_psi, args.truncation_layers,
                         args.batch_size)
    files.atomic_save_npy(output / "sampled_codes.npy", codes)
    source = f"sampled: {args.num_samples} codes, seed {args.seed}"
  if codes.ndim != 3:
    raise EditError(f"train-boundary: codes of shape {codes.shape}; expected [N, L, D] W+ codes.")
  if args.labels:
    scores = boundaries.read_scores(args.labels, args.label_column)
  else:
    if models is None:
      raise EditError("train-boundary: --classifier scores images, so pass --checkpoint too.")
    classifier = _import_callable(args.classifier)
    render = make_renderer(models, args.batch_size)
    scores = np.concatenate([np.asarray(classifier(render(codes[lo:lo + args.batch_size])), np.float32)
                             .reshape(-1) for lo in range(0, codes.shape[0], args.batch_size)])
    files.atomic_save_npy(output / "scores.npy", scores)
  if scores.shape[0] != codes.shape[0]:
    raise EditError(f"train-boundary: {scores.shape[0]} scores for {codes.shape[0]} codes; give one per code "
                    "(in code order).")
  layers = parse_indices(args.layers, codes.shape[1], "--layers")
  attribute = args.attribute or args.label_column or (Path(args.labels).stem if args.labels
                                                      else args.classifier.partition(":")[2])
  boundary = boundaries.train_boundary(codes, scores, layers=layers, per_layer=args.per_layer, ratio=args.ratio,
                                       split=args.split, method=args.method, c=args.c, num_steps=args.num_steps,
                                       seed=args.seed, attribute=attribute)
  boundary.meta["codes"] = source
  boundary_path = boundaries.save_boundary(output / f"{attribute}.npz", boundary)
  table = (["quantity", "value"],
           [["validation accuracy", boundary.accuracy],
            ["remaining-samples accuracy", boundary.meta["remaining_accuracy"]],
            ["train / validation samples", f"{boundary.meta['num_train']} / {boundary.meta['num_val']}"],
            ["layers", ",".join(map(str, boundary.layers))], ["method", args.method]])
  sections = [report.Section("Boundary", text=f"Saved {boundary_path.name}. Codes: {source}.\n\n"
                             + _describe(args), table=table)]
  if models is not None:
    num_layers, w_dim, resolution = generator_shape(models)
    if codes.shape[1:] == (num_layers, w_dim):
      preview = codes[:min(4, codes.shape[0])]
      distances = manipulate_lib.edit_distances(-3.0, 3.0, 7)
      edited = np.asarray(manipulate_lib.manipulate(preview, boundary.direction, distances,
                                                    layers=tuple(boundary.layers)))
      files.atomic_save_npy(output / "preview_codes.npy", edited)
      images = make_renderer(models, args.batch_size)(edited)
      grids = write_grids(output, f"preview_{attribute}", [list(row) for row in images],
                          [f"code {i}" for i in range(len(preview))], [f"d={d:+.1f}" for d in distances],
                          "Manipulating the first codes along the new boundary.")
      sections.append(report.Section("Preview", images=grids))
  report.write_html(output / "index.html", f"Boundary: {attribute}", sections)
  print(f"{boundary_path}: validation accuracy {boundary.accuracy:.4f}")
  return output


# ---------------------------------------------------------------------------------------------------------------
# Argument parsing.

def _common(parser: argparse.ArgumentParser, needs_checkpoint: bool = True) -> None:
  parser.add_argument("--checkpoint", required=needs_checkpoint, default=None,
                      help="Model checkpoint folder (convert/train output) or a training workdir.")
  parser.add_argument("--output", required=True, help="Folder for the PNG grids, index.html and codes.")
  parser.add_argument("--batch_size", type=int, default=8, help="Codes synthesised per generator call.")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="edit.py", description=__doc__,
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
  _common(p)
  p.set_defaults(batch_size=4)
  p.add_argument("--targets", nargs="+", required=True, help="Target images: files, folders or .txt lists.")
  p.add_argument("--contexts", nargs="+", required=True, help="Context images: files, folders or .txt lists.")
  p.add_argument("--crop_size", type=int, default=None, help="Side of the pasted square (official 110 at 256 "
                 "px; default scaled to the resolution).")
  p.add_argument("--center_x", type=int, default=None, help="Column of the crop centre (official 125 at 256).")
  p.add_argument("--center_y", type=int, default=None, help="Row of the crop centre (official 145 at 256).")
  p.add_argument("--num_iterations", type=int, default=100, help="Optimisation steps (official 100).")
  p.add_argument("--learning_rate", type=float, default=0.01, help="Adam step size (official 0.01).")
  p.add_argument("--loss_weight_feat", type=float, default=5e-5, help="Perceptual weight (official 5e-5).")
  p.add_argument("--num_results", type=int, default=5, help="Intermediate results shown (official 5).")
  p.add_argument("--no_perceptual", action="store_true",
                 help="Pixel loss only (for checkpoints without VGG16 weights).")
  p.add_argument("--progress", action="store_true", help="Show a progress bar.")
  p.set_defaults(func=run_diffuse)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    args.func(args)
  except (ValueError, FileNotFoundError) as e:  # User-fixable errors (the project's convention).
    print(f"edit.py {args.command}: {e}", file=sys.stderr)
    return 2
  print(f"wrote {Path(args.output) / 'index.html'}")
  return 0
