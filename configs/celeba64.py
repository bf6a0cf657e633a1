"""The demo model's architecture (configs/demo64.py) trained on real faces: 64 px CelebA crops.

Research-only data that is never committed (nor any model trained on it): `../shared/data/celeba_crops64_train.npz`
(5,023 uint8 face crops; see ../shared/README.md). Images 0..4922 train; the last 100 are held out for evaluation:

  python train.py --config configs/celeba64.py --workdir runs/celeba64
  python -m idinvert_jax.data export --path ../shared/data/celeba_crops64_train.npz --subset 4923: \
      --output runs/celeba64_heldout
  python evaluate.py --checkpoint runs/celeba64 --images runs/celeba64_heldout --output reports/celeba64

The README's real-photo table and picture come from these commands (with the training length used there).
"""
from configs import demo64


def get_config():
  config = demo64.get_config()
  config.data.source = "array"
  config.data.path = "../shared/data/celeba_crops64_train.npz"
  config.data.npz_key = "images"
  config.data.subset = ":4923"
  config.data.resize = "resize"  # The crops are already square 64 px.
  return config
