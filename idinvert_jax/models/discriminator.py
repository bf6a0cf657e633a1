"""StyleGAN-v1 discriminator (`D_basic` of the official TF training code), fixed structure, NHWC.

images [N, res, res, C] -> logits [N, 1].

  FromRGB_lod0: 1x1 conv to nf(res), bias, lrelu
  for r = res .. 8:  '{r}x{r}'/Conv0: 3x3 conv to nf(r), bias, lrelu
                     blur, '{r}x{r}'/Conv1_down: 3x3 conv + 2x down to nf(r / 2), bias, lrelu
                     (fused `conv2d_downscale2d` at r >= fused_scale_min_res, else conv then 2x2 average pool)
  '4x4': minibatch stddev (+mbstd_num_features channels), Conv: 3x3 to nf(4), bias, lrelu,
         Dense0: nf(2) (input flattened in NCHW order, as TF does), bias, lrelu, Dense1: 1 logit (gain 1), bias.
  nf(r) = min(fmaps_base // r, fmaps_max): the generator's convention; the TF code's fmap_base is half of ours
  (TF ffhq: fmap_base 8192 == fmaps_base 16384 here).

Parameter layout (TF variable name -> here; TF conv weights are [k, k, in, out], dense [in, out]: no transposes):
  D/FromRGB_lod0/{weight, bias}      -> FromRGB_lod0/{kernel, bias}
  D/{r}x{r}/Conv0/{weight, bias}     -> {r}x{r}/Conv0/{kernel, bias}
  D/{r}x{r}/Conv1_down/{weight, bias}-> {r}x{r}/Conv1_down/{kernel, bias}
  D/4x4/{Conv, Dense0, Dense1}/{weight, bias} -> 4x4/{Conv, Dense0, Dense1}/{kernel, bias}
  ignored: D/lod (0 for a fully grown model), D/FromRGB_lod{k > 0} (progressive-growing inputs).
"""
from __future__ import annotations

from typing import Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from idinvert_jax.models import layers
from idinvert_jax.models.generator import check_sizes, num_channels, use_fused_scale
from idinvert_jax.models.init import fast_init_key, jit_init


def minibatch_stddev(x: jax.Array, group_size: int = 4, num_features: int = 1) -> jax.Array:
  """Appends `num_features` channels: the group stddev averaged over pixels and channel groups.

  As the official layer: G = min(group_size, N) must divide N; sample i belongs to group i % (N // G) (the
  batch is reshaped to [G, N // G]); channels split as [num_features, C // num_features].
  """
  n, h, w, c = x.shape
  g = min(group_size, n)
  if n % g:
    raise ValueError(f"Discriminator batch size {n} is not divisible by the minibatch-stddev group size {g}; "
                     f"use a batch that is a multiple of {g} or change model.discriminator.mbstd_group_size.")
  if c % num_features:
    raise ValueError(f"mbstd_num_features={num_features} must divide the 4x4 channel count {c}.")
  y = x.astype(jnp.float32).reshape(g, n // g, h, w, num_features, c // num_features)  # float32 statistics
  y = y - jnp.mean(y, axis=0, keepdims=True)
  y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + 1e-8)        # [M, H, W, n, c]
  y = jnp.mean(y, axis=(1, 2, 4))                              # [M, n]
  y = jnp.tile(y, (g, 1))                                      # [N, n]: sample i gets group i % M
  y = jnp.broadcast_to(y[:, None, None, :], (n, h, w, num_features))
  return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)


class DownBlock(nn.Module):
  """'{r}x{r}': Conv0 (3x3, bias, lrelu), blur, Conv1_down (3x3 + 2x down, bias, lrelu)."""
  channels: int
  out_channels: int
  fused: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = layers.leaky_relu(layers.EqualizedConv(self.channels, name="Conv0")(x))
    x = layers.blur(x)
    return layers.leaky_relu(layers.EqualizedDownConv(self.out_channels, fused=self.fused, name="Conv1_down")(x))


class OutputBlock(nn.Module):
  """'4x4': minibatch stddev, Conv (3x3), Dense0, Dense1 -> 1 logit."""
  channels: int
  dense_channels: int
  mbstd_group_size: int
  mbstd_num_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.mbstd_group_size > 1:
      x = minibatch_stddev(x, self.mbstd_group_size, self.mbstd_num_features)
    x = layers.leaky_relu(layers.EqualizedConv(self.channels, name="Conv")(x))
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # NCHW flatten: TF Dense0 weight rows as is
    x = layers.leaky_relu(layers.EqualizedDense(self.dense_channels, name="Dense0")(x))
    return layers.EqualizedDense(1, gain=1.0, name="Dense1")(x)


class Discriminator(nn.Module):
  """StyleGAN-v1 D_basic; defaults are the official ffhq 256 px training setup."""
  resolution: int = 256
  image_channels: int = 3
  fmaps_base: int = 16384
  fmaps_max: int = 512
  mbstd_group_size: int = 4
  mbstd_num_features: int = 1
  fused_scale: Union[str, bool] = "auto"
  fused_scale_min_res: int = 128

  def __post_init__(self):
    check_sizes("Discriminator", self.resolution, self.fused_scale)
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    expected = (self.resolution, self.resolution, self.image_channels)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
      raise ValueError(f"Discriminator input has shape {tuple(images.shape)}; expected [N, "
                       f"{', '.join(map(str, expected))}] NHWC images.")
    nf = lambda r: num_channels(r, self.fmaps_base, self.fmaps_max)
    x = layers.leaky_relu(layers.EqualizedConv(nf(self.resolution), kernel_size=1, name="FromRGB_lod0")(images))
    res = self.resolution
    while res > 4:
      fused = use_fused_scale(self.fused_scale, res, self.fused_scale_min_res)
      x = DownBlock(nf(res), nf(res // 2), fused, name=f"{res}x{res}")(x)
      res //= 2
    return OutputBlock(nf(4), nf(2), self.mbstd_group_size, self.mbstd_num_features, name="4x4")(x)


def _init_impl(D: Discriminator, rng: jax.Array) -> dict:
  images = jnp.zeros((1, D.resolution, D.resolution, D.image_channels), jnp.float32)
  return {"params": D.init({"params": fast_init_key(rng)}, images)["params"]}


_init = jit_init(_init_impl)


def init_discriminator(D: Discriminator, rng: jax.Array) -> dict:
  """Fresh variables {'params'}: N(0, 1) raw weights (equalised LR), zero biases."""
  return _init(D, rng)
