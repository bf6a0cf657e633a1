r"""Calibrates the out-of-domain check, which flags an image whose reconstruction stays poorer than the model's data.

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
report, the demo and the app read it (`idinvert_jax.domain_check`, which holds the file's format and the
verdicts; this module is the calibration job and its command line). A checkpoint without the file gets no
verdict (and says so once). For the shipped demo model it is recomputed by
`python tools/make_demo_assets.py domain`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from idinvert_jax import domain_check, evaluate, inversion, invert_job


def calibrate_checkpoint(checkpoint: str | Path, images: Sequence[str],
                         percentile: float = domain_check.DEFAULT_PERCENTILE, num_iterations: int | None = None,
                         output: str | Path | None = None, progress: bool = True
                         ) -> tuple[domain_check.Calibration, Path]:
  """Loads a checkpoint, calibrates on `images` (paths or `synthetic:N`) and writes its domain.json."""
  models = invert_job.load_job_models(checkpoint)
  resolution = int(models.config.model.resolution)
  seed = int(models.config.get("data", {}).get("synthetic_seed", 0))
  array, names, _ = evaluate.load_eval_images(list(images), resolution, synthetic_seed=seed)
  settings = inversion.InvertSettings.from_config(models.config, num_iterations=num_iterations)
  if settings.method not in domain_check.CALIBRATED_METHODS:
    settings = inversion.InvertSettings.from_config(models.config, method="indomain", num_iterations=num_iterations)
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
  calibration = domain_check.calibrate(models, array, settings, percentile, description, command, progress)
  return calibration, domain_check.save(checkpoint, calibration, output)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m idinvert_jax.domain", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True, help="Model checkpoint folder; domain.json is written into it.")
  parser.add_argument("--images", nargs="+", required=True,
                      help="Held-out images of the model's own data: files, folders, .txt lists, or synthetic:N "
                           "(N held-out synthetic faces, for models trained on them).")
  parser.add_argument("--percentile", type=float, default=domain_check.DEFAULT_PERCENTILE,
                      help=f"PSNR percentile of the held-out images used as threshold (default "
                           f"{domain_check.DEFAULT_PERCENTILE:g}: ~1 in 20 of the model's own images is flagged).")
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
