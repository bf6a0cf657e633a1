"""The shipped demo checkpoint (assets/demo_checkpoint, trained by configs/demo64.py): loads, matches its config, is
small, ships real boundaries (eyeglasses, hair colour), and inverts the held-out example faces recognisably."""
import json
import sys
from pathlib import Path

import jax
import numpy as np

from idinvert_jax import demo, export, inversion
from idinvert_jax.data import load_images
from idinvert_jax.editing import boundaries
from idinvert_jax.metrics import reconstruction

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from configs import demo64  # noqa: E402  pylint: disable=wrong-import-position

MAX_CHECKPOINT_BYTES = 25 * 2**20     # the limit for a committed demo checkpoint
MIN_ENCODER_PSNR_DB = 20.0            # E(x) alone (measured 22.8-27.9 dB on the six examples)
MIN_INDOMAIN_PSNR_DB = 23.0           # after 100 in-domain steps (measured 24.4-29.8 dB)
ITERATIONS = 100


def _checkpoint_bytes(path: Path) -> int:
  return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_the_shipped_checkpoint_is_the_demo64_architecture_and_small():
  path = demo.DEFAULT_CHECKPOINT
  assert path.is_dir(), f"{path} is missing: see configs/demo64.py for the commands that make it"
  stored = json.loads((path / "config.json").read_text())
  # Read as the loader reads it (checkpoints written before encoder.normalization existed lack the key).
  assert export.with_later_model_keys(stored["model"]) == json.loads(demo64.get_config().model.to_json())
  assert _checkpoint_bytes(path) < MAX_CHECKPOINT_BYTES


def test_the_shipped_boundaries_are_trained_eyeglasses_and_hair_color():
  found = demo.find_boundaries(demo.DEFAULT_CHECKPOINT)
  loaded = {b.attribute: b for b in map(boundaries.load_boundary, found)}
  assert set(loaded) == {"eyeglasses", "hair_color"}
  for boundary in loaded.values():
    assert boundary.accuracy is not None and boundary.accuracy > 0.7  # validation accuracy of the linear SVM


def test_the_shipped_model_inverts_the_held_out_examples_recognisably():
  models = export.load_models(demo.DEFAULT_CHECKPOINT)
  paths = sorted(demo.DEFAULT_IMAGES.glob("*.png"))
  _, images, failures = load_images(paths, int(models.config.model.resolution))
  assert not failures and len(images) == len(paths) == 6
  config = inversion.get_invert_config()
  config.num_iterations, config.num_results = ITERATIONS, 0
  result = inversion.invert(images, models, config, progress=False, devices=jax.devices()[:1])
  enc_psnr = np.asarray(reconstruction.psnr(images, result.encoder_reconstructions))
  inv_psnr = np.asarray(reconstruction.psnr(images, result.reconstructions))
  assert enc_psnr.min() > MIN_ENCODER_PSNR_DB, enc_psnr
  assert inv_psnr.min() > MIN_INDOMAIN_PSNR_DB, inv_psnr
  assert np.all(inv_psnr > enc_psnr)  # the optimisation improves on the encoder for every face
