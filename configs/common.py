"""Shared config builder: every experiment config starts from `get_config()` and changes a few fields.

Sections (docs/ARCHITECTURE.md): model (generator / discriminator / encoder / perceptual), data, train, invert,
mesh. The model section is built here with the official `styleganinv_ffhq256` architecture as defaults; the
data / train / invert sections take the defaults of the packages that own them, so a new setting added there
appears in every experiment config automatically. Any field can be overridden on the command line with
`--config.<section>.<field>=value`.
"""
import ml_collections


def get_model_config(resolution: int = 256) -> ml_collections.ConfigDict:
  """config.model: the official ffhq256 architecture (StyleGAN-v1 generator, D_basic, encoder, VGG16)."""
  model = ml_collections.ConfigDict()
  model.resolution = resolution
  model.image_channels = 3

  g = model.generator = ml_collections.ConfigDict()
  g.z_dim = 512
  g.w_dim = 512
  g.mapping_layers = 8
  g.mapping_fmaps = 512
  g.mapping_lr_mul = 0.01
  g.fmaps_base = 16384            # channels at resolution r: min(fmaps_base // r, fmaps_max)
  g.fmaps_max = 512
  g.fused_scale = "auto"          # 'auto' = fused (transposed-conv) upsampling at >= fused_scale_min_res
  g.fused_scale_min_res = 128
  g.final_tanh = True
  g.repeat_w = False              # official inversion models: the mapping emits all L codes (W+)
  g.noise_mode = "const"          # 'const' | 'random' | 'none'
  g.truncation_psi = 0.7          # used on the z -> image path only (`generate`); W+ codes are not truncated
  g.truncation_layers = 8

  d = model.discriminator = ml_collections.ConfigDict()
  d.fmaps_base = 16384            # same convention as the generator (TF fmap_base 8192)
  d.fmaps_max = 512
  d.mbstd_group_size = 4
  d.mbstd_num_features = 1
  d.fused_scale = "auto"
  d.fused_scale_min_res = 128

  e = model.encoder = ml_collections.ConfigDict()
  e.channels_base = 64
  e.channels_max = 1024

  p = model.perceptual = ml_collections.ConfigDict()
  p.weights = ""                  # '' = no VGG16 weights given (the perceptual loss terms are then off)
  p.layers = ("conv4_3",)
  return model


def get_mesh_config() -> ml_collections.ConfigDict:
  """config.mesh: one data-parallel axis over all devices."""
  mesh = ml_collections.ConfigDict()
  mesh.axes = ("data",)
  mesh.shape = (-1,)
  return mesh


def get_config(resolution: int = 256) -> ml_collections.ConfigDict:
  """The full experiment config with official defaults everywhere."""
  # Imported here so that reading a config for the model only does not pull in the data/training stacks.
  from idinvert_jax import data, inversion, training  # pylint: disable=import-outside-toplevel

  config = ml_collections.ConfigDict()
  config.model = get_model_config(resolution)
  config.data = data.get_data_config()
  config.train = ml_collections.ConfigDict()
  for stage in training.STAGES:
    config.train[stage] = training.get_train_config(stage)
  config.invert = inversion.get_invert_config("indomain")
  config.mesh = get_mesh_config()
  return config
