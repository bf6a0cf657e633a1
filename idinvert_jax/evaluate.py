"""The comparison command: encoder-only vs optimisation vs in-domain inversion on the same held-out images.

  python -m idinvert_jax.evaluate --checkpoint CKPT --images photos/ --output REPORT [--config FILE] [--quick]
  python -m idinvert_jax.evaluate --checkpoint CKPT --images synthetic:64 --output REPORT --train_boundary smile

Runs (each through `idinvert_jax.inversion.invert`, flags pick them):
  encoder            E(x) only.
  optimize_<k>       Image2StyleGAN-style optimisation, pixel + perceptual terms, k steps (default 100, 1000).
  indomain_lam<l>    the paper's in-domain inversion, 100 steps, encoder regulariser weight lambda_enc = l
                     (default 0, 0.5, 2, 5: the paper's ablation).
Per run, on the same images: MSE ([-1, 1] scale), PSNR, SSIM, perceptual distance (VGG16 conv4_3; "n/a (no
VGG16 weights)" without weights), SWD of the reconstructions vs the images, SWD of interpolations (G of the
mid-point between the codes of images i and i+1 vs the images: a semantic-quality proxy, as the paper's
interpolation study), manipulation success (when a boundary is given with --boundary or trained on synthetic
labels with --train_boundary, and an attribute predictor exists: synthetic faces only) and seconds per image.

REPORT/ gets results.md, results.csv, results.json, ablation.png (reconstruction error vs editing success, or vs
interpolation SWD when there is no editing measure, over lambda_enc), reconstructions.png, interpolations.png
and index.html. `--images synthetic:N` renders N held-out synthetic faces (indices from 1,000,000 of the
config's synthetic seed, never used in training) with their labels.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
from pathlib import Path
from typing import Any, Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np

from idinvert_jax import files, report
from idinvert_jax import machine as machine_lib

SYNTHETIC_PREFIX = "synthetic"
SYNTHETIC_HELDOUT_START = 1_000_000
NO_VGG = "n/a (no VGG16 weights)"
NOT_AVAILABLE = "n/a"
COLUMNS = ("run", "method", "steps", "lambda_enc", "mse", "psnr", "ssim", "perceptual", "swd_rec", "swd_interp",
           "edit_success", "edit_other_change", "seconds_per_image")
COLUMN_DOCS = {
    "mse": "mean over images of the per-image MSE on the [-1, 1] scale",
    "psnr": "mean per-image PSNR in dB ([0, 255] scale, data range 255; an exact copy counts as 1000 dB)",
    "ssim": "mean per-image SSIM (Gaussian 11 / 1.5; n/a below 11 px)",
    "perceptual": "mean squared VGG16 conv4_3 feature difference",
    "swd_rec": "SWD x 1e3 (average over pyramid levels) of reconstructions vs images",
    "swd_interp": "SWD x 1e3 of G(mid-point of codes i, i+1) vs images",
    "edit_success": "fraction of images whose predicted attribute moved the intended way after the edit",
    "edit_other_change": "mean absolute change of the other predicted attributes after the edit",
    "seconds_per_image": "wall time of the inversion call / images (compilation included)",
}


class EvaluateError(ValueError):
  """A user-fixable problem with the comparison's inputs or flags."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One inversion setting of the comparison."""
  name: str
  method: str
  steps: int
  lambda_enc: float | None = None

  def overrides(self) -> dict[str, Any]:
    out = {"method": self.method, "num_iterations": self.steps}
    if self.lambda_enc is not None:
      out["loss_weight_enc"] = self.lambda_enc
    return out


def comparison_runs(methods: Sequence[str] = ("encoder", "optimize", "indomain"),
                    optimize_steps: Sequence[int] = (100, 1000), indomain_steps: int = 100,
                    lambdas: Sequence[float] = (0.0, 0.5, 2.0, 5.0)) -> list[RunSpec]:
  """The runs of the comparison, in table order."""
  unknown = sorted(set(methods) - {"encoder", "optimize", "indomain"})
  if unknown:
    raise EvaluateError(f"evaluate: unknown methods {unknown}; use some of encoder, optimize, indomain.")
  runs = []
  if "encoder" in methods:
    runs.append(RunSpec("encoder", "encoder", 0))
  if "optimize" in methods:
    runs.extend(RunSpec(f"optimize_{k}", "optimize", int(k)) for k in optimize_steps)
  if "indomain" in methods:
    runs.extend(RunSpec(f"indomain_lam{l:g}", "indomain", int(indomain_steps), float(l)) for l in lambdas)
  if not runs:
    raise EvaluateError("evaluate: no runs selected; pass --methods with at least one method.")
  return runs


# ----------------------------------------------------------------------------------------------------------
# Inputs.


def load_eval_images(specs: Sequence[str], resolution: int, synthetic_seed: int = 0
                     ) -> tuple[np.ndarray, list[str], dict[str, np.ndarray] | None]:
  """Images [N, R, R, 3] in [-1, 1], their names, and labels (synthetic faces only, else None)."""
  if len(specs) == 1 and str(specs[0]).split(":")[0] == SYNTHETIC_PREFIX:
    from idinvert_jax.data import synthetic_faces
    parts = str(specs[0]).split(":")
    try:
      num = int(parts[1]) if len(parts) > 1 else 16
    except ValueError:
      raise EvaluateError(f"evaluate: --images {specs[0]!r}; use synthetic:N, e.g. synthetic:64.") from None
    images, labels = synthetic_faces.render(num, resolution, synthetic_seed, start=SYNTHETIC_HELDOUT_START)
    names = [f"synthetic_{SYNTHETIC_HELDOUT_START + i}" for i in range(num)]
    return images.astype(np.float32) / 127.5 - 1.0, names, labels
  from idinvert_jax import data
  paths = data.expand_inputs(list(specs))
  if not paths:
    raise EvaluateError(f"evaluate: no images found in {list(specs)}; pass image files, folders or lists.")
  images = np.stack([data.load_image(p, resolution) for p in paths]).astype(np.float32)
  return images, [Path(p).stem for p in paths], None


# ----------------------------------------------------------------------------------------------------------
# Model helpers.


def _synthesize_fn(models):
  """codes [N, L, D] -> images with the generator's fixed noise maps, up to 16 codes per compiled call."""
  from idinvert_jax.models import generator as generator_lib
  return lambda codes: generator_lib.render(models.generator, models.generator_vars, codes,
                                            batch_size=min(16, len(codes)))


def interpolation_midpoints(codes: np.ndarray) -> np.ndarray:
  """Mid-points between the codes of images i and i+1 (cyclic): [N, L, D], one per image."""
  codes = np.asarray(codes, np.float32)
  return 0.5 * (codes + np.roll(codes, -1, axis=0))


@dataclasses.dataclass
class EditSetup:
  """What manipulation success needs: a boundary, the attribute it edits, and an attribute predictor."""
  attribute: str
  direction: np.ndarray             # [L, D]
  layers: tuple[int, ...] | None
  distance: float
  predictor: Any                    # (module, variables)
  source: str


def _train_predictor(resolution: int, attribute_names, quick: bool, seed: int):
  from idinvert_jax.metrics import attributes
  num, steps = (128, 40) if quick else (2000, 1500)
  module, variables, rep = attributes.train_attribute_classifier(resolution, num, steps, seed,
                                                                 attributes=attribute_names)
  return (module, variables), rep


def _sample_codes(models, num: int, seed: int) -> np.ndarray:
  """`num` untruncated generator codes (the sampler of edit.py train-boundary, with psi 1)."""
  from idinvert_jax.models import generator as generator_lib
  return generator_lib.sample_codes(models.generator, models.generator_vars, num, seed, truncation_psi=1.0,
                                    truncation_layers=0, batch_size=256)


def prepare_editing(models, boundary_path: str | None, train_attribute: str | None, attribute: str | None,
                    distance: float, quick: bool, seed: int, synthesize, predictor=None
                    ) -> tuple[EditSetup | None, dict, str]:
  """Loads or trains the boundary and the attribute predictor; (setup or None, info, reason if None).

  `predictor`: an (AttributeNet, variables) pair to use instead of training one.
  """
  from idinvert_jax.data import synthetic_faces
  from idinvert_jax.editing import boundaries
  from idinvert_jax.metrics import attributes
  if not boundary_path and not train_attribute:
    return None, {}, "n/a (no boundary: pass --boundary or --train_boundary)"
  if boundary_path:
    boundary = boundaries.load_boundary(boundary_path)
    name = attribute or boundary.attribute or Path(boundary_path).stem
  else:
    name = train_attribute
  if name not in synthetic_faces.ATTRIBUTES:
    return None, {}, f"n/a (no predictor for attribute {name!r}: only synthetic-face attributes)"
  resolution = int(models.config.model.resolution)
  if not synthetic_faces.MIN_RESOLUTION <= resolution <= synthetic_faces.MAX_RESOLUTION:
    return None, {}, f"n/a (attribute predictor needs {synthetic_faces.MIN_RESOLUTION}px or more)"
  if predictor is None:
    predictor, predictor_report = _train_predictor(resolution, tuple(synthetic_faces.ATTRIBUTES), quick, seed)
  else:
    predictor_report = "given by the caller"
  if name not in predictor[0].attributes:
    return None, {}, f"n/a (the attribute predictor does not predict {name!r})"
  info = {"predictor": predictor_report}
  if not boundary_path:
    num = 64 if quick else 2000
    codes = _sample_codes(models, num, seed)
    scores = attributes.predict_attributes(*predictor, synthesize(codes))[name]
    ratio = 0.5 if quick else 0.2
    boundary = boundaries.train_boundary(codes, scores, ratio=ratio, num_steps=50 if quick else 200, seed=seed,
                                         attribute=name)
    info["boundary"] = {"trained_on": f"{num} generator samples labelled by the predictor",
                        "val_accuracy": boundary.accuracy}
  num_layers = int(models.generator.num_layers)
  setup = EditSetup(name, boundary.layerwise(num_layers), boundary.layers, float(distance), predictor,
                    boundary_path or "trained on synthetic labels")
  return setup, info, ""


def edit_success(setup: EditSetup, codes: np.ndarray, synthesize) -> dict[str, Any]:
  """Moves codes by `distance` along the boundary and measures the predicted attribute change."""
  from idinvert_jax.editing.manipulate import manipulate
  from idinvert_jax.metrics import attributes
  edited = np.asarray(manipulate(jnp.asarray(codes), jnp.asarray(setup.direction),
                                 jnp.asarray([setup.distance]), setup.layers))[:, 0]
  before = attributes.predict_attributes(*setup.predictor, synthesize(codes))
  after = attributes.predict_attributes(*setup.predictor, synthesize(edited))
  return attributes.editing_success(before, after, setup.attribute, setup.distance)


# ----------------------------------------------------------------------------------------------------------
# The comparison.


def _mean(values) -> float:
  return float(np.mean(np.asarray(values, np.float64)))


def evaluate_run(spec: RunSpec, images: np.ndarray, models, inverter, synthesize, edit: EditSetup | None,
                 edit_reason: str, seed: int, progress: bool) -> tuple[dict, Any]:
  """Inverts the images with one run's settings and measures everything; (table row, InversionResult).

  inverter: an `inversion.Inverter` of `models`, shared by the runs (one compilation for the lambda sweep).
  """
  from idinvert_jax import inversion
  from idinvert_jax.metrics import reconstruction, swd
  settings = inversion.InvertSettings.from_config(models.config, **spec.overrides())
  result = inversion.invert(images, inverter, settings, progress=progress)
  recs = result.reconstructions
  row: dict[str, Any] = {"run": spec.name, "method": spec.method, "steps": spec.steps,
                         "lambda_enc": NOT_AVAILABLE if spec.lambda_enc is None else spec.lambda_enc}
  row["mse"] = _mean(reconstruction.mse(images, recs))
  row["psnr"] = _mean(np.minimum(np.asarray(reconstruction.psnr(images, recs)), 1e3))  # inf only if exact.
  row["ssim"] = _mean(reconstruction.ssim(images, recs)) if images.shape[1] >= 11 else NOT_AVAILABLE
  perceptual = reconstruction.perceptual_distance(models.perceptual, models.perceptual_vars, images, recs)
  row["perceptual"] = NO_VGG if perceptual is None else _mean(perceptual)
  if images.shape[1] >= swd.MIN_RESOLUTION:
    row["swd_rec"] = swd.sliced_wasserstein_distance(recs, images, seed=seed).average
    if images.shape[0] >= 2:
      mids = synthesize(interpolation_midpoints(result.codes))
      row["swd_interp"] = swd.sliced_wasserstein_distance(mids, images, seed=seed).average
    else:
      row["swd_interp"] = "n/a (needs >= 2 images)"
  else:
    row["swd_rec"] = row["swd_interp"] = f"n/a (below {swd.MIN_RESOLUTION}px)"
  if edit is not None:
    success = edit_success(edit, result.codes, synthesize)
    row["edit_success"] = success["success_rate"]
    row["edit_other_change"] = success["other_mean_abs_change_avg"]
  else:
    row["edit_success"] = row["edit_other_change"] = edit_reason
  row["seconds_per_image"] = result.seconds_per_image
  return row, result


def _format(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}" if math.isfinite(value) else str(value)
  return str(value)


def results_markdown(rows: Sequence[dict], machine: dict, notes: Sequence[str]) -> str:
  lines = ["# Inversion comparison", "",
           "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  lines += ["| " + " | ".join(_format(row[c]) for c in COLUMNS) + " |" for row in rows]
  lines += ["", "Columns:"] + [f"- `{k}`: {v}" for k, v in COLUMN_DOCS.items()]
  lines += ["", "Machine: " + ", ".join(f"{k}={v}" for k, v in machine.items())]
  lines += [""] + [f"- {n}" for n in notes] + [""]
  return "\n".join(lines)


def results_csv(rows: Sequence[dict]) -> str:
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
  writer.writeheader()
  for row in rows:
    writer.writerow({c: _format(row[c]) for c in COLUMNS})
  return buf.getvalue()


def plot_ablation(path: Path, rows: Sequence[dict]) -> Path | None:
  """Reconstruction MSE vs editing success (or interpolation SWD) over lambda_enc, as the paper's ablation."""
  points = [r for r in rows if r["method"] == "indomain" and isinstance(r["mse"], float)]
  if not points:
    return None
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  use_edit = all(isinstance(r["edit_success"], float) for r in points)
  key, label = ("edit_success", "editing success (fraction)") if use_edit else (
      "swd_interp", "interpolation SWD x1e3 (lower = more in-domain)")
  if not all(isinstance(r[key], float) for r in points):
    return None
  fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
  xs, ys = [r["mse"] for r in points], [r[key] for r in points]
  ax.plot(xs, ys, "o-")
  for r, x, y in zip(points, xs, ys):
    ax.annotate(f"lambda={r['lambda_enc']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
  ax.set_xlabel("reconstruction MSE ([-1, 1] scale)")
  ax.set_ylabel(label)
  ax.set_title("in-domain inversion: lambda_enc ablation")
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  plt.close(fig)
  return files.atomic_write_bytes(path, buf.getvalue())


def run_comparison(checkpoint: str, images: Sequence[str], output: str, config: ml_collections.ConfigDict | None
                   = None, quick: bool = False, methods: Sequence[str] = ("encoder", "optimize", "indomain"),
                   optimize_steps: Sequence[int] | None = None, indomain_steps: int | None = None,
                   lambdas: Sequence[float] = (0.0, 0.5, 2.0, 5.0), boundary: str | None = None,
                   train_boundary: str | None = None, attribute: str | None = None, edit_distance: float = 3.0,
                   num_images: int | None = None, seed: int = 0, progress: bool = True,
                   grid_images: int = 8, predictor=None) -> list[dict]:
  """Runs the comparison and writes the report folder; returns the table rows (see module docstring).

  quick: 5/10 optimisation steps and 5 in-domain steps (instead of 100/1000 and 100) and a small attribute
  predictor: a smoke test, the numbers mean nothing. predictor: optional (AttributeNet, variables) to use
  instead of training one (synthetic-face attributes only).
  """
  from idinvert_jax import inversion, invert_job
  optimize_steps = tuple(optimize_steps or ((5, 10) if quick else (100, 1000)))
  indomain_steps = int(indomain_steps or (5 if quick else 100))
  runs = comparison_runs(methods, optimize_steps, indomain_steps, lambdas)
  output = Path(output)
  models = invert_job.load_job_models(checkpoint, config)
  resolution = int(models.config.model.resolution)
  synthetic_seed = int(models.config.get("data", {}).get("synthetic_seed", 0))
  x, names, _ = load_eval_images(images, resolution, synthetic_seed)
  if num_images:
    x, names = x[:num_images], names[:num_images]
  synthesize = _synthesize_fn(models)
  edit, edit_info, edit_reason = prepare_editing(models, boundary, train_boundary, attribute, edit_distance, quick,
                                                 seed, synthesize, predictor)
  machine = machine_lib.describe()
  inverter = inversion.Inverter(models)
  rows, results = [], []
  for spec in runs:
    row, result = evaluate_run(spec, x, models, inverter, synthesize, edit, edit_reason, seed, progress)
    rows.append(row)
    results.append(result)

  notes = [f"{len(x)} images ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}), "
           f"{resolution}px, checkpoint {checkpoint}" + (", --quick (numbers mean nothing)" if quick else "")]
  if edit is not None:
    notes.append(f"editing: attribute {edit.attribute!r}, distance {edit.distance:+g} along the boundary "
                 f"({edit.source})")
  files.atomic_write_text(output / "results.md", results_markdown(rows, machine, notes))
  files.atomic_write_text(output / "results.csv", results_csv(rows))
  files.atomic_write_json(output / "results.json", {"rows": rows, "machine": machine, "notes": notes,
                                                    "editing": edit_info, "images": names})
  plot = plot_ablation(output / "ablation.png", rows)
  k = min(grid_images, len(x))
  report.save_grid(output / "reconstructions.png", [list(x[:k])] + [list(r.reconstructions[:k]) for r in results],
                   row_labels=["target"] + [s.name for s in runs])
  mids = [synthesize(interpolation_midpoints(r.codes[:k + 1]))[:k] for r in results]
  report.save_grid(output / "interpolations.png", [list(m) for m in mids], row_labels=[s.name for s in runs])
  sections = [report.Section("Results", text="\n\n".join(notes),
                             table=(list(COLUMNS), [[row[c] for c in COLUMNS] for row in rows])),
              report.Section("Columns", text="\n\n".join(f"{k}: {v}" for k, v in COLUMN_DOCS.items())),
              report.Section("Reconstructions", images=[("reconstructions.png", "targets, then one row per run")]),
              report.Section("Interpolations", images=[("interpolations.png",
                                                        "G(mid-point of codes i and i+1), one row per run")]),
              report.Section("Machine", text=", ".join(f"{k}={v}" for k, v in machine.items()))]
  if plot is not None:
    sections.insert(1, report.Section("Ablation over lambda_enc", images=[("ablation.png", "in-domain runs")]))
  report.write_html(output / "index.html", "idinvert_jax: inversion comparison", sections)
  return rows


def _user_errors() -> tuple[type, ...]:
  """Exceptions that mean a fixable input problem: printed as one line instead of a traceback."""
  from idinvert_jax import data, export, inversion
  from idinvert_jax.data import sources
  from idinvert_jax.editing import boundaries
  return (EvaluateError, inversion.InversionError, export.CheckpointError, sources.InputNotFoundError,
          sources.EmptySourceError, boundaries.BoundaryFileError, data.ImageError)


def main(argv=None) -> None:
  del argv
  import sys
  from absl import flags
  FLAGS = flags.FLAGS
  from idinvert_jax import cli_logging  # pylint: disable=import-outside-toplevel
  cli_logging.quiet_libraries(FLAGS.verbosity)  # Orbax / JAX INFO lines only with --verbosity=1
  try:
    _run_from_flags(FLAGS)
  except _user_errors() as e:
    message = str(e)
    sys.exit(message if message.startswith("evaluate") else f"evaluate: {message}")
  print(f"wrote {FLAGS.output}/results.md, results.csv, index.html")


def _run_from_flags(FLAGS) -> None:
  run_comparison(FLAGS.checkpoint, FLAGS.images, FLAGS.output, FLAGS.config, quick=FLAGS.quick,
                 methods=FLAGS.methods, optimize_steps=[int(s) for s in FLAGS.optimize_steps or ()] or None,
                 indomain_steps=FLAGS.indomain_steps, lambdas=[float(l) for l in FLAGS.lambda_enc],
                 boundary=FLAGS.boundary, train_boundary=FLAGS.train_boundary, attribute=FLAGS.attribute,
                 edit_distance=FLAGS.edit_distance, num_images=FLAGS.num_images, seed=FLAGS.seed,
                 progress=FLAGS.progress)


def define_flags() -> None:
  from absl import flags
  from ml_collections import config_flags
  flags.DEFINE_string("checkpoint", None, "Model checkpoint folder (or training workdir).", required=True)
  flags.DEFINE_list("images", None, "Image files/folders/lists, or synthetic:N (held-out synthetic faces).",
                    required=True)
  flags.DEFINE_string("output", None, "Report folder.", required=True)
  config_flags.DEFINE_config_file("config", None, "Optional experiment config (must match the checkpoint).")
  flags.DEFINE_bool("quick", False, "Few steps everywhere (smoke test; numbers mean nothing).")
  flags.DEFINE_list("methods", ["encoder", "optimize", "indomain"], "Methods to compare.")
  flags.DEFINE_list("optimize_steps", None, "Steps of the optimize runs (default 100,1000; quick 5,10).")
  flags.DEFINE_integer("indomain_steps", None, "Steps of the in-domain runs (default 100; quick 5).")
  flags.DEFINE_list("lambda_enc", ["0", "0.5", "2", "5"], "lambda_enc values of the in-domain runs.")
  flags.DEFINE_string("boundary", None, "Boundary file (.npy/.npz) for manipulation success.")
  flags.DEFINE_string("train_boundary", None, "Synthetic-face attribute to train a boundary for instead.")
  flags.DEFINE_string("attribute", None, "Attribute the --boundary edits (default: stored name / file stem).")
  flags.DEFINE_float("edit_distance", 3.0, "Signed distance moved along the boundary.")
  flags.DEFINE_integer("num_images", None, "Use only the first N images.")
  flags.DEFINE_integer("seed", 0, "Seed of SWD sampling, predictor and boundary training.")
  flags.DEFINE_bool("progress", True, "Show progress bars.")


def run() -> None:
  from absl import app
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
