"""Shared config builders: every experiment starts from the reference config (configs/ffhq256.py, the official
models and settings, each field explained there) and changes a few fields.

Any field can be overridden on the command line with `--config.<section>.<field>=value`.
"""
import ml_collections

from configs import ffhq256


def get_model_config(resolution: int = 256) -> ml_collections.ConfigDict:
  """config.model: the official ffhq256 architecture at `resolution`."""
  model = ffhq256.get_model_config()
  model.resolution = resolution
  return model


def get_config(resolution: int = 256) -> ml_collections.ConfigDict:
  """The full reference config (official settings everywhere) at `resolution`."""
  config = ffhq256.get_config()
  config.model.resolution = resolution
  return config


def set_widths(config: ml_collections.ConfigDict, *, w_dim: int, mapping_layers: int, fmaps_base: int,
               fmaps_max: int, encoder_channels: tuple[int, int]) -> ml_collections.ConfigDict:
  """The official architecture, slimmer: z = w = mapping width = `w_dim`; G and D both with
  min(fmaps_base // res, fmaps_max) channels; encoder channels (base, max)."""
  g = config.model.generator
  g.z_dim = g.w_dim = g.mapping_fmaps = w_dim
  g.mapping_layers = mapping_layers
  for net in (g, config.model.discriminator):
    net.fmaps_base, net.fmaps_max = fmaps_base, fmaps_max
  config.model.encoder.channels_base, config.model.encoder.channels_max = encoder_channels
  return config


def set_train(config: ml_collections.ConfigDict, **values) -> ml_collections.ConfigDict:
  """Sets the same config.train fields for every stage (GAN and encoder)."""
  for stage in config.train.keys():
    config.train[stage].update(values)
  return config
