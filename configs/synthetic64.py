"""64 px model for the synthetic-faces demo: the official architecture scaled down (w_dim 256, <= 256 channels).

Trains the GAN and then the encoder on the embedded procedural faces (no download), then inverts held-out
faces:
  python train.py --config configs/synthetic64.py --workdir runs/synthetic64
  python invert.py --checkpoint runs/synthetic64 --images held_out_faces/ --output out_synthetic64
produces runs/synthetic64/export (generator, encoder, discriminator), metrics.jsonl and sample grids, and
out_synthetic64/ with reconstructions, W+ codes and an HTML summary.
"""
from configs import common


def get_config():
  config = common.get_config(resolution=64)
  # 4..32 px: 256 channels, 64 px: 128 channels.
  common.set_widths(config, w_dim=256, mapping_layers=8, fmaps_base=8192, fmaps_max=256, encoder_channels=(32, 256))
  return config
