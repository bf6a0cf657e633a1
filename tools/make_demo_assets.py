r"""Makes the demo's shipped assets.

  python tools/make_demo_assets.py examples
      renders assets/examples/*.png: synthetic faces of seed 12345 (training uses seed 0), 64 px, and writes
      assets/examples/README.md with every image's attribute labels.
  python tools/make_demo_assets.py boundaries --checkpoint assets/demo_checkpoint
      trains the synthetic-faces attribute predictor, samples W+ codes from the checkpoint's generator, scores
      the generated images and fits InterFaceGAN boundaries (default: eyeglasses, hair_color; --attributes)
      into <checkpoint>/boundaries/. An attribute the predictor does not learn (held-out R^2 < 0.5, or accuracy
      less than 0.1 above chance) gets no boundary: the tool stops and says so instead of writing a random one.
  python tools/make_demo_assets.py domain --checkpoint assets/demo_checkpoint
      calibrates the out-of-domain check (idinvert_jax.domain) on 64 held-out synthetic faces (indices from
      1,000,000 of the training seed, never used in training): the 5th percentile of their PSNR after the
      checkpoint's in-domain inversion (100 steps) and of the encoder alone -> <checkpoint>/domain.json (~700 bytes).

All write atomically and print what they wrote; rerunning gives the same files (domain.json: the same thresholds
up to float rounding of the optimisation).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from idinvert_jax import files  # noqa: E402
from idinvert_jax.data import synthetic_faces  # noqa: E402

# A seed the training configs never use (their data.synthetic_seed is 0), so the examples are held out.
EXAMPLES_SEED = 12345
EXAMPLES_RESOLUTION = 64
# Faces 0..5 of seed 12345: they happen to include two with eyeglasses, smiles and frowns, so every demo edit
# has something to act on.
EXAMPLES_INDICES = tuple(range(6))
# The mouth is a few pixels at 64 px: with the default predictor budget smile scored R^2 -0.03 on held-out faces
# (measured for the shipped demo model), so the demo edits eyeglasses and hair colour, which it learns well.
BOUNDARY_ATTRIBUTES = ("eyeglasses", "hair_color")
MIN_PREDICTOR_R2 = 0.5
# Out-of-domain calibration of the demo model: 64 held-out faces, 5th percentile (about 1 in 20 flagged).
DOMAIN_IMAGES = 64
DOMAIN_PERCENTILE = 5.0
MIN_ACCURACY_OVER_CHANCE = 0.1


def example_name(index: int) -> str:
  return f"face_{EXAMPLES_SEED}_{index:03d}.png"


def make_examples(output: Path, indices=EXAMPLES_INDICES, seed: int = EXAMPLES_SEED,
                  resolution: int = EXAMPLES_RESOLUTION) -> list[Path]:
  """Renders the example faces as PNGs plus a README.md table of their labels; returns the PNG paths."""
  paths, rows = [], []
  names = list(synthetic_faces.ATTRIBUTES)
  for index in indices:
    image, labels = synthetic_faces.render_one(index, resolution, seed)
    paths.append(files.atomic_save_png(output / example_name(index), image))
    rows.append(f"| {example_name(index)} | {index} | " + " | ".join(f"{labels[n]:.2f}" for n in names) + " |")
  readme = f"""# Example images for the demo

Synthetic faces from the project's procedural renderer (`idinvert_jax/data/synthetic_faces.py`), rendered by

    python tools/make_demo_assets.py examples

which calls `synthetic_faces.render_one(index, {resolution}, seed={seed})` for the indices
{', '.join(map(str, indices))} and saves each image as an 8-bit RGB PNG ({resolution} x {resolution} px).
Seed {seed} is held out: the training configs render their faces from `config.data.synthetic_seed = 0`, so
none of these faces were seen in training (the renderer draws every face from its own (seed, index) pair).
The demo (`python -m idinvert_jax.demo`) inverts every PNG in this folder.

Ground-truth labels (see the attribute table in `synthetic_faces.py`):

| file | index | {' | '.join(names)} |
|---|---|{'---|' * len(names)}
""" + "\n".join(rows) + "\n"
  files.atomic_write_text(output / "README.md", readme)
  return paths


def predictor_is_usable(quality: dict) -> bool:
  """Whether a predictor's held-out quality (attributes.train_attribute_classifier's report) is worth a boundary."""
  if quality["metric"] == "r2":
    return quality["value"] >= MIN_PREDICTOR_R2
  return quality["value"] >= quality.get("chance", 0.5) + MIN_ACCURACY_OVER_CHANCE


def make_boundaries(checkpoint: Path, num_samples: int, classifier_images: int, classifier_steps: int,
                    seed: int, batch_size: int = 64, attributes_to_edit=BOUNDARY_ATTRIBUTES) -> list[Path]:
  """Fits boundaries for `attributes_to_edit` from predictor-scored generator samples of a checkpoint."""
  from idinvert_jax import export
  from idinvert_jax.editing import boundaries
  from idinvert_jax.metrics import attributes
  from idinvert_jax.models import generator as generator_lib

  models = export.load_models(checkpoint, names=("generator",))
  resolution = int(models.config.model.resolution)
  module, variables, report = attributes.train_attribute_classifier(
      resolution, classifier_images, classifier_steps, seed=seed + 1,
      attributes=tuple(attributes_to_edit))
  print(f"attribute predictor: {report['attributes']}")
  weak = [name for name in attributes_to_edit if not predictor_is_usable(report["attributes"][name])]
  if weak:
    raise SystemExit(f"make_demo_assets: the attribute predictor did not learn {weak} ({report['attributes']}); "
                     f"a boundary fitted to its scores would be noise. Raise --classifier_steps / "
                     f"--classifier_images or pick other --attributes.")
  G, G_vars = models.generator, models.generator_vars
  codes = generator_lib.sample_codes(G, G_vars, num_samples, seed, batch_size=batch_size)
  images = generator_lib.render(G, G_vars, codes, batch_size)
  scores = attributes.predict_attributes(module, variables, images)
  written = []
  for name in attributes_to_edit:
    boundary = boundaries.train_boundary(codes, scores[name], ratio=0.1, seed=seed, attribute=name)
    boundary.meta.update(codes=f"sampled: {num_samples} codes, seed {seed}",
                         scored_by="idinvert_jax.metrics.attributes predictor", predictor=report["attributes"][name])
    written.append(boundaries.save_boundary(Path(checkpoint) / "boundaries" / f"{name}.npz", boundary))
    print(f"{written[-1]}: validation accuracy {boundary.accuracy:.3f}")
  return written


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("examples", help="Render assets/examples/*.png and its README.md.")
  p.add_argument("--output", default=str(REPO / "assets" / "examples"), help="Folder for the PNGs.")
  p = sub.add_parser("boundaries", help="Train attribute boundaries into <checkpoint>/boundaries/.")
  p.add_argument("--checkpoint", default=str(REPO / "assets" / "demo_checkpoint"), help="Model checkpoint.")
  p.add_argument("--num_samples", type=int, default=10000, help="Generator samples scored by the predictor.")
  p.add_argument("--classifier_images", type=int, default=4000, help="Faces the predictor is trained on.")
  p.add_argument("--classifier_steps", type=int, default=1500, help="Predictor training steps.")
  p.add_argument("--seed", type=int, default=0, help="Seed of the sampling and the predictor.")
  p.add_argument("--attributes", default=",".join(BOUNDARY_ATTRIBUTES),
                 help="Comma-separated synthetic-face attributes to fit boundaries for (see synthetic_faces.py).")
  p = sub.add_parser("domain", help="Calibrate the out-of-domain check into <checkpoint>/domain.json.")
  p.add_argument("--checkpoint", default=str(REPO / "assets" / "demo_checkpoint"), help="Model checkpoint.")
  p.add_argument("--num_images", type=int, default=DOMAIN_IMAGES, help="Held-out synthetic faces.")
  p.add_argument("--percentile", type=float, default=DOMAIN_PERCENTILE, help="PSNR percentile used as threshold.")
  args = parser.parse_args(argv)
  if args.command == "domain":
    from idinvert_jax import domain
    calibration, path = domain.calibrate_checkpoint(args.checkpoint, [f"synthetic:{args.num_images}"],
                                                    args.percentile)
    print(f"{path}: {calibration.thresholds} ({calibration.describe()})")
  elif args.command == "examples":
    for path in make_examples(Path(args.output)):
      print(path)
  else:
    make_boundaries(Path(args.checkpoint), args.num_samples, args.classifier_images, args.classifier_steps,
                    args.seed, attributes_to_edit=[a.strip() for a in args.attributes.split(",") if a.strip()])
  return 0


if __name__ == "__main__":
  sys.exit(main())
