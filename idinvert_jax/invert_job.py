"""The inversion job behind `invert.py`: images in, W+ codes + reconstructions + metrics + HTML out.

The output folder's layout (the official one, plus metrics and resumability) and its reader are in
`idinvert_jax.inversion_folder`. Reruns on the same folder skip images already done; other settings or models
on a folder that holds results are refused unless `overwrite`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from idinvert_jax import inversion
from idinvert_jax import inversion_folder as folder_lib

# The official CLI's flag names, fields of inversion.InvertSettings.
OFFICIAL_FLAGS = ("method", "num_iterations", "learning_rate", "loss_weight_feat", "loss_weight_enc",
                  "batch_size", "num_results", "precision")
# The settings that change results: the folder's parts are reused only when these (and the models) match.
RESULT_SETTINGS = ("method", "num_iterations", "learning_rate", "loss_weight_pix", "loss_weight_feat",
                   "loss_weight_enc", "init", "num_results", "precision")


class InvertJobError(ValueError):
  """A user-fixable problem with the job's inputs or output folder."""


def load_job_models(checkpoint_dir: str | Path, config: ml_collections.ConfigDict | None = None):
  """Models from a checkpoint; VGG16 from config.model.perceptual.weights when the checkpoint has none."""
  from idinvert_jax import export  # pylint: disable=import-outside-toplevel
  from idinvert_jax.convert import vgg16  # pylint: disable=import-outside-toplevel
  models = export.load_models(checkpoint_dir, config=config)
  if models.perceptual_vars is None:
    loaded = vgg16.load_perceptual(models.config.model)  # None (+ a warning) when no weights are given.
    if loaded is not None:
      models.perceptual, models.perceptual_vars = loaded
  return models


def _fingerprint(settings: inversion.InvertSettings, models) -> dict:
  """What must match for earlier parts to be reused: settings that change results, and the model identity."""
  digest = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(models.generator_vars)[:8]:
    digest.update(np.asarray(leaf).tobytes()[:4096])
  return {"settings": {k: getattr(settings, k) for k in RESULT_SETTINGS},
          "resolution": int(models.config.model.resolution), "generator_digest": digest.hexdigest()[:16]}


def _metrics(models, originals: np.ndarray, reconstructions: np.ndarray) -> dict[str, np.ndarray]:
  """Per-image MSE ([-1, 1] scale), PSNR (dB, [0, 255]), SSIM and VGG16 conv4_3 distance (NaN without VGG)."""
  from idinvert_jax.metrics import reconstruction as rec  # pylint: disable=import-outside-toplevel
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


def _batch_record(models, x, result: inversion.InversionResult, sources, names, seconds) -> dict:
  """One batch's stored results (a .parts file): per image, codes, metrics and losses."""
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
    overrides: InvertSettings fields to set (the official flag names); None values are ignored.
    overwrite: redo every image even if an earlier run on `output` finished it.
    progress: tqdm bars.
    devices: devices of the 'data' mesh (default: all).
    models: an already loaded `export.Models` (then `checkpoint` is only reported).
  """
  from idinvert_jax import data  # pylint: disable=import-outside-toplevel
  output = Path(output)
  if models is None:
    models = load_job_models(checkpoint, config)
  settings = inversion.InvertSettings.from_config(config if config is not None else models.config,
                                                  **(overrides or {}))
  inverter = inversion.Inverter(models)
  inverter.validate(settings)  # Mismatched checkpoint / missing encoder: fail before any work.
  resolution = int(models.config.model.resolution)
  paths = [Path(p) for p in data.expand_inputs(images)]  # Raises (one line) for missing paths or no images.
  names = folder_lib.unique_names(paths)
  sources = [str(p.resolve()) for p in paths]

  fingerprint = _fingerprint(settings, models)
  if overwrite:
    folder_lib.clear_parts(output)
  elif folder_lib.read_fingerprint(output) not in (None, fingerprint):
    raise InvertJobError(f"{output} holds results made with other settings or models "
                         f"({output / folder_lib.PARTS_DIR / folder_lib.SETTINGS_FILE}); pass --overwrite to redo "
                         f"them or choose another --output.")
  folder_lib.write_fingerprint(output, fingerprint)

  done = folder_lib.load_parts(output)
  pending = [i for i, s in enumerate(sources) if s not in done]
  skipped = len(sources) - len(pending)
  if skipped:
    logging.info("%s: %d of %d images already done, skipping them.", output, skipped, len(sources))

  steps = inversion.snapshot_steps(settings.num_iterations, settings.num_results)
  save_steps = steps[:-1] if settings.num_results > 1 and settings.method != "encoder" else []
  failed: list[tuple[str, str]] = []
  part_index = folder_lib.next_part_index(output)
  for lo in range(0, len(pending), max(1, settings.batch_size)):
    chunk = pending[lo:lo + max(1, settings.batch_size)]
    loaded, arrays = [], []
    for i in chunk:
      try:
        arrays.append(data.load_image(paths[i], resolution))
        loaded.append(i)
      except (data.ImageError, OSError) as e:
        failed.append((str(paths[i]), str(e).splitlines()[0] if str(e) else type(e).__name__))
        logging.warning("skipping %s: %s", paths[i], failed[-1][1])
    if not loaded:
      continue
    x = np.stack(arrays)
    start = time.perf_counter()
    result = inversion.invert(x, inverter, settings, progress=progress, devices=devices)
    seconds = (time.perf_counter() - start) / len(loaded)
    record = _batch_record(models, x, result, [sources[i] for i in loaded], [names[i] for i in loaded],
                           seconds)
    for j, i in enumerate(loaded):  # PNGs first, the part file last: the part marks the batch as done.
      folder_lib.write_images(
          output, names[i], x[j],
          None if result.encoder_reconstructions is None else result.encoder_reconstructions[j],
          [(step, snap[j]) for step, snap in result.snapshots if step in save_steps], result.reconstructions[j])
    folder_lib.save_part(output, part_index, record)
    part_index += 1

  done = folder_lib.load_parts(output)
  order = [i for i, s in enumerate(sources) if s in done]
  rows = [done[sources[i]] for i in order]
  folder_lib.write_summary(output, [names[i] for i in order], [sources[i] for i in order], rows, save_steps,
                           settings, has_perceptual=models.perceptual_vars is not None)
  folder_lib.write_failed(output, failed)
  means = {k: float(np.mean([r[k] for r in rows])) if rows else math.nan
           for k in ("mse", "psnr", "ssim", "perceptual", "seconds")}
  return InversionSummary(output=output, num_done=len(rows), num_inverted=len(sources) - skipped - len(failed),
                          num_skipped=skipped, failed=failed, mean_metrics=means)


def compile_check(checkpoint: str | Path | None, config: ml_collections.ConfigDict | None = None,
                  overrides: dict[str, Any] | None = None, topology: str | None = None, search: bool = True,
                  on_report=None):
  """`invert.py --compile_only`: compiles the inversion step for every device and reports what it needs.

  The step is the engine's own (`inversion.lower_step`: G, E and VGG16 conv4_3 forward and backward, Adam over
  the codes) for the global batch `overrides['batch_size']` (else config.invert.batch_size) sharded over all
  devices: the host's, or those of TPU topology `topology` (no TPU needed). Only shapes are used: `checkpoint`
  may be None when `config` is given (its model section). Without VGG16 weights the perceptual term is compiled
  anyway (from the architecture), as a run with the official weights has it.

  Returns (CompileReport of the requested batch, compile_check.BatchSearch: the largest batch per device that
  fits, searched by compiling when `search` and the device memory is known). `on_report(report)` is called after
  each compile (progress).
  """
  from idinvert_jax import compile_check as check_lib  # pylint: disable=import-outside-toplevel
  from idinvert_jax import export  # pylint: disable=import-outside-toplevel
  devices = check_lib.topology_devices(topology) if topology else jax.devices()
  if checkpoint:
    models = load_job_models(checkpoint, config)
    for name in models.names():  # shapes only: nothing is put on the devices
      setattr(models, f"{name}_vars", jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype),
                                                   getattr(models, f"{name}_vars")))
    if models.perceptual_vars is None:
      shapes = export.abstract_models(models.config, ("perceptual",))
      models.perceptual, models.perceptual_vars = shapes.perceptual, shapes.perceptual_vars
  elif config is not None:
    models = export.abstract_models(config)
  else:
    raise InvertJobError("--compile_only needs the model shapes: pass --checkpoint CKPT or --config "
                         "configs/ffhq256.py")
  settings = inversion.InvertSettings.from_config(config if config is not None else models.config,
                                                  **(overrides or {}))
  if not settings.optimises:
    raise InvertJobError(f"--compile_only checks the optimisation step; method {settings.method!r} has none (use "
                         "--method indomain or optimize)")
  inverter = inversion.Inverter(models)
  topology_name = topology or f"host:{devices[0].platform}"

  def report_at(per_device: int):
    report = check_lib.compile_and_report(
        lambda: inversion.lower_step(inverter, settings, devices, per_device * len(devices)), devices,
        topology=topology_name, stage="invert", global_batch=per_device * len(devices),
        precision=settings.precision)
    if on_report is not None:
      on_report(report)
    return report

  if settings.batch_size % len(devices):
    raise InvertJobError(f"--batch_size {settings.batch_size} does not split over the {len(devices)} devices of "
                         f"{topology_name}; use a multiple of {len(devices)}")
  first = report_at(settings.batch_size // len(devices))
  found = check_lib.largest_batch_per_device(report_at, first, max_compiles=4 if search else 0)
  return first, found
