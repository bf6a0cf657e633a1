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


# ----------------------------------------------------------------------------------------------------------
# The sharded layout (`--layout shards`, idinvert_jax.inversion_shards): any number of processes, each on its
# own devices, invert the chunks of one data set into one shared folder.

SAVE_IMAGES = ("none", "sample", "all")  # --save_images: PNGs per chunk (none, the first few, every image)
SAMPLE_PER_CHUNK = 4
EXIT_BARRIER_TIMEOUT_S = 7 * 24 * 3600  # the slowest host's share; a host waits at most this long for it


@dataclasses.dataclass
class ShardedSummary:
  output: Path
  num_inputs: int
  num_chunks: int
  chunks_now: int          # chunks this process inverted
  chunks_skipped: int      # chunks found done at the start (by any earlier run)
  chunks_redone: int       # chunk files found unreadable or incomplete at the start, inverted again
  num_inverted: int        # images of the whole folder with codes
  failed: list             # [(name, reason)] of the whole folder
  complete: bool           # every chunk is there (DONE written)
  mean_metrics: dict
  merged: Path | None = None
  notes: list = dataclasses.field(default_factory=list)
  num_outside_domain: int = 0
  domain_note: str = ""


def sharded_summary_line(summary: ShardedSummary) -> str:
  return (f"{summary.num_inputs} inputs in {summary.output} ({summary.num_chunks} chunks): "
          f"{summary.num_inverted} inverted, {len(summary.failed)} failed; this process inverted "
          f"{summary.chunks_now} chunk(s), {summary.chunks_skipped} were done before"
          + (f", {summary.chunks_redone} redone" if summary.chunks_redone else ""))


def _data_config(config, models):
  source = config if config is not None else models.config
  return source.get("data") if hasattr(source, "get") else None


def plan_shards(job: Job, images: Sequence[str | Path], output: Path, chunk_size: int | None,
                overwrite: bool) -> dict:
  """Process 0's start: creates or checks the manifest, removes stale end markers and untrusted chunk files, and
  returns {'pending': [chunk, ...], 'skipped': n, 'redone': n} (JSON, handed to every process)."""
  from idinvert_jax import data  # pylint: disable=import-outside-toplevel
  from idinvert_jax import inversion_shards as shards  # pylint: disable=import-outside-toplevel
  files.check_output_folder(output)
  if folder_lib.read_fingerprint(output) is not None:
    raise InvertJobError(f"{output} holds an official-layout inversion ({folder_lib.PARTS_DIR}/); choose another "
                         "--output for --layout shards")
  manifest = shards.read_manifest(output)
  if manifest is not None and overwrite:
    for name in (shards.DONE_FILE, shards.CODES_FILE, shards.MANIFEST_FILE, shards.INPUTS_FILE):
      (output / name).unlink(missing_ok=True)
    import shutil  # pylint: disable=import-outside-toplevel
    for name in (shards.CHUNKS_DIR, shards.IMAGES_DIR):
      shutil.rmtree(output / name, ignore_errors=True)
    manifest = None
  wanted = data.sources.input_segments(images)
  if manifest is None:
    source, segments = data.sources.open_segments(wanted, job.resolution, _data_config(None, job.models))
    fns = job.inverter.fns
    manifest = shards.make_manifest(len(source), chunk_size or shards.DEFAULT_CHUNK_SIZE,
                                    (fns.num_layers, fns.w_dim), segments, job.fingerprint)
    shards.write_start(output, manifest, data.sources.image_names(source))
  else:
    if manifest["fingerprint"] != job.fingerprint:
      raise InvertJobError(f"{output} holds codes made with other settings or models "
                           f"({output / shards.MANIFEST_FILE}); pass --overwrite to redo them or choose another "
                           "--output")
    stored = [{k: v for k, v in s.items() if k != "count"} for s in manifest["segments"]]
    if stored != wanted:
      raise InvertJobError(f"{output} was started on other inputs ({output / shards.MANIFEST_FILE}: "
                           f"{stored}); pass the same --images, --overwrite, or another --output")
    if chunk_size and chunk_size != int(manifest["chunk_size"]):
      raise InvertJobError(f"{output} was started with --chunk_size {manifest['chunk_size']}; pass that (or "
                           "leave the flag out) to resume, or --overwrite")
  for name in (shards.DONE_FILE, shards.CODES_FILE):  # They would describe the folder before this run.
    (output / name).unlink(missing_ok=True)
  done, bad = shards.scan_chunks(output, manifest)
  for chunk, why in bad:
    logging.warning("%s: %s; inverting it again", shards.chunk_path(output, chunk, manifest["num_chunks"]), why)
    shards.chunk_path(output, chunk, manifest["num_chunks"]).unlink(missing_ok=True)
  pending = sorted(set(range(int(manifest["num_chunks"]))) - set(done))
  return {"pending": pending, "skipped": len(done), "redone": len(bad)}


def _png_name(index: int, name: str) -> str:
  """A unique, sortable PNG stem for input `index` ('00001234_face' from '/data/face.png' or 'x.npz#1234')."""
  stem = Path(name.split("#")[0]).stem or "image"
  return f"{index:08d}_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:40]


def invert_chunk(job: Job, source, manifest: dict, chunk: int, names: Sequence[str], output: Path,
                 save_images: str = "none") -> Path:
  """Inverts one chunk's inputs (batches of the compiled shape, the last one padded) and writes its file."""
  from idinvert_jax import inversion_shards as shards  # pylint: disable=import-outside-toplevel
  from idinvert_jax.data import preprocess, sources  # pylint: disable=import-outside-toplevel

  def read(i):
    return preprocess.to_float(sources.read_prepared(source, i, job.resolution, CROP_MODES[job.crop])[1])

  indices = list(shards.chunk_range(manifest, chunk))
  records, failed = [], []
  for lo in range(0, len(indices), job.batch_size):
    loaded, x, batch_failed = load_inputs(read, indices[lo:lo + job.batch_size], lambda i: names[i])
    if loaded:
      outcome = invert_batch(job, x)
      batch_failed += [(loaded[j], reason) for j, reason in outcome.failed]
      kept = [i for i, ok in zip(loaded, outcome.keep) if ok]
      if kept:
        x = x[outcome.keep]
        record = _batch_record(job.models, x, outcome.result, [], [names[i] for i in kept], outcome.seconds)
        del record["paths"]
        record["index"] = np.asarray(kept, np.int64)
        records.append(record)
        for j, i in enumerate(kept):
          if save_images == "all" or (save_images == "sample" and i - indices[0] < SAMPLE_PER_CHUNK):
            _write_pngs(output / shards.IMAGES_DIR, _png_name(i, names[i]), x[j], outcome.result, j,
                        job.save_steps)
    failed += batch_failed
  if records:
    record = {key: np.concatenate([r[key] for r in records]) for key in records[0]}
  else:  # Every input of the chunk failed: the chunk still says so.
    record = {"index": np.zeros(0, np.int64), "names": np.zeros(0, str),
              "codes": np.zeros((0, *manifest["code_shape"]), np.float32)}
  for i, reason in failed:
    logging.warning("failed %s: %s", names[i], reason)
  return shards.save_chunk(output, manifest, chunk, record, [i for i, _ in failed], [r for _, r in failed])


def _chunk_order(plan: dict, progress_key: str):
  """The pending chunks this process inverts: all of them in one process; in several, each process claims the
  next unclaimed one from a shared counter (a fast host takes more chunks, nobody waits for a fixed share)."""
  from idinvert_jax.training import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  pending = plan["pending"]
  if jax.process_count() == 1:
    yield from pending
    return
  while (k := mesh_lib.claim_counter(progress_key)) < len(pending):
    yield pending[k]


def finish_shards(job: Job, output: Path, merge: bool = False, progress: bool = False,
                  notes: Sequence[str] = ()) -> dict:
  """Process 0's end: checks every chunk, writes failed.txt, metrics.csv, summary.json, index.html, the merged
  codes (`merge`) and DONE when complete. Returns summary.json's content."""
  from idinvert_jax import inversion_shards as shards  # pylint: disable=import-outside-toplevel
  view = shards.open_codes(output, require_complete=False)
  valid = view.valid
  psnr = view.metrics.get("psnr", np.full(len(view), np.nan, np.float32))
  outside = domain_check.verdicts(job.calibration, psnr[valid].tolist(), job.settings.method)
  domain = np.full(len(view), "", object)
  domain[np.flatnonzero(valid)] = [folder_lib.DOMAIN_LABELS[o] for o in outside]
  folder_lib.write_failed(output, [(view.names[i], reason) for i, _, reason in view.failed])
  _write_shard_metrics(output / folder_lib.METRICS_FILE, view, domain)
  means = {}
  for k in ("mse", "psnr", "ssim", "perceptual", "seconds"):
    values = view.metrics.get(k, np.zeros(0, np.float32))[valid] if valid.any() else np.zeros(0, np.float32)
    values = values[np.isfinite(values)]
    means[k] = float(values.mean()) if values.size else None  # None: JSON null (no VGG16, nothing inverted)
  merged = None
  if view.complete and merge:
    merged = shards.merge(output, progress=progress)
  summary = {"num_inputs": len(view), "num_chunks": int(view.manifest["num_chunks"]),
             "num_inverted": int(valid.sum()), "num_failed": len(view.failed), "complete": view.complete,
             "missing_chunks": view.missing_chunks[:20], "mean_metrics": means,
             "num_outside_domain": int(sum(bool(o) for o in outside)), "domain_note": job.domain_note,
             "merged": None if merged is None else str(merged), "notes": list(notes)}
  files.atomic_write_json(output / shards.SUMMARY_FILE, summary)
  _write_shard_html(output, view, summary, job)
  if view.complete:
    files.atomic_write_text(output / shards.DONE_FILE, f"{len(view)} inputs, {summary['num_chunks']} chunks\n")
  return summary


def _write_shard_metrics(path: Path, view, domain) -> None:
  """metrics.csv of every input in input order (streamed: a million rows never sit in one string)."""
  import csv  # pylint: disable=import-outside-toplevel
  columns = ("mse", "psnr", "ssim", "perceptual", "seconds", "enc_mse", "enc_psnr")
  fill = np.full(len(view), np.nan, np.float32)
  values = [view.metrics.get(c, fill) for c in columns]
  failed = {i: reason for i, _, reason in view.failed}
  tmp = path.with_name(f".{path.name}.tmp")
  with open(tmp, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["index", "name", *columns, "domain", "failed"])
    for i, name in enumerate(view.names):
      writer.writerow([i, name, *(folder_lib._fmt(v[i]) for v in values),  # pylint: disable=protected-access
                       domain[i], failed.get(i, "" if view.valid[i] else "chunk missing")])
  os.replace(tmp, path)


def _write_shard_html(output: Path, view, summary: dict, job: Job) -> None:
  """index.html: the run's numbers, the failures (first 200) and the PNGs that were saved (first 64 inputs)."""
  from idinvert_jax import inversion_shards as shards  # pylint: disable=import-outside-toplevel
  from idinvert_jax import report  # pylint: disable=import-outside-toplevel
  s = job.settings
  m = {k: math.nan if v is None else v for k, v in summary["mean_metrics"].items()}
  text = (f"{summary['num_inverted']} of {summary['num_inputs']} inputs inverted in {summary['num_chunks']} chunks "
          f"of {view.manifest['chunk_size']}; {summary['num_failed']} failed"
          + ("" if summary["complete"] else f"; INCOMPLETE: chunks {summary['missing_chunks']} missing") +
          f". Mean PSNR {m['psnr']:.2f} dB, MSE {m['mse']:.4g}, SSIM {m['ssim']:.4f}. Method {s.method}, "
          f"{s.num_iterations} iterations, lr {s.learning_rate}, precision {s.precision}. Codes: "
          f"{shards.CHUNKS_DIR}/ (idinvert_jax.inversion_shards.open_codes), per-image numbers: "
          f"{folder_lib.METRICS_FILE}.")
  text = "\n\n".join([text, *summary["notes"]] + ([job.domain_note] if job.domain_note else []))
  sections = [report.Section("Summary", text=text)]
  if view.failed:
    sections.append(report.Section(
        f"Failed inputs ({len(view.failed)}, all in {folder_lib.FAILED_FILE})",
        table=(["index", "input", "reason"], [[i, n, r] for i, n, r in view.failed[:200]])))
  images_dir = output / shards.IMAGES_DIR
  if images_dir.is_dir():
    stems = sorted({p.name.rsplit("_", 1)[0] for p in images_dir.glob("*_inv.png")})[:64]
    for stem in stems:
      found = [(f"{shards.IMAGES_DIR}/{stem}_{kind}.png", label) for kind, label in
               (("ori", "original"), ("enc", "encoder"), ("inv", "inverted"))
               if (images_dir / f"{stem}_{kind}.png").exists()]
      sections.append(report.Section(stem, images=found))
  report.write_html(output / folder_lib.INDEX_FILE, "In-domain GAN inversion (sharded)", sections)


def run_sharded_inversion(checkpoint: str | Path, images: Sequence[str | Path], output: str | Path,
                          config: ml_collections.ConfigDict | None = None, overrides: dict[str, Any] | None = None,
                          overwrite: bool = False, progress: bool = True, models=None, crop: str = "none",
                          chunk_size: int | None = None, save_images: str = "none", merge: bool = False,
                          exit_barrier_timeout_s: float = EXIT_BARRIER_TIMEOUT_S) -> ShardedSummary:
  """`invert.py --layout shards`: every process (one, or each host of a pod after jax.distributed.initialize)
  inverts pending chunks of `images` on its own local devices into the shared folder `output`.

  Process 0 plans (manifest, inputs.txt, which chunks are pending) and, once every process has passed the exit
  barrier, checks the chunks and writes the folder-wide files and DONE (see idinvert_jax.inversion_shards).
  `chunk_size` (None: the folder's, or DEFAULT_CHUNK_SIZE for a new one) and `save_images` ('none', 'sample',
  'all') are the layout's; the other arguments are `run_inversion`'s. Every process returns the same summary.
  """
  from idinvert_jax import data  # pylint: disable=import-outside-toplevel
  from idinvert_jax import inversion_shards as shards  # pylint: disable=import-outside-toplevel
  from idinvert_jax.training import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  output = Path(output)
  if output.exists() and not output.is_dir():
    raise InvertJobError(f"{output} is a file, not a folder; give a folder for --output.")
  if save_images not in SAVE_IMAGES:
    raise InvertJobError(f"save_images {save_images!r} is unknown; use one of {list(SAVE_IMAGES)}")
  if chunk_size is not None and chunk_size < 1:
    raise InvertJobError(f"--chunk_size {chunk_size}; use a positive number of images per chunk (default "
                         f"{shards.DEFAULT_CHUNK_SIZE})")
  job = resolve_job(checkpoint, config, overrides, models, crop, devices=jax.local_devices())
  if job.settings.num_results > 1 and save_images == "none":
    job.settings = dataclasses.replace(job.settings, num_results=1)  # Snapshots are only ever PNGs.

  def plan():
    try:
      return plan_shards(job, images, output, chunk_size, overwrite)
    except (ValueError, OSError) as e:
      return {"error": str(e)}
  plan_ = mesh_lib.share_from_process0("idinvert/invert/plan", plan)
  if "error" in plan_:
    raise InvertJobError(plan_["error"])

  manifest = shards.read_manifest(output)
  names = shards.read_names(output, manifest)
  source, _ = data.sources.open_segments(manifest["segments"], job.resolution, _data_config(config, job.models),
                                         names=names)
  num_chunks = len(plan_["pending"])
  if jax.process_index() == 0 and plan_["skipped"]:
    logging.info("%s: %d of %d chunks already done, %d to invert", output, plan_["skipped"],
                 manifest["num_chunks"], num_chunks)
  bar = _progress_bar(progress, num_chunks, f"invert chunks (process {jax.process_index()})")
  done_now = 0
  for chunk in _chunk_order(plan_, "idinvert/invert/claimed"):
    invert_chunk(job, source, manifest, chunk, names, output, save_images)
    done_now += 1
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  # No process leaves before all are done: JAX's own shutdown barrier would time out on the slowest host's share.
  mesh_lib.barrier("idinvert_invert_chunks_done", exit_barrier_timeout_s)

  def finish():
    try:
      return finish_shards(job, output, merge=merge, progress=progress)
    except (ValueError, OSError) as e:
      return {"error": str(e)}
  summary = mesh_lib.share_from_process0("idinvert/invert/summary", finish, timeout_s=exit_barrier_timeout_s)
  if "error" in summary:
    raise InvertJobError(summary["error"])
  failed = [(view_name, reason) for view_name, reason in _read_failed(output)]
  return ShardedSummary(
      output=output, num_inputs=summary["num_inputs"], num_chunks=summary["num_chunks"], chunks_now=done_now,
      chunks_skipped=plan_["skipped"], chunks_redone=plan_["redone"], num_inverted=summary["num_inverted"],
      failed=failed, complete=summary["complete"], mean_metrics=summary["mean_metrics"],
      merged=None if summary["merged"] is None else Path(summary["merged"]), notes=summary["notes"],
      num_outside_domain=summary["num_outside_domain"], domain_note=summary["domain_note"])


def _read_failed(output: Path) -> list[tuple[str, str]]:
  path = output / folder_lib.FAILED_FILE
  if not path.is_file():
    return []
  return [tuple(line.split("\t", 1)) for line in path.read_text(encoding="utf-8").splitlines() if "\t" in line]
