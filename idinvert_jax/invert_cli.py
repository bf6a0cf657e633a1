"""The inversion job behind `invert.py`: images in, W+ codes + reconstructions + metrics + HTML out.

Output folder (the official `invert.py` layout, plus metrics and resumability):

  inverted_codes.npy       float32 [N, L, D], the inverted codes of the loaded images in input order
  encoded_codes.npy        float32 [N, L, D], E(x) (when the checkpoint has an encoder)
  image_list.txt           the N source paths, one per line, in the order of the codes
  <name>_ori.png           the input as the model saw it (resized)
  <name>_enc.png           G(E(x))
  <name>_step<k>.png       G(w) after k steps (only when num_results > 1)
  <name>_inv.png           G(inverted code)
  metrics.csv              per image: MSE, PSNR, SSIM, perceptual distance, seconds (+ the encoder's MSE/PSNR)
  index.html               original | encoder | snapshots | final, side by side, and the metrics table
  failed.txt               inputs that could not be read, with the reason (only when there are any)
  .parts/                  per-batch results; a rerun on the same folder skips images already done

Every file is written atomically, and a batch's .parts file is written last, so a killed run loses at most the
batch in flight.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import ml_collections
import numpy as np

from idinvert_jax import files, inversion

PARTS_DIR = ".parts"
SETTINGS_FILE = "settings.json"
# The official CLI's flag names, in config.invert.
OFFICIAL_FLAGS = ("method", "num_iterations", "learning_rate", "loss_weight_feat", "loss_weight_enc",
                  "batch_size", "num_results", "precision")


class InvertJobError(ValueError):
  """A user-fixable problem with the job's inputs or output folder."""


# ----------------------------------------------------------------------------------------------------------
# Inputs.


def expand_inputs(paths: Sequence[str | Path]) -> list[Path]:
  """Files, folders (recursive, sorted) and .txt lists -> image paths in input order (idinvert_jax.data)."""
  from idinvert_jax import data  # pylint: disable=g-import-not-at-top
  return [Path(p) for p in data.expand_inputs(paths)]


def unique_names(paths: Sequence[Path]) -> list[str]:
  """File stems, made unique with a _2, _3, ... suffix (two folders may hold the same file name)."""
  seen: dict[str, int] = {}
  names = []
  for path in paths:
    stem = path.stem
    count = seen.get(stem, 0) + 1
    seen[stem] = count
    names.append(stem if count == 1 else f"{stem}_{count}")
  return names


def _load_image(path: Path, resolution: int) -> np.ndarray:
  from idinvert_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  return preprocess.load_image(path, resolution)


def _image_error_types() -> tuple[type, ...]:
  from idinvert_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  return (preprocess.ImageError, OSError)


# ----------------------------------------------------------------------------------------------------------
# Models and settings.


def load_job_models(checkpoint_dir: str | Path, config: ml_collections.ConfigDict | None = None):
  """Models from a checkpoint; VGG16 from config.model.perceptual.weights when the checkpoint has none."""
  from idinvert_jax import export  # pylint: disable=g-import-not-at-top
  models = export.load_models(checkpoint_dir, config=config)
  if models.perceptual_vars is None:
    from idinvert_jax.convert import vgg16  # pylint: disable=g-import-not-at-top
    loaded = vgg16.load_perceptual(models.config.model)  # None (+ a warning) when no weights are given.
    if loaded is not None:
      models.perceptual, models.perceptual_vars = loaded
  return models


def invert_settings(config: ml_collections.ConfigDict | None, overrides: dict[str, Any] | None = None
                    ) -> ml_collections.ConfigDict:
  """config.invert (defaults of its method where absent) with the non-None `overrides` applied."""
  overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
  section = config.invert if config is not None and "invert" in config else ml_collections.ConfigDict()
  method = overrides.get("method", section.get("method", "indomain"))
  if method not in inversion.METHODS:
    raise inversion.InversionError(f"invert: method {method!r} is unknown; set --method to one of "
                                   f"{inversion.METHODS}.")
  settings = inversion.get_invert_config(method)
  for key in settings.keys():
    # A method chosen by flag takes that method's defaults, not those stored for another method.
    if key in section and ("method" not in overrides or section.get("method") == method):
      settings[key] = section[key]
  for key, value in overrides.items():
    if key not in settings:
      raise inversion.InversionError(f"invert: unknown setting {key!r}; use one of {sorted(settings.keys())}.")
    settings[key] = type(settings[key])(value)
  return settings


def _fingerprint(settings: ml_collections.ConfigDict, models) -> dict:
  """What must match for earlier parts to be reused: settings that change results, and the model identity."""
  keep = ("method", "num_iterations", "learning_rate", "loss_weight_pix", "loss_weight_feat", "loss_weight_enc",
          "init", "num_results", "precision")
  digest = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(models.generator_vars)[:8]:
    digest.update(np.asarray(leaf).tobytes()[:4096])
  return {"settings": {k: settings[k] for k in keep}, "resolution": int(models.config.model.resolution),
          "generator_digest": digest.hexdigest()[:16]}


# ----------------------------------------------------------------------------------------------------------
# Per-batch parts (resumability).


def _save_part(parts_dir: Path, index: int, record: dict) -> Path:
  buf = io.BytesIO()
  np.savez(buf, **{k: np.asarray(v) for k, v in record.items()})
  return files.atomic_write_bytes(parts_dir / f"batch_{index:05d}.npz", buf.getvalue())


def _load_parts(parts_dir: Path) -> dict[str, dict]:
  """source path -> that image's stored results, over all finished batches."""
  done = {}
  for part in sorted(parts_dir.glob("batch_*.npz")):
    with np.load(part, allow_pickle=False) as data:
      record = {k: data[k] for k in data.files}
    for i, source in enumerate(record["paths"]):
      done[str(source)] = {k: v[i] for k, v in record.items()}
  return done


def _next_part_index(parts_dir: Path) -> int:
  indices = [int(p.stem.split("_")[1]) for p in parts_dir.glob("batch_*.npz")]
  return max(indices, default=-1) + 1


# ----------------------------------------------------------------------------------------------------------
# Metrics.


def _metrics(models, originals: np.ndarray, reconstructions: np.ndarray) -> dict[str, np.ndarray]:
  """Per-image MSE ([-1, 1] scale), PSNR (dB, [0, 255]), SSIM and VGG16 conv4_3 distance (NaN without VGG)."""
  from idinvert_jax.metrics import reconstruction as rec  # pylint: disable=g-import-not-at-top
  n = originals.shape[0]
  out = {"mse": np.asarray(rec.mse(originals, reconstructions)),
         "psnr": np.asarray(rec.psnr(originals, reconstructions))}
  try:
    out["ssim"] = np.asarray(rec.ssim(originals, reconstructions))
  except ValueError:  # Images smaller than the SSIM window.
    out["ssim"] = np.full(n, np.nan, np.float32)
  dist = rec.perceptual_distance(models.perceptual, models.perceptual_vars, originals, reconstructions)
  out["perceptual"] = np.full(n, np.nan, np.float32) if dist is None else np.asarray(dist)
  return out


# ----------------------------------------------------------------------------------------------------------
# The job.


@dataclasses.dataclass
class InversionSummary:
  output: Path
  num_done: int           # images with results in the folder (this run + earlier runs)
  num_inverted: int       # images inverted by this run
  num_skipped: int        # images found done by an earlier run
  failed: list            # [(path, reason)]
  mean_metrics: dict      # name -> mean over the done images (NaN when unavailable)


def run_inversion(checkpoint: str | Path, images: Sequence[str | Path], output: str | Path,
                  config: ml_collections.ConfigDict | None = None, overrides: dict[str, Any] | None = None,
                  overwrite: bool = False, progress: bool = True, devices=None, models=None) -> InversionSummary:
  """Inverts every image under `images` with the checkpoint's models and writes the output folder.

  Args:
    checkpoint: model checkpoint directory (converter / train.py output).
    images: image files, folders of images, or .txt lists of paths.
    output: output folder (created; reruns resume unless `overwrite`).
    config: optional experiment config; its `model` must match the checkpoint, its `invert` section is used.
    overrides: config.invert fields to set (the official flag names); None values are ignored.
    overwrite: redo every image even if an earlier run on `output` finished it.
    progress: tqdm bars.
    devices: devices of the 'data' mesh (default: all).
    models: an already loaded `export.Models` (then `checkpoint` is only reported).
  """
  output = Path(output)
  if models is None:
    models = load_job_models(checkpoint, config)
  config = config if config is not None else models.config
  settings = invert_settings(config, overrides)
  inversion.validate(models, settings)  # Mismatched checkpoint / missing encoder: fail before any work.
  resolution = int(models.config.model.resolution)
  paths = expand_inputs(images)  # Raises (one line) for missing paths or no images at all.
  names = unique_names(paths)
  sources = [str(p.resolve()) for p in paths]

  parts_dir = output / PARTS_DIR
  fingerprint = _fingerprint(settings, models)
  settings_path = parts_dir / SETTINGS_FILE
  if overwrite and parts_dir.exists():
    for part in parts_dir.glob("batch_*.npz"):
      part.unlink()
  elif settings_path.exists() and json.loads(settings_path.read_text()) != fingerprint:
    raise InvertJobError(f"{output} holds results made with other settings or models ({settings_path}); pass "
                         f"--overwrite to redo them or choose another --output.")
  files.atomic_write_json(settings_path, fingerprint)

  done = _load_parts(parts_dir)
  pending = [i for i, s in enumerate(sources) if s not in done]
  skipped = len(sources) - len(pending)
  if skipped:
    logging.info("%s: %d of %d images already done, skipping them.", output, skipped, len(sources))

  steps = inversion.snapshot_steps(settings.num_iterations, settings.num_results)
  save_steps = steps[:-1] if settings.num_results > 1 and settings.method != "encoder" else []
  failed: list[tuple[str, str]] = []
  error_types = _image_error_types()
  batch_size = max(1, int(settings.batch_size))
  part_index = _next_part_index(parts_dir)
  for lo in range(0, len(pending), batch_size):
    chunk = pending[lo:lo + batch_size]
    loaded, arrays = [], []
    for i in chunk:
      try:
        arrays.append(_load_image(paths[i], resolution))
        loaded.append(i)
      except error_types as e:
        failed.append((str(paths[i]), str(e).splitlines()[0] if str(e) else type(e).__name__))
        logging.warning("skipping %s: %s", paths[i], failed[-1][1])
    if not loaded:
      continue
    x = np.stack(arrays)
    start = time.perf_counter()
    result = inversion.invert(x, models, settings, progress=progress, devices=devices)
    seconds = (time.perf_counter() - start) / len(loaded)
    record = _batch_record(models, x, result, [sources[i] for i in loaded], [names[i] for i in loaded],
                           seconds)
    for j, i in enumerate(loaded):  # PNGs first, the part file last: the part marks the batch as done.
      files.atomic_save_png(output / f"{names[i]}_ori.png", x[j])
      if result.encoder_reconstructions is not None:
        files.atomic_save_png(output / f"{names[i]}_enc.png", result.encoder_reconstructions[j])
      for step, snap in result.snapshots:
        if step in save_steps:
          files.atomic_save_png(output / f"{names[i]}_step{step:06d}.png", snap[j])
      files.atomic_save_png(output / f"{names[i]}_inv.png", result.reconstructions[j])
    _save_part(parts_dir, part_index, record)
    part_index += 1

  done = _load_parts(parts_dir)
  order = [i for i, s in enumerate(sources) if s in done]
  rows = [done[sources[i]] for i in order]
  has_perceptual = models.perceptual_vars is not None
  if rows:
    files.atomic_save_npy(output / "inverted_codes.npy", np.stack([r["codes"] for r in rows]).astype(np.float32))
    if all(not np.isnan(r["encoder_codes"]).all() for r in rows):
      files.atomic_save_npy(output / "encoded_codes.npy",
                            np.stack([r["encoder_codes"] for r in rows]).astype(np.float32))
    files.atomic_write_text(output / "image_list.txt", "".join(f"{sources[i]}\n" for i in order))
    _write_metrics_csv(output / "metrics.csv", [names[i] for i in order], [sources[i] for i in order], rows,
                       has_perceptual)
    _write_html(output / "index.html", [names[i] for i in order], rows, save_steps, settings,
                has_encoder=(output / "encoded_codes.npy").exists(), has_perceptual=has_perceptual)
  failed_path = output / "failed.txt"
  if failed:
    files.atomic_write_text(failed_path, "".join(f"{p}\t{reason}\n" for p, reason in failed))
  elif failed_path.exists():
    failed_path.unlink()
  means = {k: float(np.mean([r[k] for r in rows])) if rows else math.nan
           for k in ("mse", "psnr", "ssim", "perceptual", "seconds")}
  return InversionSummary(output=output, num_done=len(rows), num_inverted=len(sources) - skipped - len(failed),
                          num_skipped=skipped, failed=failed, mean_metrics=means)


def _batch_record(models, x, result: inversion.InversionResult, sources, names, seconds) -> dict:
  n = x.shape[0]
  metrics = _metrics(models, x, result.reconstructions)
  record = dict(paths=np.asarray(sources), names=np.asarray(names), codes=result.codes,
                seconds=np.full(n, seconds, np.float32), **metrics)
  if result.encoder_codes is not None:
    record["encoder_codes"] = result.encoder_codes
    enc = _metrics(dataclasses.replace(models, perceptual=None, perceptual_vars=None), x,
                   result.encoder_reconstructions)
    record["enc_mse"], record["enc_psnr"] = enc["mse"], enc["psnr"]
  else:
    record["encoder_codes"] = np.full_like(result.codes, np.nan)
    record["enc_mse"] = record["enc_psnr"] = np.full(n, np.nan, np.float32)
  for name, values in result.losses.items():
    record[f"loss_{name}"] = values
  return record


def _fmt(value) -> str:
  value = float(value)
  return "" if math.isnan(value) else f"{value:.6g}"


def _write_metrics_csv(path: Path, names, sources, rows, has_perceptual: bool) -> None:
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(["name", "path", "mse", "psnr", "ssim", "perceptual", "seconds", "encoder_mse", "encoder_psnr",
                   "note"])
  note = "" if has_perceptual else "perceptual blank: no VGG16 weights (set config.model.perceptual.weights)"
  for name, source, r in zip(names, sources, rows):
    writer.writerow([name, source, _fmt(r["mse"]), _fmt(r["psnr"]), _fmt(r["ssim"]), _fmt(r["perceptual"]),
                     _fmt(r["seconds"]), _fmt(r["enc_mse"]), _fmt(r["enc_psnr"]), note])
  files.atomic_write_text(path, buf.getvalue())


def _write_html(path: Path, names, rows, save_steps, settings, has_encoder: bool, has_perceptual: bool) -> None:
  from idinvert_jax import report  # pylint: disable=g-import-not-at-top
  text = (f"method {settings.method}, {settings.num_iterations} iterations, lr {settings.learning_rate}, "
          f"loss weights pix {settings.loss_weight_pix} / feat {settings.loss_weight_feat} / enc "
          f"{settings.loss_weight_enc}, precision {settings.precision}. MSE on the [-1, 1] scale, PSNR in dB.")
  if not has_perceptual:
    text += " No VGG16 weights: the perceptual term and distance are off."
  header = ["name", "MSE", "PSNR", "SSIM", "perceptual", "s/image", "encoder MSE", "encoder PSNR"]
  table_rows = [[n, _fmt(r["mse"]), _fmt(r["psnr"]), _fmt(r["ssim"]), _fmt(r["perceptual"]), _fmt(r["seconds"]),
                 _fmt(r["enc_mse"]), _fmt(r["enc_psnr"])] for n, r in zip(names, rows)]
  sections = [report.Section("Summary", text=text, table=(header, table_rows))]
  for name in names:
    images = [(f"{name}_ori.png", "original")]
    if has_encoder:
      images.append((f"{name}_enc.png", "encoder"))
    images += [(f"{name}_step{s:06d}.png", f"step {s}") for s in save_steps]
    images.append((f"{name}_inv.png", "inverted"))
    sections.append(report.Section(name, images=images))
  report.write_html(path, "In-domain GAN inversion", sections)
