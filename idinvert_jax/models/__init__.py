"""Models: StyleGAN-v1 generator and discriminator, domain-guided encoder, VGG16 perceptual features.

`build_generator` / `build_discriminator` / `build_encoder` / `build_perceptual` (each taking `config.model`) turn the `model` section of an experiment
config (see docs/ARCHITECTURE.md) into linen modules.
"""
from idinvert_jax.models.discriminator import Discriminator, init_discriminator
from idinvert_jax.models.generator import (Generator, generate, init_generator, mapping, synthesize,
                                           truncate)


def _fused(value):
  # ConfigDicts coming back from JSON may carry 'true'/'false' strings; the module validates the rest.
  return {"true": True, "false": False}.get(value, value) if isinstance(value, str) else value


def build_generator(model_cfg) -> Generator:
  """Generator from `config.model` (fields resolution, image_channels, generator.*)."""
  g = model_cfg.generator
  return Generator(
      resolution=int(model_cfg.resolution), image_channels=int(model_cfg.image_channels),
      z_dim=int(g.z_dim), w_dim=int(g.w_dim), mapping_layers=int(g.mapping_layers),
      mapping_fmaps=int(g.mapping_fmaps), mapping_lr_mul=float(g.mapping_lr_mul),
      fmaps_base=int(g.fmaps_base), fmaps_max=int(g.fmaps_max), fused_scale=_fused(g.fused_scale),
      fused_scale_min_res=int(g.fused_scale_min_res), final_tanh=bool(g.final_tanh), repeat_w=bool(g.repeat_w),
      noise_mode=str(g.noise_mode),
      truncation_psi=None if g.truncation_psi is None else float(g.truncation_psi),
      truncation_layers=None if g.truncation_layers is None else int(g.truncation_layers))


def build_discriminator(model_cfg) -> Discriminator:
  """Discriminator from `config.model` (fields resolution, image_channels, discriminator.*)."""
  d = model_cfg.discriminator
  return Discriminator(
      resolution=int(model_cfg.resolution), image_channels=int(model_cfg.image_channels),
      fmaps_base=int(d.fmaps_base), fmaps_max=int(d.fmaps_max), mbstd_group_size=int(d.mbstd_group_size),
      mbstd_num_features=int(d.mbstd_num_features), fused_scale=_fused(d.fused_scale),
      fused_scale_min_res=int(d.fused_scale_min_res))


def build_encoder(model_cfg):
  """Encoder from `config.model` (see idinvert_jax.models.encoder.build_encoder)."""
  from idinvert_jax.models import encoder  # pylint: disable=import-outside-toplevel
  return encoder.build_encoder(model_cfg)


def build_perceptual(model_cfg):
  """VGG16 perceptual features from `config.model` (see idinvert_jax.models.vgg16.build_perceptual)."""
  from idinvert_jax.models import vgg16  # pylint: disable=import-outside-toplevel
  return vgg16.build_perceptual(model_cfg)


__all__ = [
    "Generator", "init_generator", "mapping", "truncate", "synthesize", "generate", "build_generator",
    "Discriminator", "init_discriminator", "build_discriminator", "build_encoder", "build_perceptual",
]
