"""The editing jobs behind `edit.py`, as library functions: Models and arrays in, results out, files on request.

Each job takes an `export.Models` bundle (the generator renders; diffusion also inverts) and arrays (codes
[N, L, D], images [N, R, R, 3] in [-1, 1]), and returns a result holding the edited codes and the labelled rows of
its picture grid; `result.write(output, note)` writes the job's folder: the codes (.npy), PNG grids of at most
ROWS_PER_GRID rows, and an index.html whose text ends with `note` (edit.py puts the command line there). edit.py
only parses flags and calls these; the demo and the app call them directly.

  interpolate(models, source, target, steps)               every source x target pair, linear in W+
  manipulate(models, images, boundary_file, ...)           codes moved along a boundary normal
  style_mix(models, style, content, mix_layer_start)       fine layers of the style codes into the content codes
  diffuse(models, targets, contexts, settings, ...)        a target's crop re-inverted inside each context
  train_boundary(codes, scores, ..., models)               an InterFaceGAN boundary from scored codes
  classifier_scores(models, codes, classifier)             scores of the images G makes from codes

`source`, `target`, `images`, `style`, `content` are `inversion_folder.InvertedImages` (names, codes and, when
known, the original images): `inversion_folder.read` makes them from an invert.py folder, and a caller holding
arrays builds one directly.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from idinvert_jax import files
from idinvert_jax import report
from idinvert_jax.inversion_folder import InvertedImages
from idinvert_jax.models import generator as generator_lib

# Rows per PNG grid: a long job is split over several pages of one HTML file.
ROWS_PER_GRID = 16


class EditError(ValueError):
  """A user-fixable problem with an editing job's inputs."""


def generator_shape(models) -> tuple[int, int, int]:
  """(num_layers L, w_dim D, resolution) of the bundle's generator."""
  G = models.generator
  return int(G.num_layers), int(G.w_dim), int(G.resolution)


def render(models, codes, batch_size: int = 8) -> np.ndarray:
  """codes [..., L, D] -> images [..., H, W, 3] in [-1, 1] with the bundle's generator (`generator.render`)."""
  return generator_lib.render(models.generator, models.generator_vars, codes, batch_size)


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


@dataclasses.dataclass
class EditResult:
  """What an editing job made.

  codes: the edited codes (shape per job, see its docstring), saved as `codes_file`.
  rows / row_labels / col_labels / caption: the picture grid (cells [H, W, 3] in [-1, 1] or uint8).
  title, section, text: the page; lists: extra text files {file name: lines}.
  """
  title: str
  section: str
  stem: str
  codes_file: str
  codes: np.ndarray
  rows: list
  row_labels: list
  col_labels: list
  caption: str
  text: str
  lists: dict = dataclasses.field(default_factory=dict)

  def write(self, output: str | Path, note: str = "") -> list[Path]:
    """Writes the codes, the lists, the grids and index.html into `output`; returns the grid files."""
    output = Path(output)
    files.atomic_save_npy(output / self.codes_file, self.codes)
    for name, lines in self.lists.items():
      files.atomic_write_text(output / name, "\n".join(lines) + "\n")
    grids = write_grids(output, self.stem, self.rows, self.row_labels, self.col_labels, self.caption)
    text = self.text + (f"\n\n{note}" if note else "")
    report.write_html(output / "index.html", self.title, [report.Section(self.section, text=text, images=grids)])
    return [output / name for name, _ in grids]


# ---------------------------------------------------------------------------------------------------------------
# Jobs.


def interpolate(models, source: InvertedImages, target: InvertedImages | None = None, steps: int = 5,
                source_ids: Sequence[int] | None = None, target_ids: Sequence[int] | None = None,
                batch_size: int = 8) -> EditResult:
  """Every source x target pair: `steps` intermediate codes plus both inversions, linear in W+.

  target: None interpolates within `source`. *_ids: which images (default all). Codes: [S, T, steps + 2, L, D].
  """
  from idinvert_jax.editing import interpolate as interpolate_lib

  _, _, resolution = generator_shape(models)
  if steps < 0:
    raise EditError(f"--steps={steps}; pass 0 or more intermediate steps.")
  target = source if target is None else target
  src_ids = list(range(len(source.names))) if source_ids is None else list(source_ids)
  dst_ids = list(range(len(target.names))) if target_ids is None else list(target_ids)
  codes = np.asarray(interpolate_lib.interpolate_all_pairs(source.codes[src_ids], target.codes[dst_ids], steps + 2))
  images = render(models, codes, batch_size)                    # [S, T, steps + 2, H, W, 3]
  blank = _blank(resolution)
  rows, labels = [], []
  for i, s in enumerate(src_ids):
    for j, t in enumerate(dst_ids):
      src_image = blank if source.originals is None else source.originals[s]
      dst_image = blank if target.originals is None else target.originals[t]
      rows.append([src_image] + list(images[i, j]) + [dst_image])
      labels.append(f"{source.names[s]} -> {target.names[t]}")
  cols = ["Source", "Source inv."] + [f"Step {k:02d}" for k in range(1, steps + 1)] + ["Target inv.", "Target"]
  text = (f"Linear interpolation in W+ between {len(src_ids)} source and {len(dst_ids)} target codes, "
          f"{steps} intermediate steps. Codes: interpolated_codes.npy [S, T, steps + 2, L, D].")
  return EditResult("Interpolation", "Interpolation", "interpolation", "interpolated_codes.npy", codes, rows, labels,
                    cols, "Rows: source -> target pairs.", text)


def load_direction(path: str | Path, num_layers: int):
  """(Boundary, its [num_layers, D] direction) from a boundary file."""
  from idinvert_jax.editing import boundaries
  boundary = boundaries.load_boundary(path)
  try:
    return boundary, boundary.layerwise(num_layers)
  except ValueError as e:
    raise EditError(f"{path}: {e}") from None


def manipulate(models, images: InvertedImages, boundary_file: str | Path, start: float = -3.0, end: float = 3.0,
               steps: int = 7, layers: Sequence[int] | None = None, conditions: Sequence[str | Path] = (),
               truncation_strength: bool = False, batch_size: int = 8) -> EditResult:
  """Moves every code along a boundary normal on the boundary's layers by linspace(start, end, steps).

  boundary_file: official pickled .npy, plain [1, D] / [1, L, D] .npy, or a project .npz.
  layers: W+ layers to edit (default: the boundary's own, else all). conditions: boundary files whose attributes
  must not change (conditional manipulation). truncation_strength: scale the steps on truncated layers by psi.
  Codes: [N, steps, L, D].
  """
  from idinvert_jax.editing import manipulate as manipulate_lib

  num_layers, w_dim, resolution = generator_shape(models)
  boundary, direction = load_direction(boundary_file, num_layers)
  if direction.shape[1] != w_dim:
    raise EditError(f"{boundary_file}: boundary of width {direction.shape[1]}; this generator has w_dim {w_dim}.")
  if layers is None:
    layers = list(boundary.layers) if boundary.layers else None
  if conditions:
    direction = manipulate_lib.conditional_direction(direction, [load_direction(path, num_layers)[1]
                                                                 for path in conditions], layers)
  strength = None
  if truncation_strength:
    G = models.generator
    psi = G.truncation_psi if G.truncation_psi is not None else 1.0
    strength = manipulate_lib.truncation_strength(num_layers, psi, G.truncation_layers or 0)
  distances = manipulate_lib.edit_distances(start, end, steps)
  edited = np.asarray(manipulate_lib.manipulate(images.codes, direction, distances,
                                                layers=None if layers is None else tuple(layers),
                                                strength=strength))
  pictures = render(models, np.concatenate([images.codes[:, None], edited], axis=1), batch_size)
  rows = [[_blank(resolution) if images.originals is None else images.originals[n]] + list(pictures[n])
          for n in range(len(images.names))]
  cols = ["Original", "Inverted"] + [f"d={d:+.2f}" for d in distances]
  name = Path(boundary_file).stem
  text = (f"Boundary {boundary_file} (attribute '{boundary.attribute}'), layers "
          f"{'all' if layers is None else layers}, conditions {list(conditions) or 'none'}, distances "
          f"{start}..{end} in {steps} steps. Codes: manipulated_codes.npy [N, steps, L, D].")
  return EditResult(f"Manipulation: {name}", "Manipulation", f"manipulation_{name}", "manipulated_codes.npy",
                    edited, rows, list(images.names), cols, f"Boundary {name}; rows: images.", text)


def style_mix(models, style: InvertedImages, content: InvertedImages, mix_layer_start: int | None = None,
              batch_size: int = 8) -> EditResult:
  """Every style x content: the content code with the style code's layers from `mix_layer_start` on.

  mix_layer_start: default the official 10 of 14, scaled to L. Codes: [styles, contents, L, D].
  """
  from idinvert_jax.editing import style_mix as style_mix_lib

  num_layers, _, resolution = generator_shape(models)
  start = style_mix_lib.default_mix_layer_start(num_layers) if mix_layer_start is None else mix_layer_start
  if not 0 <= start < num_layers:
    raise EditError(f"--mix_layer_start={start} is outside 0..{num_layers - 1} for this generator.")
  codes = np.asarray(style_mix_lib.mix_styles(style.codes, content.codes, tuple(range(start, num_layers))))
  images = render(models, codes, batch_size)                     # [S, C, H, W, 3]
  content_images = render(models, content.codes, batch_size) if content.originals is None else content.originals
  style_images = render(models, style.codes, batch_size) if style.originals is None else style.originals
  rows = [[_blank(resolution)] + list(content_images)]
  rows += [[style_images[s]] + list(images[s]) for s in range(len(style.names))]
  text = (f"Layers {start}..{num_layers - 1} of {num_layers} come from the style code. "
          f"Codes: mixed_codes.npy [styles, contents, L, D].")
  return EditResult("Style mixing", "Style mixing", "style_mixing", "mixed_codes.npy", codes, rows,
                    ["content:"] + [f"style {n}" for n in style.names], ["Style"] + list(content.names),
                    "First row: content images; first column: style images; cell: mixed result.", text)


def diffuse(models, targets: np.ndarray, contexts: np.ndarray, settings, crop_size: int | None = None,
            center_x: int | None = None, center_y: int | None = None, target_names: Sequence[str] | None = None,
            context_names: Sequence[str] | None = None, target_sources: Sequence[str] | None = None,
            context_sources: Sequence[str] | None = None, progress: bool = False) -> EditResult:
  """Pastes each target's crop into every context and re-inverts with the masked objective.

  Args:
    models: an `export.Models` bundle with an encoder (or an `inversion.Inverter` of one: reused).
    targets, contexts: images [T, R, R, 3] and [C, R, R, 3] in [-1, 1] at the generator's resolution.
    settings: `InvertSettings` of the diffusion (`diffuse.diffusion_settings`: no encoder term).
    crop_size, center_x, center_y: the pasted square (default: the official 110 / 125 / 145 at 256 px, scaled).
    *_names: row labels (default target_i / context_j); *_sources: written to target_list.txt / context_list.txt.
  Codes: [T, C, L, D].
  """
  from idinvert_jax import inversion
  from idinvert_jax.editing import diffuse as diffuse_lib

  settings = inversion.as_settings(settings)
  inverter = inversion.as_inverter(models)
  resolution = inverter.fns.resolution
  crop, cx, cy = diffuse_lib.default_crop(resolution)
  crop = crop if crop_size is None else crop_size
  cx = cx if center_x is None else center_x
  cy = cy if center_y is None else center_y
  diffuse_lib.crop_mask(resolution, crop, cx, cy)  # Fails early with a clear message.
  target_names = list(target_names or [f"target_{i}" for i in range(len(targets))])
  context_names = list(context_names or [f"context_{i}" for i in range(len(contexts))])
  contexts = np.asarray(contexts, np.float32)
  all_codes, rows, labels, cols = [], [], [], None
  for target, target_name in zip(targets, target_names):
    result = diffuse_lib.diffuse(target, contexts, inverter, settings, crop, cx, cy, progress=progress)
    diverged = [name for name, codes, image in zip(context_names, result.codes, result.results)
                if not (np.isfinite(codes).all() and np.isfinite(image).all())]
    if diverged:  # Raised before anything is written: no non-finite codes on disk.
      raise ValueError(f"diffusion of {target_name} into {', '.join(diverged)} diverged (non-finite codes at "
                       f"learning rate {settings.learning_rate:g}); nothing was written; lower --learning_rate")
    all_codes.append(result.codes)
    # The last snapshot is the result itself; it is shown once, as the last column.
    snapshots = [(step, images) for step, images in result.snapshots if step < settings.num_iterations]
    cols = (["Target", "Context", "Copy-paste", "Encoder"] + [f"Step {step}" for step, _ in snapshots]
            + [f"Result ({settings.num_iterations})"])
    for c, context_name in enumerate(context_names):
      rows.append([target, contexts[c], result.stitched[c], result.encoder_outputs[c]]
                  + [images[c] for _, images in snapshots] + [result.results[c]])
      labels.append(f"{target_name} -> {context_name}")
  lists = {}
  if target_sources is not None:
    lists["target_list.txt"] = list(target_sources)
  if context_sources is not None:
    lists["context_list.txt"] = list(context_sources)
  text = (f"Crop {crop} px centred at x={cx}, y={cy}; {settings.num_iterations} steps, lr "
          f"{settings.learning_rate}, perceptual weight {settings.loss_weight_feat}, no encoder term. "
          f"Codes: diffused_codes.npy [targets, contexts, L, D].")
  return EditResult("Semantic diffusion", "Semantic diffusion", "diffusion", "diffused_codes.npy",
                    np.stack(all_codes), rows, labels, cols, "Rows: target -> context pairs.", text, lists)


def classifier_scores(models, codes: np.ndarray, classifier: Callable[[np.ndarray], np.ndarray],
                      batch_size: int = 8) -> np.ndarray:
  """[N] float32 scores: `classifier(images [B, H, W, 3] in [-1, 1]) -> [B]` on G(codes), `batch_size` at a time."""
  return np.concatenate([np.asarray(classifier(render(models, codes[lo:lo + batch_size], batch_size)), np.float32)
                         .reshape(-1) for lo in range(0, codes.shape[0], batch_size)])


@dataclasses.dataclass
class BoundaryResult:
  """A trained boundary, the codes and scores it came from, and (with a generator) a preview of its edits.

  sampled: whether the codes were sampled here (then saved as sampled_codes.npy); scored: whether the scores come
  from a classifier (then saved as scores.npy). preview_codes [4, 7, L, D] / preview_images: the first codes moved
  from d=-3 to d=+3 (None without a generator of the codes' shape).
  """
  boundary: object
  codes: np.ndarray
  scores: np.ndarray
  source: str
  method: str
  sampled: bool = False
  scored: bool = False
  preview_codes: np.ndarray | None = None
  preview_images: np.ndarray | None = None
  preview_distances: np.ndarray | None = None

  def write(self, output: str | Path, note: str = "") -> Path:
    """Writes <attribute>.npz, the sampled codes / scores, the preview and index.html; returns the .npz path."""
    from idinvert_jax.editing import boundaries
    output = Path(output)
    attribute = self.boundary.attribute
    if self.sampled:
      files.atomic_save_npy(output / "sampled_codes.npy", self.codes)
    if self.scored:
      files.atomic_save_npy(output / "scores.npy", self.scores)
    boundary_path = boundaries.save_boundary(output / f"{attribute}.npz", self.boundary)
    meta = self.boundary.meta
    table = (["quantity", "value"],
             [["validation accuracy", self.boundary.accuracy],
              ["remaining-samples accuracy", meta["remaining_accuracy"]],
              ["train / validation samples", f"{meta['num_train']} / {meta['num_val']}"],
              ["layers", ",".join(map(str, self.boundary.layers))], ["method", self.method]])
    text = f"Saved {boundary_path.name}. Codes: {self.source}." + (f"\n\n{note}" if note else "")
    sections = [report.Section("Boundary", text=text, table=table)]
    if self.preview_codes is not None:
      files.atomic_save_npy(output / "preview_codes.npy", self.preview_codes)
      grids = write_grids(output, f"preview_{attribute}", [list(row) for row in self.preview_images],
                          [f"code {i}" for i in range(len(self.preview_codes))],
                          [f"d={d:+.1f}" for d in self.preview_distances],
                          "Manipulating the first codes along the new boundary.")
      sections.append(report.Section("Preview", images=grids))
    report.write_html(output / "index.html", f"Boundary: {attribute}", sections)
    return boundary_path


def train_boundary(codes: np.ndarray | None, scores: np.ndarray | None, attribute: str, *, models=None,
                   classifier: Callable[[np.ndarray], np.ndarray] | None = None, num_samples: int = 10000,
                   truncation_psi: float | None = None, truncation_layers: int | None = None,
                   layers: Sequence[int] | None = None, per_layer: bool = False, ratio: float = 0.02,
                   split: float = 0.7, method: str = "svm", c: float = 1.0, num_steps: int = 200, seed: int = 0,
                   source: str = "", batch_size: int = 8) -> BoundaryResult:
  """Fits an InterFaceGAN boundary on W+ codes scored by labels or a classifier.

  Args:
    codes: [N, L, D] codes, or None to sample `num_samples` from the models' generator (seed `seed`, truncation
      as given or the generator's).
    scores: [N] scores in code order, or None to score G(codes) with `classifier`.
    attribute: the attribute's name (and the .npz's).
    models: the generator that samples, renders for the classifier and renders the preview (optional when codes
      and scores are given).
    layers, per_layer, ratio, split, method, c, num_steps, seed: see `boundaries.train_boundary`.
    source: where the codes come from (recorded in the boundary's meta and on the page).
  """
  from idinvert_jax.editing import boundaries
  from idinvert_jax.editing import manipulate as manipulate_lib

  sampled = codes is None
  if sampled:
    if models is None:
      raise EditError("train-boundary: give codes (--codes_dir / --codes) or a --checkpoint to sample "
                      "--num_samples codes from.")
    codes = generator_lib.sample_codes(models.generator, models.generator_vars, num_samples, seed, truncation_psi,
                                       truncation_layers, batch_size)
    source = f"sampled: {num_samples} codes, seed {seed}"
  if codes.ndim != 3:
    raise EditError(f"train-boundary: codes of shape {codes.shape}; expected [N, L, D] W+ codes.")
  scored = scores is None
  if scored:
    if models is None or classifier is None:
      raise EditError("train-boundary: --classifier scores images, so pass --checkpoint too.")
    scores = classifier_scores(models, codes, classifier, batch_size)
  if scores.shape[0] != codes.shape[0]:
    raise EditError(f"train-boundary: {scores.shape[0]} scores for {codes.shape[0]} codes; give one per code "
                    "(in code order).")
  boundary = boundaries.train_boundary(codes, scores, layers=layers, per_layer=per_layer, ratio=ratio, split=split,
                                       method=method, c=c, num_steps=num_steps, seed=seed, attribute=attribute)
  boundary.meta["codes"] = source
  result = BoundaryResult(boundary, codes, scores, source, method, sampled=sampled, scored=scored)
  if models is not None and codes.shape[1:] == generator_shape(models)[:2]:
    result.preview_distances = distances = manipulate_lib.edit_distances(-3.0, 3.0, 7)
    result.preview_codes = np.asarray(manipulate_lib.manipulate(codes[:min(4, codes.shape[0])], boundary.direction,
                                                                distances, layers=tuple(boundary.layers)))
    result.preview_images = render(models, result.preview_codes, batch_size)
  return result
