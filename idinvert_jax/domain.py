r"""Out-of-domain check: flags an image whose reconstruction after inversion stays poorer than the model's own data.

  python -m idinvert_jax.domain --checkpoint CKPT --images synthetic:64            # held-out synthetic faces
  python -m idinvert_jax.domain --checkpoint CKPT --images heldout_faces/ --percentile 5

A model reconstructs what it was trained on well and anything else (a real photo shown to a synthetic-faces
model, a cat shown to a face model) poorly; the codes of such an image do not mean what the edits assume. The
check compares an image's PSNR after inversion with a threshold calibrated on the model's own held-out data:
the `--percentile`-th percentile (default 5: about 1 in 20 held-out images would be flagged) of their PSNR after
the same inversion (the checkpoint's `config.invert`, official: 100 in-domain steps), and separately of the
encoder's reconstruction E(x) alone (used by `--method encoder`).

The calibration is stored in the checkpoint as `domain.json` (a few hundred bytes: thresholds, percentile, the
images and settings it came from, the PSNR range, and the command that recomputes it); invert.py, its HTML
report, the demo and the app read it. A checkpoint without the file gets no verdict (and says so once). For the
shipped demo model it is recomputed by `python tools/make_demo_assets.py domain`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

CALIBRATION_FILE = "domain.json"
DEFAULT_PERCENTILE = 5.0
CALIBRATED_METHODS = ("indomain", "encoder")


class DomainError(ValueError):
  """A calibration file that cannot be used, or bad calibration inputs."""


@dataclasses.dataclass(frozen=True)
class Calibration:
  """PSNR thresholds (dB) per inversion method, and where they came from."""
  thresholds: dict            # method -> dB
  percentile: float
  num_images: int
  images: str                 # what the held-out images were
  settings: dict              # the inversion settings used (method, num_iterations, ...)
  psnr_range: dict            # method -> {"min", "median", "max"}
  command: str

  def threshold(self, method: str) -> float | None:
    """The threshold for an inversion method ('optimize' shares the in-domain one: same objective family)."""
    return self.thresholds.get("indomain" if method == "optimize" else method)

  def is_outside(self, psnr: float, method: str) -> bool | None:
    """True when `psnr` is below the method's threshold; None when there is none."""
    threshold = self.threshold(method)
    if threshold is None or np.isnan(psnr):
      return None
    return bool(psnr < threshold)  # An exact copy (+inf dB) is inside.

  def describe(self) -> str:
    """One sentence for reports: what the threshold is and how it was computed."""
    parts = [f"{method} {value:.2f} dB" for method, value in self.thresholds.items()]
    steps = self.settings.get("num_iterations")
    return (f"Out-of-domain check: an image whose PSNR after inversion is below the {self.percentile:g}th "
            f"percentile of {self.num_images} held-out images of the model's own data ({self.images}; "
            f"{', '.join(parts)}" + (f"; inversion with {steps} steps" if steps else "") + ") is flagged as "
            "outside the model's domain.")

  def warning(self, name: str, psnr: float, method: str) -> str:
    threshold = self.threshold(method)
    return (f"{name}: outside the model's domain (PSNR {psnr:.1f} dB < {threshold:.1f} dB, the "
            f"{self.percentile:g}th percentile of its held-out images): its code and edits are unreliable")

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def calibration_path(checkpoint: str | Path) -> Path:
  from idinvert_jax import checkpoint as ckpt  # pylint: disable=import-outside-toplevel
  return ckpt.find_checkpoint_dir(checkpoint) / CALIBRATION_FILE


def load(checkpoint: str | Path) -> Calibration | None:
  """The checkpoint's calibration, or None when it has none. A malformed file is a one-line DomainError."""
  path = calibration_path(checkpoint)
  if not path.is_file():
    return None
  fix = f"recompute it with `python -m idinvert_jax.domain --checkpoint {path.parent} --images ...` or delete it"
  try:
    record = json.loads(path.read_text())
    calibration = Calibration(
        thresholds={str(k): float(v) for k, v in record["thresholds"].items()},
        percentile=float(record["percentile"]), num_images=int(record["num_images"]), images=str(record["images"]),
        settings=dict(record.get("settings", {})), psnr_range=dict(record.get("psnr_range", {})),
        command=str(record.get("command", "")))
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise DomainError(f"{path}: not a domain calibration ({type(e).__name__}: {e}); {fix}") from None
  if not calibration.thresholds or not all(np.isfinite(v) for v in calibration.thresholds.values()):
    raise DomainError(f"{path}: no finite thresholds; {fix}")
  return calibration


def verdicts(calibration: Calibration | None, psnr: Sequence[float], method: str) -> list[bool | None]:
  """Per image: True = outside the domain, False = inside, None = no calibration for this method."""
  if calibration is None:
    return [None] * len(psnr)
  return [calibration.is_outside(float(p), method) for p in psnr]


# ----------------------------------------------------------------------------------------------------------
# Calibration.


def calibrate(models, images: np.ndarray, settings, percentile: float = DEFAULT_PERCENTILE,
              description: str = "", command: str = "", progress: bool = True) -> Calibration:
  """Inverts held-out `images` [N, R, R, 3] in [-1, 1] and returns thresholds at their PSNR `percentile`."""
  from idinvert_jax import inversion  # pylint: disable=import-outside-toplevel
  from idinvert_jax.metrics import reconstruction  # pylint: disable=import-outside-toplevel
  if not 0 < percentile < 50:
    raise DomainError(f"domain: --percentile {percentile}; use a low percentile between 0 and 50 (e.g. 5).")
  if images.shape[0] < 8:
    raise DomainError(f"domain: {images.shape[0]} held-out images; a percentile needs at least 8 (64 or more is "
                      "better).")
  result = inversion.invert(images, models, settings, progress=progress)
  psnr = {settings.method: np.asarray(reconstruction.psnr(images, result.reconstructions), np.float64)}
  if result.encoder_reconstructions is not None and settings.method != "encoder":
    psnr["encoder"] = np.asarray(reconstruction.psnr(images, result.encoder_reconstructions), np.float64)
  thresholds = {m: round(float(np.percentile(v, percentile)), 3) for m, v in psnr.items()}
  ranges = {m: {"min": round(float(v.min()), 3), "median": round(float(np.median(v)), 3),
                "max": round(float(v.max()), 3)} for m, v in psnr.items()}
  keep = ("method", "num_iterations", "learning_rate", "loss_weight_pix", "loss_weight_feat", "loss_weight_enc",
          "init", "precision")
  recorded = {k: settings[k] for k in keep if k in settings}
  recorded["perceptual_term"] = getattr(models, "perceptual_vars", None) is not None  # Off without VGG16 weights.
  return Calibration(thresholds=thresholds, percentile=float(percentile), num_images=int(images.shape[0]),
                     images=description, settings=recorded,
                     psnr_range=ranges, command=command)


def save(checkpoint: str | Path, calibration: Calibration, output: str | Path | None = None) -> Path:
  from idinvert_jax import files  # pylint: disable=import-outside-toplevel
  path = Path(output) if output else calibration_path(checkpoint)
  return files.atomic_write_json(path, calibration.to_json())


def calibrate_checkpoint(checkpoint: str | Path, images: Sequence[str], percentile: float = DEFAULT_PERCENTILE,
                         num_iterations: int | None = None, output: str | Path | None = None,
                         progress: bool = True) -> tuple[Calibration, Path]:
  """Loads a checkpoint, calibrates on `images` (paths or `synthetic:N`) and writes its domain.json."""
  from idinvert_jax import evaluate, invert_cli  # pylint: disable=import-outside-toplevel
  models = invert_cli.load_job_models(checkpoint)
  resolution = int(models.config.model.resolution)
  seed = int(models.config.get("data", {}).get("synthetic_seed", 0))
  array, names, _ = evaluate.load_eval_images(list(images), resolution, synthetic_seed=seed)
  settings = invert_cli.invert_settings(models.config, {"num_iterations": num_iterations})
  if settings.method not in CALIBRATED_METHODS:
    settings = invert_cli.invert_settings(models.config, {"method": "indomain", "num_iterations": num_iterations})
  if len(images) == 1 and str(images[0]).startswith(evaluate.SYNTHETIC_PREFIX):
    description = (f"synthetic faces {names[0].split('_')[-1]}-{names[-1].split('_')[-1]} of seed {seed}, "
                   "never used in training")
  else:
    description = ", ".join(str(p) for p in images)
  shown = os.path.relpath(checkpoint)  # Portable in the JSON when the checkpoint sits below the working folder.
  shown = shown if not shown.startswith("..") else str(checkpoint)
  command = " ".join(["python -m idinvert_jax.domain", "--checkpoint", shown, "--images",
                      *map(str, images), "--percentile", f"{percentile:g}"]
                     + ([] if num_iterations is None else ["--num_iterations", str(num_iterations)]))
  calibration = calibrate(models, array, settings, percentile, description, command, progress)
  return calibration, save(checkpoint, calibration, output)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m idinvert_jax.domain", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True, help="Model checkpoint folder; domain.json is written into it.")
  parser.add_argument("--images", nargs="+", required=True,
                      help="Held-out images of the model's own data: files, folders, .txt lists, or synthetic:N "
                           "(N held-out synthetic faces, for models trained on them).")
  parser.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE,
                      help=f"PSNR percentile of the held-out images used as threshold (default "
                           f"{DEFAULT_PERCENTILE:g}: ~1 in 20 of the model's own images is flagged).")
  parser.add_argument("--num_iterations", type=int, default=None,
                      help="In-domain steps (default: the checkpoint's config.invert, official 100). Use what "
                           "invert.py will use: fewer steps give lower PSNR.")
  parser.add_argument("--output", default=None, help="Write the JSON here instead of <checkpoint>/domain.json.")
  parser.add_argument("--no_progress", action="store_true", help="No progress bar.")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  start = time.perf_counter()
  try:
    calibration, path = calibrate_checkpoint(args.checkpoint, args.images, args.percentile, args.num_iterations,
                                             args.output, progress=not args.no_progress)
  except (ValueError, FileNotFoundError) as e:  # User-fixable: one line, no traceback.
    raise SystemExit(f"domain: error: {e}") from None
  for method, value in calibration.thresholds.items():
    r = calibration.psnr_range[method]
    print(f"{method}: threshold {value:.2f} dB ({calibration.percentile:g}th percentile of {calibration.num_images} "
          f"images; PSNR min {r['min']:.2f}, median {r['median']:.2f}, max {r['max']:.2f} dB)")
  print(f"wrote {path} ({time.perf_counter() - start:.0f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
