"""Tiny model used by every test of the project: 32 px, <= 32 channels, z = w = 32, 2 mapping layers.

Builds and initialises in seconds on a CPU; the numbers it produces mean nothing. Smoke run of the whole
pipeline on the embedded synthetic faces (a few steps of each stage, then an inversion):
  python train.py --config configs/tiny.py --workdir /tmp/tiny
  python invert.py --checkpoint /tmp/tiny --images some_faces/ --output /tmp/tiny_out
produces /tmp/tiny/export (a loadable checkpoint) and /tmp/tiny_out with reconstructions and W+ codes.
"""
from configs import common


def get_config():
  config = common.get_config(resolution=32)
  # 4..16 px: 32 channels, 32 px: 16 channels.
  common.set_widths(config, w_dim=32, mapping_layers=2, fmaps_base=512, fmaps_max=32, encoder_channels=(8, 32))
  # batch 8: one example per simulated test device.
  common.set_train(config, batch_size=8, num_steps=4, checkpoint_every=2, log_every=1, sample_every=0)
  config.data.synthetic_num = 64
  config.invert.num_iterations = 5
  config.invert.batch_size = 8
  return config
