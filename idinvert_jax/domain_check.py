"""The out-of-domain check: a checkpoint's calibration (domain.json) and the per-image verdicts it gives.

A model reconstructs what it was trained on well and anything else (a real photo shown to a synthetic-faces
model, a cat shown to a face model) poorly; the codes of such an image do not mean what the edits assume. The
check compares an image's PSNR after inversion with a threshold calibrated on the model's own held-out data:
a low percentile (default 5: about 1 in 20 held-out images would be flagged) of their PSNR after the same
inversion (the checkpoint's `config.invert`, official: 100 in-domain steps), and separately of the encoder's
reconstruction E(x) alone (used by `--method encoder`).

The calibration is stored in the checkpoint as `domain.json` (a few hundred bytes: thresholds, percentile, the
images and settings it came from, the PSNR range, and the command that recomputes it); the inversion job
(invert.py), its HTML report, the demo and the app read it with `load`. A checkpoint without the file gets no
verdict (and says so once). `python -m idinvert_jax.domain` (idinvert_jax/domain.py) computes the file.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from idinvert_jax import inversion

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
  from idinvert_jax import export  # pylint: disable=import-outside-toplevel
  return export.find_checkpoint_dir(checkpoint) / CALIBRATION_FILE


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


def calibrate(models, images: np.ndarray, settings: inversion.InvertSettings, percentile: float = DEFAULT_PERCENTILE,
              description: str = "", command: str = "", progress: bool = True) -> Calibration:
  """Inverts held-out `images` [N, R, R, 3] in [-1, 1] (`models`: an `export.Models` bundle) and returns
  thresholds at their PSNR `percentile`."""
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
  recorded = {k: getattr(settings, k) for k in keep}
  recorded["perceptual_term"] = getattr(models, "perceptual_vars", None) is not None  # Off without VGG16 weights.
  return Calibration(thresholds=thresholds, percentile=float(percentile), num_images=int(images.shape[0]),
                     images=description, settings=recorded,
                     psnr_range=ranges, command=command)


def save(checkpoint: str | Path, calibration: Calibration, output: str | Path | None = None) -> Path:
  from idinvert_jax import files  # pylint: disable=import-outside-toplevel
  path = Path(output) if output else calibration_path(checkpoint)
  return files.atomic_write_json(path, calibration.to_json())
