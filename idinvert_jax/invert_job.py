"""The inversion job behind `invert.py`: images in, W+ codes + reconstructions + metrics + HTML out.

The output folder's layout (the official one, plus metrics and resumability) and its reader are in
`idinvert_jax.inversion_folder`. Reruns on the same folder skip images already done; other settings or models
on a folder that holds results are refused unless `overwrite`.

Input policy (said once per run): non-square images are stretched to the model's square, as the official code
does (`cv2.resize` to resolution x resolution), unless `crop='center'` cuts their central square first; with
`align=True` every face is cropped the FFHQ way first (idinvert_jax.align), which is what the models expect.
Each image gets an out-of-domain verdict when the checkpoint holds a calibration (idinvert_jax.domain_check):
metrics.csv column `domain`, a warning in the HTML and in `InversionSummary.outside_domain`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from idinvert_jax import domain_check, files, inversion
from idinvert_jax import inversion_folder as folder_lib

# The official CLI's flag names, fields of inversion.InvertSettings.
OFFICIAL_FLAGS = ("method", "num_iterations", "learning_rate", "loss_weight_feat", "loss_weight_enc",
                  "batch_size", "num_results", "precision")
# --crop: what happens to a non-square input ('none' = stretch it, the official behaviour).
CROP_MODES = {"none": "resize", "center": "center_crop"}
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


def _non_square(paths: Sequence[Path]) -> list[Path]:
  """Inputs whose width and height differ (read from the file header only; unreadable ones are left out)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  found = []
  for path in paths:
    try:
      with Image.open(path) as image:
        width, height = image.size  # EXIF rotation swaps the sides: squareness is the same.
    except (OSError, ValueError, Image.DecompressionBombError):
      continue
    if width != height:
      found.append(path)
  return found


def crop_policy_note(paths: Sequence[Path], crop: str, resolution: int) -> str | None:
  """The one line a run says about non-square inputs (None when every input is square)."""
  if crop not in CROP_MODES:
    raise InvertJobError(f"crop {crop!r} is unknown; use one of {sorted(CROP_MODES)}.")
  count = len(_non_square(paths))
  if not count:
    return None
  if crop == "none":
    return (f"{count} of {len(paths)} images are not square: stretched to {resolution}x{resolution} as the "
            f"official code does (--crop center cuts their central square instead; --align crops faces the FFHQ "
            f"way)")
  return (f"{count} of {len(paths)} images are not square: their central square is cut out and resized to "
          f"{resolution}x{resolution} (--crop center)")


def _align_inputs(paths: Sequence[Path], folder: Path, resolution: int, largest_face: bool, progress: bool):
  """FFHQ-aligns every input into `folder`; returns (aligned paths, [(path, reason)] skipped, note)."""
  from idinvert_jax import align  # pylint: disable=import-outside-toplevel
  summary = align.align_files(paths, folder, resolution, largest_only=largest_face, progress=progress)
  skipped = [(p, "no face found (--align); skipped") for p in summary.no_face] + list(summary.failed)
  note = (f"--align: {len(summary.written)} face(s) from {len(set(summary.sources))} of {len(paths)} photo(s) "
          f"cropped the FFHQ way into {folder}" + (" (largest face only)" if largest_face else ""))
  return list(summary.written), skipped, note


def _domain_calibration(checkpoint) -> tuple[Any, str]:
  """The checkpoint's out-of-domain calibration and the sentence that explains it (or says there is none)."""
  try:
    calibration = domain_check.load(checkpoint)
  except FileNotFoundError:  # No checkpoint folder (models passed in directly).
    calibration = None
  if calibration is None:
    return None, (f"No out-of-domain check: the checkpoint has no {domain_check.CALIBRATION_FILE} (make one with "
                  f"`python -m idinvert_jax.domain --checkpoint {checkpoint} --images HELD_OUT_IMAGES`).")
  return calibration, calibration.describe()


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


def _reason(error: Exception, path) -> str:
  """The error's first line without the path in front (the caller names the path once)."""
  text = str(error).splitlines()[0] if str(error) else type(error).__name__
  for prefix in (f"{path}: ", f"{os.path.realpath(path)}: "):
    if text.startswith(prefix):
      return text[len(prefix):]
  return text


def summary_line(summary: "InversionSummary") -> str:
  """'5 images in out/: 2 inverted now, 3 skipped as done, 1 failed' (counts of this run, then the folder's)."""
  return (f"{summary.num_done} images in {summary.output}: {summary.num_inverted} inverted now, "
          f"{summary.num_skipped} skipped as done, {len(summary.failed)} failed")


def finite_rows(result: inversion.InversionResult) -> np.ndarray:
  """bool [N]: the images whose codes and final losses are all finite (a diverged optimisation is a failure)."""
  finite = np.isfinite(result.codes).reshape(len(result.codes), -1).all(axis=1)
  for values in result.losses.values():
    finite &= np.isfinite(np.asarray(values)).reshape(len(finite), -1).all(axis=1)
  return finite


def select_rows(result: inversion.InversionResult, keep: np.ndarray) -> inversion.InversionResult:
  """The result of the images where `keep` is True (every per-image array cut the same way)."""
  def cut(array):
    return None if array is None else np.asarray(array)[keep]
  return dataclasses.replace(
      result, codes=cut(result.codes), encoder_codes=cut(result.encoder_codes),
      reconstructions=cut(result.reconstructions), encoder_reconstructions=cut(result.encoder_reconstructions),
      snapshots=[(step, cut(images)) for step, images in result.snapshots],
      losses={name: cut(values) for name, values in result.losses.items()},
      loss_history=[(step, {name: cut(v) for name, v in values.items()}) for step, values in result.loss_history])


@dataclasses.dataclass
class InversionSummary:
  output: Path
  num_done: int           # images with results in the folder (this run + earlier runs)
  num_inverted: int       # images inverted by this run (by this process, in a multi-process run)
  num_skipped: int        # images found done by an earlier run
  failed: list            # [(path, reason)]: unreadable inputs, photos without a face (align)
  mean_metrics: dict      # name -> mean over the done images (NaN when unavailable)
  notes: list = dataclasses.field(default_factory=list)           # input policy lines, said once per run
  outside_domain: list = dataclasses.field(default_factory=list)  # one warning line per flagged image
  domain_note: str = ""   # how the domain threshold was computed, or why there is none


# ----------------------------------------------------------------------------------------------------------
# The steps both layouts share: resolve the job once, invert one batch, keep what is finite.


@dataclasses.dataclass
class Job:
  """Models, settings and policies of one inversion run, resolved once (`resolve_job`)."""
  checkpoint: str | Path
  models: Any
  settings: inversion.InvertSettings
  inverter: inversion.Inverter
  devices: list
  crop: str
  fingerprint: dict
  calibration: Any
  domain_note: str

  @property
  def resolution(self) -> int:
    return int(self.models.config.model.resolution)

  @property
  def batch_size(self) -> int:
    """The one compiled batch shape: the batch size rounded up to the device count."""
    return -(-max(1, self.settings.batch_size) // len(self.devices)) * len(self.devices)

  @property
  def save_steps(self) -> list[int]:
    s = self.settings
    return inversion.snapshot_steps(s.num_iterations, s.num_results)[:-1] if (
        s.num_results > 1 and s.method != "encoder") else []


def resolve_job(checkpoint: str | Path, config: ml_collections.ConfigDict | None = None,
                overrides: dict[str, Any] | None = None, models=None, crop: str = "none",
                devices=None) -> Job:
  """Checks the flags, loads the models, resolves the settings and the domain calibration: before any work."""
  inversion.InvertSettings.from_config(config, **(overrides or {}))  # Bad flag values: refused before loading.
  if crop not in CROP_MODES:
    raise InvertJobError(f"crop {crop!r} is unknown; use one of {sorted(CROP_MODES)}.")
  if models is None:
    models = load_job_models(checkpoint, config)
  settings = inversion.InvertSettings.from_config(config if config is not None else models.config,
                                                  **(overrides or {}))
  inverter = inversion.Inverter(models)
  inverter.validate(settings)  # Mismatched checkpoint / missing encoder: fail before any work.
  calibration, domain_note = _domain_calibration(checkpoint)  # A malformed file fails before any work.
  fingerprint = _fingerprint(settings, models)
  if crop != "none":  # The crop changes the pixels inverted (absent for the default: older folders still match).
    fingerprint["crop"] = crop
  return Job(checkpoint=checkpoint, models=models, settings=settings, inverter=inverter,
             devices=list(devices) if devices is not None else jax.devices(), crop=crop, fingerprint=fingerprint,
             calibration=calibration, domain_note=domain_note)


@dataclasses.dataclass
class BatchOutcome:
  """One inverted batch: the finite results (`keep` says which inputs they are) and the failures."""
  result: inversion.InversionResult | None  # rows of the kept inputs only; None when none is kept
  keep: np.ndarray                          # bool [n]
  seconds: float                            # wall time per input of the batch
  failed: list                              # [(position in the batch, reason)]


NON_FINITE = ("non-finite codes or losses (lower --learning_rate or check the loss weights); not saved, retried "
              "on the next run")


def invert_batch(job: Job, x: np.ndarray, progress: bool = False) -> BatchOutcome:
  """Inverts up to `job.batch_size` images, padded to that one compiled shape (the padding is dropped)."""
  n = x.shape[0]
  padded = inversion._pad_rows(x, job.batch_size)  # pylint: disable=protected-access
  start = time.perf_counter()
  result = inversion.invert(padded, job.inverter, job.settings, progress=progress, devices=job.devices)
  seconds = (time.perf_counter() - start) / n
  result = select_rows(result, np.arange(job.batch_size) < n)
  keep = finite_rows(result)
  failed = [(int(j), NON_FINITE) for j in np.flatnonzero(~keep)]
  return BatchOutcome(result=select_rows(result, keep) if keep.any() else None, keep=keep, seconds=seconds,
                      failed=failed)


def load_inputs(read, indices: Sequence[int], name_of) -> tuple[list[int], np.ndarray | None, list]:
  """`read(i)` -> float image for each index; returns (loaded indices, images [n, R, R, 3], [(i, reason)]) where
  a reason does not repeat the input's name (`name_of(i)`)."""
  loaded, arrays, failed = [], [], []
  for i in indices:
    try:
      arrays.append(read(i))
      loaded.append(i)
    except (ValueError, OSError) as e:  # data.ImageError is a ValueError.
      failed.append((i, _reason(e, name_of(i))))
  return loaded, (np.stack(arrays) if arrays else None), failed


def run_inversion(checkpoint: str | Path, images: Sequence[str | Path], output: str | Path,
                  config: ml_collections.ConfigDict | None = None, overrides: dict[str, Any] | None = None,
                  overwrite: bool = False, progress: bool = True, devices=None, models=None,
                  crop: str = "none", align: bool = False, largest_face: bool = False) -> InversionSummary:
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
    models: an already loaded `export.Models` (then `checkpoint` is only reported and searched for the
      domain calibration).
    crop: non-square inputs: 'none' stretches them to the square (official), 'center' cuts the central square.
    align: crop every face the FFHQ way first (needs the align extra); the aligned faces are what is inverted.
    largest_face: with `align`, only the largest face of each photo.
  """
  from idinvert_jax import data  # pylint: disable=import-outside-toplevel
  from idinvert_jax import inversion_shards  # pylint: disable=import-outside-toplevel
  output = Path(output)
  if output.exists() and not output.is_dir():
    raise InvertJobError(f"{output} is a file, not a folder; give a folder for --output.")
  if inversion_shards.is_sharded(output):
    raise InvertJobError(f"{output} holds a sharded inversion ({inversion_shards.MANIFEST_FILE}); rerun with "
                         "--layout shards or choose another --output.")
  dataset = [str(p) for p in images if data.sources.is_dataset_spec(p)]
  if dataset:
    raise InvertJobError(f"{dataset[0]} is a data set; data sets are inverted with --layout shards.")
  job = resolve_job(checkpoint, config, overrides, models, crop, devices)
  paths = [Path(p) for p in data.expand_inputs(images)]  # Raises (one line) for missing paths or no images.
  files.check_output_folder(output)  # A read-only folder: one line before any work.
  paths, notes, input_failures = _plan_paths(job, paths, images, output, align, largest_face, progress)
  names = folder_lib.unique_names(paths)
  sources = [os.path.realpath(p) for p in paths]  # (Path.resolve raises on a symlink loop; realpath does not.)

  if overwrite:
    folder_lib.clear_parts(output)
  elif folder_lib.read_fingerprint(output) not in (None, job.fingerprint):
    raise InvertJobError(f"{output} holds results made with other settings or models "
                         f"({output / folder_lib.PARTS_DIR / folder_lib.SETTINGS_FILE}); pass --overwrite to redo "
                         f"them or choose another --output.")
  folder_lib.write_fingerprint(output, job.fingerprint)

  done = folder_lib.load_parts(output)
  pending = [i for i, s in enumerate(sources) if s not in done]
  skipped = len(sources) - len(pending)
  if skipped:
    logging.info("%s: %d of %d images already done, skipping them.", output, skipped, len(sources))

  failed: list[tuple[str, str]] = []
  part_index = folder_lib.next_part_index(output)
  bar = _progress_bar(progress, len(pending), "invert")
  for lo in range(0, len(pending), job.batch_size):
    batch = pending[lo:lo + job.batch_size]
    loaded, x, batch_failed = load_inputs(lambda i: data.load_image(paths[i], job.resolution, CROP_MODES[crop]),
                                          batch, lambda i: paths[i])
    if loaded:
      outcome = invert_batch(job, x)
      batch_failed += [(loaded[j], reason) for j, reason in outcome.failed]
      kept = [i for i, ok in zip(loaded, outcome.keep) if ok]
      if kept:
        x = x[outcome.keep]
        record = _batch_record(job.models, x, outcome.result, [sources[i] for i in kept], [names[i] for i in kept],
                               outcome.seconds)
        for j, i in enumerate(kept):  # PNGs first, the part file last: the part marks the batch as done.
          _write_pngs(output, names[i], x[j], outcome.result, j, job.save_steps)
        folder_lib.save_part(output, part_index, record)
        part_index += 1
    for i, reason in batch_failed:
      logging.warning("failed %s: %s", paths[i], reason)
      failed.append((str(paths[i]), reason))
    if bar is not None:
      bar.update(len(batch))
  if bar is not None:
    bar.close()

  done = folder_lib.load_parts(output)
  order = [i for i, s in enumerate(sources) if s in done]
  rows = [done[sources[i]] for i in order]
  warnings = _domain_warnings(job, [names[i] for i in order], rows)
  folder_lib.write_failed(output, input_failures + failed)
  folder_lib.write_summary(output, [names[i] for i in order], [sources[i] for i in order], rows, job.save_steps,
                           job.settings, has_perceptual=job.models.perceptual_vars is not None,
                           outside=warnings.verdicts, domain_note=job.domain_note, notes=notes,
                           failed=input_failures + failed)
  return InversionSummary(output=output, num_done=len(rows), num_inverted=len(sources) - skipped - len(failed),
                          num_skipped=skipped, failed=input_failures + failed, mean_metrics=mean_metrics(rows),
                          notes=notes, outside_domain=warnings.lines, domain_note=job.domain_note)


def _progress_bar(progress: bool, total: int, what: str):
  if not progress or not total:
    return None
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(total=total, desc=what, unit="image")


def _plan_paths(job: Job, paths, images, output: Path, align: bool, largest_face: bool, progress: bool):
  """The inputs actually inverted (FFHQ-aligned crops with `align`), the policy notes and the photos skipped."""
  notes, input_failures = [], []
  if align:
    paths, input_failures, note = _align_inputs(paths, output / folder_lib.ALIGNED_DIR, job.resolution,
                                                largest_face, progress)
    notes.append(note)
    if not paths:
      raise InvertJobError(f"--align found no face in {list(map(str, images))}; check the photos or invert them "
                           f"without --align.")
  else:
    note = crop_policy_note(paths, job.crop, job.resolution)
    if note:
      notes.append(note)
  for note in notes:
    logging.warning("%s", note)
  return paths, notes, input_failures


def _write_pngs(folder: Path, name: str, original, result: inversion.InversionResult, j: int, save_steps) -> None:
  folder_lib.write_images(
      folder, name, original, None if result.encoder_reconstructions is None else result.encoder_reconstructions[j],
      [(step, snap[j]) for step, snap in result.snapshots if step in save_steps], result.reconstructions[j])


@dataclasses.dataclass
class DomainWarnings:
  verdicts: list   # per row: True outside, False inside, None without a calibration
  lines: list      # one warning line per image outside


def _domain_warnings(job: Job, names: Sequence[str], rows: Sequence[dict]) -> DomainWarnings:
  psnrs = [float(r["psnr"]) for r in rows]
  outside = domain_check.verdicts(job.calibration, psnrs, job.settings.method)
  lines = [job.calibration.warning(name, psnr, job.settings.method)
           for name, psnr, o in zip(names, psnrs, outside) if o]
  for line in lines:
    logging.warning("%s", line)
  return DomainWarnings(outside, lines)


def mean_metrics(rows: Sequence[dict]) -> dict:
  return {k: float(np.mean([r[k] for r in rows])) if rows else math.nan
          for k in ("mse", "psnr", "ssim", "perceptual", "seconds")}


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
