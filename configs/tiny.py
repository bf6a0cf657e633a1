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
  g = config.model.generator
  g.z_dim = g.w_dim = 32
  g.mapping_layers = 2
  g.mapping_fmaps = 32
  g.fmaps_base = 512          # 4..16 px: 32 channels, 32 px: 16 channels
  g.fmaps_max = 32
  d = config.model.discriminator
  d.fmaps_base = 512
  d.fmaps_max = 32
  e = config.model.encoder
  e.channels_base = 8
  e.channels_max = 32

  for stage in config.train.keys():
    t = config.train[stage]
    t.batch_size = 8          # one example per simulated test device
    t.num_steps = 4
    t.checkpoint_every = 2
    t.log_every = 1
    t.sample_every = 0
  config.data.synthetic_num = 64
  config.invert.num_iterations = 5
  config.invert.batch_size = 8
  return config
