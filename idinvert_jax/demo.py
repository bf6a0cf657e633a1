r"""The demo (`make demo`): invert the shipped example faces and edit them, one HTML report at the end.

  python -m idinvert_jax.demo --output demo_out [--checkpoint DIR] [--images PATH ...] [--num_iterations 100]
                              [--skip_diffusion] [--seed 0]

Stages (each timed, each writing its own folder under --output with PNG grids, codes and an index.html; the
stages call the library jobs behind invert.py and edit.py: invert_job.run_inversion and editing/jobs.py):

  model         the shipped checkpoint (assets/demo_checkpoint: a 64 px model trained on synthetic faces, with
                boundaries/*.npz), or, when none is shipped, a randomly initialised tiny model (configs/tiny.py)
                saved to OUTPUT/random_tiny_checkpoint - said loudly on the console and in the report
  boundaries    the checkpoint's boundaries/*.npz; without any, two placeholder boundaries are trained on the
                spot (the train-boundary job) from generator samples scored by fixed random pixel directions
  inversion     in-domain inversion of every example image (`invert.py`'s job: OUTPUT/inversion)
  interpolation two pairs of inverted faces (OUTPUT/interpolation_<a>_<b>)
  manipulation  every face moved along two boundaries (OUTPUT/manipulation_<attribute>)
  style mixing  every face's fine layers into every other face (OUTPUT/style_mixing)
  diffusion     the first face's centre crop diffused into three others (OUTPUT/diffusion)

OUTPUT/index.html links every section's grids with captions, the timings and the machine. Iterations: the
official 100 steps, except for models above 64 px on a CPU, which get 20 (see --num_iterations). Measured on a
2-core machine shared with other jobs (load ~12-16): the random tiny model with 100 steps ~1.5 min of CPU time
(4.8 min wall under that load); a random 64 px model (configs/synthetic64.py) with 10 steps: inversion 200 s wall.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from idinvert_jax import machine, report

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO / "assets" / "demo_checkpoint"
DEFAULT_IMAGES = REPO / "assets" / "examples"
RANDOM_CHECKPOINT_DIR = "random_tiny_checkpoint"
NO_CHECKPOINT_BANNER = "no trained demo checkpoint shipped: random tiny model, the pictures are noise"
PLACEHOLDER_ATTRIBUTES = ("random_direction_a", "random_direction_b")
# Pairs of example indices interpolated (skipped where the images are fewer).
INTERPOLATION_PAIRS = ((0, 1), (2, 3))
DIFFUSION_CONTEXTS = 3
OFFICIAL_NUM_ITERATIONS = 100
CPU_NUM_ITERATIONS = 20     # Default on a CPU for models above CPU_FULL_ITERATIONS_MAX_RESOLUTION.
CPU_FULL_ITERATIONS_MAX_RESOLUTION = 64  # The shipped 64 px demo model runs the official 100 steps.
PLACEHOLDER_SAMPLES = 200   # Generator samples scored per placeholder boundary.
OVERVIEW_MIN_SIZE = 64      # Cells of the inversion overview are enlarged (nearest) to at least this size.

log = logging.getLogger("idinvert_jax.demo")


class DemoError(ValueError):
  """A user-fixable problem with the demo's flags or inputs."""


# ----------------------------------------------------------------------------------------------------------
# Placeholder attribute scores: fixed random directions in pixel space (importable, for `--classifier`).


def _random_pixel_score(images: np.ndarray, name: str) -> np.ndarray:
  """Projection of each image onto a fixed unit random direction, seeded by `name` and the image shape."""
  images = np.asarray(images, np.float32)
  flat = images.reshape(images.shape[0], -1)
  seed = [sum(map(ord, name))] + list(images.shape[1:])
  direction = np.random.default_rng(seed).standard_normal(flat.shape[1]).astype(np.float32)
  return flat @ (direction / np.linalg.norm(direction))


def random_direction_a(images: np.ndarray) -> np.ndarray:
  """Placeholder attribute 'a': a fixed random pixel direction (means nothing; keeps the pipeline running)."""
  return _random_pixel_score(images, "random_direction_a")


def random_direction_b(images: np.ndarray) -> np.ndarray:
  """Placeholder attribute 'b': another fixed random pixel direction."""
  return _random_pixel_score(images, "random_direction_b")


# ----------------------------------------------------------------------------------------------------------
# Stages.


@dataclasses.dataclass
class DemoModel:
  checkpoint: Path       # the checkpoint every stage reads
  trained: bool          # False: the random tiny stand-in
  description: str       # one line for the console and the report
  resolution: int
  models: Any = None     # export.Models read back from `checkpoint` (every model it has)


@dataclasses.dataclass
class DemoSummary:
  output: Path
  index: Path
  model: DemoModel
  boundaries: list       # [(path, caption)]
  timings: list          # [(stage, seconds)]
  inversion_metrics: dict


class _Stages:
  """Times named stages and logs them as numbered progress lines."""

  def __init__(self, total: int):
    self.total, self.done, self.timings = total, 0, []

  def run(self, name: str, fn, *args, **kwargs):
    self.done += 1
    log.info("[%d/%d] %s ...", self.done, self.total, name)
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    self.timings.append((name, seconds))
    log.info("[%d/%d] %s done in %.1f s", self.done, self.total, name, seconds)
    return result


def _loud(message: str) -> None:
  line = "!" * (len(message) + 4)
  print(f"\n{line}\n! {message} !\n{line}\n", file=sys.stderr, flush=True)


def _tiny_config():
  try:
    from configs import tiny
  except ImportError:  # Installed elsewhere: the configs folder sits next to the package in the repository.
    sys.path.insert(0, str(REPO))
    from configs import tiny
  return tiny.get_config()


def prepare_model(checkpoint: str | Path | None, output: Path, seed: int) -> DemoModel:
  """The checkpoint to use: the given one, the shipped one, or (none shipped) a random tiny one saved to disk;
  its models are read back from disk for every stage.

  An explicitly given --checkpoint must exist; only the default location falls back to the random model.
  """
  from idinvert_jax import export
  if checkpoint is not None:
    directory = export.find_checkpoint_dir(checkpoint)  # Raises a one-line CheckpointError naming the path.
    return _load_model(directory, f"checkpoint {directory}")
  try:
    directory = export.find_checkpoint_dir(DEFAULT_CHECKPOINT)
  except export.CheckpointError:
    directory = None
  if directory is not None:
    return _load_model(directory, f"shipped demo checkpoint {directory}")
  _loud(f"{NO_CHECKPOINT_BANNER} (nothing at {DEFAULT_CHECKPOINT})")
  import jax
  config = _tiny_config()
  models = export.create_models(config, jax.random.key(seed), names=("generator", "encoder"))
  directory = export.save_models(output / RANDOM_CHECKPOINT_DIR, config, models.variables())
  return _load_model(directory, f"random tiny model (configs/tiny.py, {config.model.resolution} px, seed "
                                f"{seed}), saved to {directory}", trained=False)


def _load_model(directory: Path, description: str, trained: bool = True) -> DemoModel:
  from idinvert_jax import export
  models = export.load_models(directory)
  resolution = int(models.config.model.resolution)
  if trained:
    description = f"{description} ({resolution} px)"
  return DemoModel(directory, trained, description, resolution, models)


def default_num_iterations(resolution: int) -> int:
  """Official 100 steps, except for models above 64 px on a CPU, where 100 steps of 6 images take far longer
  than the demo's few-minute budget (measured: 10 steps of a 64 px model ~200 s on a busy 2-core machine)."""
  import jax
  if jax.default_backend() == "cpu" and resolution > CPU_FULL_ITERATIONS_MAX_RESOLUTION:
    return CPU_NUM_ITERATIONS
  return OFFICIAL_NUM_ITERATIONS


def find_boundaries(checkpoint: Path) -> list[Path]:
  """The checkpoint's boundaries/*.npz (project format) and *.npy (official), sorted by name."""
  folder = checkpoint / "boundaries"
  return sorted(p for p in folder.glob("*") if p.suffix in (".npz", ".npy")) if folder.is_dir() else []


def placeholder_boundaries(model: DemoModel, output: Path, seed: int, num_samples: int | None = None
                           ) -> list[Path]:
  """Trains the two placeholder boundaries (the train-boundary job) on generator samples scored by random pixel
  directions; each lands in OUTPUT/boundaries/<name>/ as `edit.py train-boundary` would write it."""
  from idinvert_jax.editing import cli, jobs
  num_samples = PLACEHOLDER_SAMPLES if num_samples is None else num_samples
  paths = []
  for name in PLACEHOLDER_ATTRIBUTES:
    folder = output / "boundaries" / name
    # Batch 8: the synthesis every edit compiles.
    result = jobs.train_boundary(None, None, name, models=model.models, classifier=globals()[name],
                                 num_samples=num_samples, ratio=0.25, seed=seed, batch_size=8)
    paths.append(result.write(folder, cli.command_line(
        "train-boundary", checkpoint=model.checkpoint, output=folder, num_samples=num_samples,
        classifier=f"idinvert_jax.demo:{name}", attribute=name, ratio=0.25, batch_size=8, seed=seed)))
  return paths


def _relative(path: Path, root: Path) -> str:
  return path.relative_to(root).as_posix()


def inversion_grid(inversion_dir: Path, names: Sequence[str], destination: Path) -> Path:
  """One grid (rows: images; columns: original, encoder, inverted) from invert.py's PNGs."""
  from idinvert_jax import inversion_folder
  columns = [(label, inversion_folder.read_pngs(inversion_dir, names, kind))
             for kind, label in (("ori", "Original"), ("enc", "E(x)"), ("inv", "Inverted"))]
  columns = [(label, images) for label, images in columns if images is not None]
  scale = max(1, -(-OVERVIEW_MIN_SIZE // columns[0][1].shape[1]))  # Small models: enlarge so labels fit.
  rows = [[images[i].repeat(scale, axis=0).repeat(scale, axis=1) for _, images in columns]
          for i in range(len(names))]
  return report.save_grid(destination, rows, row_labels=list(names), col_labels=[label for label, _ in columns])


# ----------------------------------------------------------------------------------------------------------
# The job.


def run_demo(output: str | Path, checkpoint: str | Path | None = None, images: Sequence[str | Path] | None = None,
             num_iterations: int | None = None, skip_diffusion: bool = False, seed: int = 0,
             progress: bool = True) -> DemoSummary:
  """Runs every stage and writes OUTPUT/index.html; returns what was done and how long each stage took.

  Args:
    output: folder for everything (created; reruns overwrite).
    checkpoint: model checkpoint; None = the shipped demo checkpoint, or the random tiny model if none.
    images: image files / folders / .txt lists to invert (default: the shipped examples).
    num_iterations: optimisation steps of the inversion and of the diffusion; None = official 100, or
      CPU_NUM_ITERATIONS for models above 64 px on a CPU (see `default_num_iterations`).
    skip_diffusion: leave out semantic diffusion (the slowest edit).
    seed: seed of the random tiny model and of the placeholder boundaries.
    progress: tqdm bars during the optimisations.
  """
  from idinvert_jax import data, inversion_folder, invert_job
  from idinvert_jax.editing import boundaries as boundaries_lib
  from idinvert_jax.editing import cli, diffuse as diffuse_lib, jobs

  if num_iterations is not None and num_iterations < 1:
    raise DemoError(f"--num_iterations={num_iterations}; pass 1 or more (100 is the official setting).")
  output = Path(output).absolute()
  images = [DEFAULT_IMAGES] if not images else list(images)
  stages = _Stages(total=7 - int(skip_diffusion))

  model = stages.run("model", prepare_model, checkpoint, output, seed)
  log.info("model: %s", model.description)
  if num_iterations is None:
    num_iterations = default_num_iterations(model.resolution)
    if num_iterations != OFFICIAL_NUM_ITERATIONS:
      log.info("%d px model on a CPU: %d optimisation steps instead of the official %d to finish in minutes "
               "(pass --num_iterations %d for the official setting)", model.resolution, num_iterations,
               OFFICIAL_NUM_ITERATIONS, OFFICIAL_NUM_ITERATIONS)

  boundary_paths = find_boundaries(model.checkpoint)[:2]
  placeholder = not boundary_paths
  if placeholder:
    if model.trained:
      _loud(f"{model.checkpoint} has no boundaries/*.npz: training placeholder boundaries from random "
            "directions (make real ones with `python tools/make_demo_assets.py boundaries`)")
    boundary_paths = stages.run("boundaries (placeholder, random directions)", placeholder_boundaries, model,
                                output, seed)
  else:
    stages.run("boundaries", lambda: [boundaries_lib.load_boundary(p) for p in boundary_paths])

  inversion_dir = output / "inversion"
  summary = stages.run("inversion", invert_job.run_inversion, model.checkpoint, images, inversion_dir,
                       overrides=dict(method="indomain", num_iterations=num_iterations), overwrite=True,
                       progress=progress)
  if summary.failed:
    log.warning("could not read %d image(s): %s", len(summary.failed), summary.failed)
  num_images = summary.num_done
  if num_images < 2:
    raise DemoError(f"demo: only {num_images} readable image(s) in {images}; the edits need at least 2 - pass "
                    "more with --images.")
  num_layers, w_dim, resolution = jobs.generator_shape(model.models)
  inverted = inversion_folder.read(inversion_dir, num_layers, w_dim, resolution)
  names = inverted.names

  sections = [_model_section(model)]
  grid = inversion_grid(inversion_dir, names, output / "inversion_overview.png")
  sections.append(_inversion_section(output, grid, summary, num_iterations))

  def interpolate():
    made = []
    for a, b in [(a, b) for a, b in INTERPOLATION_PAIRS if b < num_images]:
      folder = output / f"interpolation_{a}_{b}"
      result = jobs.interpolate(model.models, inverted, None, steps=5, source_ids=[a], target_ids=[b])
      grids = result.write(folder, cli.command_line("interpolate", checkpoint=model.checkpoint,
                                                    src_dir=inversion_dir, src=a, dst=b, steps=5, output=folder))
      made += [(p, f"{names[a]} -> {names[b]}") for p in grids]
    return made
  interpolation_grids = stages.run("interpolation", interpolate)
  sections.append(report.Section(
      "Interpolation", text="Each row walks in a straight line in W+ from one inverted face to another (5 "
      "intermediate codes). Look for: every intermediate image should look like a plausible face (the codes "
      "stay in the generator's domain) and attributes should change gradually, not cross-fade like pixels.",
      images=[(_relative(p, output), f"Interpolation {caption}") for p, caption in interpolation_grids]))

  def manipulate():
    made = []
    for path in boundary_paths:
      folder = output / f"manipulation_{path.stem}"
      result = jobs.manipulate(model.models, inverted, path, start=-3.0, end=3.0, steps=7)
      made.append((path, result.write(folder, cli.command_line(
          "manipulate", checkpoint=model.checkpoint, codes_dir=inversion_dir, boundary=path, start=-3.0, end=3.0,
          steps=7, output=folder))))
    return made
  manipulation_grids = stages.run("manipulation", manipulate)
  sections.append(_manipulation_section(output, manipulation_grids, placeholder))

  def style_mix():
    folder = output / "style_mixing"
    return jobs.style_mix(model.models, inverted, inverted).write(folder, cli.command_line(
        "style-mix", checkpoint=model.checkpoint, style_dir=inversion_dir, content_dir=inversion_dir, output=folder))
  style_grids = stages.run("style mixing", style_mix)
  sections.append(report.Section(
      "Style mixing", text="Top row: the content faces; left column: the style faces (both shown as the "
      "originals). Each cell is the content's inverted code with its last W+ layers (the fine ones) taken "
      "from the style's code. Look for: pose and face shape follow the column "
      "header (content), colours and fine texture follow the row (style).",
      images=[(_relative(p, output), "Style mixing grid") for p in style_grids]))

  if skip_diffusion:
    sections.append(report.Section("Semantic diffusion", text="Skipped (--skip_diffusion)."))
  else:
    def diffuse():
      folder = output / "diffusion"
      targets, contexts = inverted.sources[:1], inverted.sources[1:1 + DIFFUSION_CONTEXTS]
      has_vgg = "perceptual" in model.models.names()
      settings = diffuse_lib.diffusion_settings(model.models.config, num_iterations=num_iterations, num_results=3,
                                                loss_weight_feat=None if has_vgg else 0.0)
      result = jobs.diffuse(model.models, np.stack([data.load_image(p, resolution) for p in targets]),
                            np.stack([data.load_image(p, resolution) for p in contexts]), settings,
                            target_names=[Path(p).stem for p in targets],
                            context_names=[Path(p).stem for p in contexts], target_sources=targets,
                            context_sources=contexts, progress=progress)
      grids = result.write(folder, cli.command_line(
          "diffuse", checkpoint=model.checkpoint, targets=targets, contexts=contexts, num_iterations=num_iterations,
          num_results=3, output=folder, no_perceptual=not has_vgg, progress=progress))
      return grids, has_vgg
    diffusion_grids, has_vgg = stages.run("diffusion", diffuse)
    sections.append(report.Section(
        "Semantic diffusion", text="The centre crop of the first face is pasted into other faces (copy-paste "
        "column) and the result is re-inverted with the masked in-domain objective, which fits the crop and "
        "lets the generator fill in the surroundings. Look for: the result keeps the target's face but blends "
        "it into the context's head, hair and background without a visible seam."
        + ("" if has_vgg else " (Pixel loss only: this checkpoint has no VGG16 perceptual model.)"),
        images=[(_relative(p, output), "Target -> context diffusion") for p in diffusion_grids]))

  sections.append(_timings_section(stages.timings))
  index = report.write_html(output / "index.html", "idinvert_jax demo", sections)
  captions = [(p, boundaries_lib.load_boundary(p).attribute or p.stem) for p in boundary_paths]
  log.info("wrote %s (total %.1f s)", index, sum(s for _, s in stages.timings))
  return DemoSummary(output=output, index=Path(index), model=model, boundaries=captions,
                     timings=stages.timings, inversion_metrics=summary.mean_metrics)


# ----------------------------------------------------------------------------------------------------------
# Report sections.


REPRODUCE = ("Every section below has its own folder with the codes (.npy), the grids and an index.html that "
             "names the exact `python edit.py ...` command that made it; the inversion folder is invert.py's "
             "output layout.")


def _model_section(model: DemoModel) -> report.Section:
  if model.trained:
    return report.Section("Model", text=f"Model used: {model.description}.\n\n{REPRODUCE}")
  return report.Section(
      f"WARNING: {NO_CHECKPOINT_BANNER}",
      text=f"Model used: {model.description}. Nothing was trained: every picture below comes from random "
      "weights, so it shows that the whole pipeline runs, not what in-domain inversion can do. Put a trained "
      f"checkpoint at {DEFAULT_CHECKPOINT} (or pass --checkpoint) to see real results.\n\nThe attribute "
      "boundaries are placeholders too: trained on the spot from generator samples scored by fixed random "
      f"pixel directions (names random_direction_a / random_direction_b).\n\n{REPRODUCE}")


def _inversion_section(output: Path, grid: Path, summary, num_iterations: int) -> report.Section:
  m = summary.mean_metrics
  table = (["quantity", "mean over images"],
           [["MSE ([-1, 1] scale)", m["mse"]], ["PSNR (dB)", m["psnr"]], ["SSIM", m["ssim"]],
            ["perceptual distance", "n/a (no VGG16)" if np.isnan(m["perceptual"]) else m["perceptual"]],
            ["seconds per image", m["seconds"]]])
  loss = ("pixel + VGG16 perceptual loss" if not np.isnan(m["perceptual"])
          else "pixel loss (no VGG16 weights: the perceptual term is off)")
  text = (f"{summary.num_done} images inverted with the in-domain method: start from the encoder's code E(x), "
          f"then {num_iterations} Adam steps on the {loss} with the encoder as a regulariser. "
          "Look for: the inversion column should be closer to the original than the encoder column. Per-image "
          "metrics, snapshots and the codes (inverted_codes.npy) are in inversion/ (see inversion/index.html).")
  flagged = summary.outside_domain
  text = "\n\n".join([text, *summary.notes, summary.domain_note] + ([f"Flagged: {'; '.join(flagged)}."] if flagged
                                                                      else []))
  return report.Section("Inversion", text=text, table=table, warning=bool(flagged),
                        images=[(_relative(grid, output), "Rows: images. Original | encoder | inverted.")])


def _manipulation_section(output: Path, made, placeholder: bool) -> report.Section:
  from idinvert_jax.editing import boundaries as boundaries_lib
  images, notes = [], []
  for path, grids in made:
    boundary = boundaries_lib.load_boundary(path)
    name = boundary.attribute or path.stem
    accuracy = "" if boundary.accuracy is None else f", validation accuracy {boundary.accuracy:.2f}"
    notes.append(f"{name}: {path.name}{accuracy}")
    images += [(_relative(p, output), f"Boundary '{name}': columns move from d=-3 to d=+3") for p in grids]
  text = ("Every inverted face is pushed along a boundary normal in W+ (distances -3..3; 'Inverted' is d=0). "
          "Look for: the attribute changes steadily along the row while identity, pose and background stay. "
          "Boundaries: " + "; ".join(notes) + ".")
  if placeholder:
    text += (" PLACEHOLDER boundaries: fitted to random pixel directions, so the edits have no meaning; they "
             "only show that the pipeline runs.")
  return report.Section("Attribute manipulation", text=text, images=images)


def _timings_section(timings) -> report.Section:
  rows = [[name, f"{seconds:.1f}"] for name, seconds in timings]
  rows.append(["total", f"{sum(s for _, s in timings):.1f}"])
  return report.Section("Timings and machine", text="Wall-clock seconds per stage (compilation included).",
                        table=(["stage", "seconds"], rows + _machine_rows()))


def _machine_rows() -> list[list[str]]:
  m = machine.describe()
  return [["platform", m["platform"]], ["python", m["python"]], ["CPU cores", str(m["cores"])],
          ["jax", f"{m['jax_version']}, backend {m['jax_backend']}"],
          ["devices", f"{m['jax_devices']} x {m['jax_device_kind']}"]]


# ----------------------------------------------------------------------------------------------------------
# Command line.


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m idinvert_jax.demo", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--output", default="demo_out", help="Folder for the report (index.html) and every "
                      "stage's outputs; reruns overwrite it.")
  parser.add_argument("--checkpoint", default=None, help="Model checkpoint folder (train.py/convert output). "
                      f"Default: the shipped {DEFAULT_CHECKPOINT.relative_to(REPO)}, or a random tiny model "
                      "when none is shipped.")
  parser.add_argument("--images", nargs="+", default=None, help="Images to invert and edit: files, folders or "
                      f".txt lists (default: {DEFAULT_IMAGES.relative_to(REPO)}, six held-out synthetic faces).")
  parser.add_argument("--num_iterations", type=int, default=None, help="Optimisation steps of the inversion and "
                      f"of the diffusion. Default: the official {OFFICIAL_NUM_ITERATIONS}, but "
                      f"{CPU_NUM_ITERATIONS} for models above {CPU_FULL_ITERATIONS_MAX_RESOLUTION} px on a CPU (100 "
                      "steps of a 64 px model take far more than the demo's few minutes there).")
  parser.add_argument("--skip_diffusion", action="store_true", help="Leave out semantic diffusion.")
  parser.add_argument("--seed", type=int, default=0, help="Seed of the random tiny model and of the "
                      "placeholder boundaries (only used when no trained checkpoint/boundaries exist).")
  parser.add_argument("--no_progress", action="store_true", help="No tqdm progress bars (log lines only).")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  if not log.handlers:  # Our progress lines only; libraries keep their own (quieter) levels.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s demo %(message)s", datefmt="%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # A library may have configured the root logger: print each line once.
  try:
    result = run_demo(args.output, checkpoint=args.checkpoint, images=args.images,
                      num_iterations=args.num_iterations, skip_diffusion=args.skip_diffusion, seed=args.seed,
                      progress=not args.no_progress)
  except (ValueError, FileNotFoundError) as e:  # User-fixable errors (the project's convention).
    print(f"demo: {e}", file=sys.stderr)
    return 2
  if not result.model.trained:
    _loud(NO_CHECKPOINT_BANNER)
  print(f"open {result.index}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
