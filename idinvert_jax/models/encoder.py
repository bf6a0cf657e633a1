"""Domain-guided encoder: image [N, res, res, C] in [-1, 1] -> W+ code [N, L, w_dim].

Architecture of the official PyTorch port (idinvert_pytorch `StyleGANEncoderNet`, use_wscale=False, use_bn=True):

  block0             conv3x3 (no bias) -> BN -> LeakyReLU(0.2)                      at full resolution
  block1..block{n-2} avg-pool 2x2, then a residual block:
                       shortcut = conv1x1 (no bias) -> BN -> LReLU   when channels change, else identity
                       main     = [conv3x3 + bias -> BN -> LReLU] x 2, hidden channels = min(in, out)
                       output   = main + shortcut
  block{n-1}         flatten the 4x4 map in NCHW order, dense (no bias, runtime scale 1/sqrt(fan_in)) -> BN
                     -> reshape to [N, L, w_dim]

with n = log2(res) blocks, channels channels_base doubling per block up to channels_max, L = 2 * (log2(res) - 1).
The official convs without weight scaling are plain convolutions (its `conv / scale * scale` cancels), so the
stored kernels are used as they are; only the last dense has a runtime scale.

BatchNorm (eps 1e-5, momentum 0.9, as the official TF training code): `train=True` normalises with the batch's
mean and biased variance (averaged over `axis_name` when the encoder runs under shard_map/pmap, so statistics are
synchronised across devices as in the official sync-BN) and updates the running averages; `train=False` uses the
running ones. The shift (`bias`) is trained. The scale is not trained (the official code freezes it at one) but a
scale stored in a checkpoint is honoured: it lives next to the running statistics in the `batch_stats`
collection as `scale`, so optimisers that see only `params` never touch it.

Variables (n = log2(res)): `params` {block0_conv/kernel, block0_bn/bias, block{1..n-2}/{shortcut_conv (only when
channels change), conv1, conv2}/{kernel HWIO, bias (conv1/conv2 only)}, block{i}/{shortcut_bn, bn1, bn2}/bias,
block{n-1}_dense/kernel [16 * C_last in (c, h, w) order, L * w_dim], block{n-1}_bn/bias}; `batch_stats` holds
{mean, var, scale} under the same BN paths.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from idinvert_jax.models import init as init_lib
from idinvert_jax.models import layers as ops
from idinvert_jax.models.generator import num_wp_layers

# The official encoder accepts these resolutions; it ends at a 4x4 map.
RESOLUTIONS = (8, 16, 32, 64, 128, 256, 512, 1024)
_FINAL_RES = 4

_he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class BatchNorm(nn.Module):
  """BatchNorm over all axes but the last; frozen scale kept in `batch_stats` (see module docstring)."""
  momentum: float = 0.9
  epsilon: float = 1e-5
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    channels = x.shape[-1]
    ones = lambda: jnp.ones((channels,), jnp.float32)
    scale = self.variable("batch_stats", "scale", ones)
    running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((channels,), jnp.float32))
    running_var = self.variable("batch_stats", "var", ones)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    y = x.astype(jnp.float32)  # statistics and normalisation in float32; the output in x's dtype (bfloat16 too)
    if train:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(y, axes)
      if self.axis_name is not None:
        mean = jax.lax.pmean(mean, self.axis_name)
      # Two passes (variance of the centred values) avoid the cancellation of E[x^2] - E[x]^2.
      var = jnp.mean(jnp.square(y - mean), axes)
      if self.axis_name is not None:
        var = jax.lax.pmean(var, self.axis_name)
      if not self.is_initializing():
        running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
        running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
    else:
      mean, var = running_mean.value, running_var.value
    return ((y - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale.value) + bias).astype(x.dtype)


NORMALIZATIONS = ("batch", "none")


class Bias(nn.Module):
  """The BatchNorm's place without normalisation (`normalization='none'`): only its trained shift."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    del train
    return x + self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)


def _norm(normalization: str, axis_name: str | None, name: str) -> nn.Module:
  if normalization == "none":
    return Bias(name=name)
  return BatchNorm(axis_name=axis_name, name=name)


def _conv(features: int, kernel: int, use_bias: bool, name: str) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), use_bias=use_bias,
                 kernel_init=_he_normal, name=name, conv_general_dilated=ops.conv_general_dilated)


class ResBlock(nn.Module):
  """Residual block of the official encoder (see module docstring)."""
  features: int
  bn_axis_name: str | None = None
  normalization: str = "batch"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    in_features = x.shape[-1]
    hidden = min(in_features, self.features)
    norm = lambda name: _norm(self.normalization, self.bn_axis_name, name)
    if in_features != self.features:
      shortcut = _conv(self.features, 1, False, "shortcut_conv")(x)
      shortcut = nn.leaky_relu(norm("shortcut_bn")(shortcut, train), 0.2)
    else:
      shortcut = x
    y = nn.leaky_relu(norm("bn1")(_conv(hidden, 3, True, "conv1")(x), train), 0.2)
    y = nn.leaky_relu(norm("bn2")(_conv(self.features, 3, True, "conv2")(y), train), 0.2)
    return y + shortcut


class ScaledDense(nn.Module):
  """Dense without bias whose weight is multiplied by gain / sqrt(fan_in) at run time (equalised LR)."""
  features: int
  gain: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.normal(1.0), (x.shape[-1], self.features), jnp.float32)
    # Scale the product, not the weight: at 256 px the weight has 117M entries, which XLA does not constant-fold
    # even when the weights are compile-time constants, so `kernel * scale` cost a full extra pass over 470 MB
    # every inversion step (measured 391 ms of a 5.5 s batch-4 step; bench/profile_inversion.py).
    return (x @ kernel) * (self.gain / math.sqrt(x.shape[-1]))


class Encoder(nn.Module):
  """The domain-guided encoder; `__call__(x [N, res, res, C], train) -> wp [N, L, w_dim]`."""
  resolution: int = 256
  w_dim: int = 512
  image_channels: int = 3
  channels_base: int = 64
  channels_max: int = 1024
  bn_axis_name: str | None = None  # set under shard_map/pmap to synchronise BN statistics across devices
  # 'batch' (official) or 'none': every BatchNorm replaced by a bias (an ablation of the encoder study; the
  # variables then have no `batch_stats` collection).
  normalization: str = "batch"

  @property
  def num_layers(self) -> int:
    return num_wp_layers(self.resolution)

  @property
  def num_blocks(self) -> int:
    return int(math.log2(self.resolution))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.resolution not in RESOLUTIONS:
      raise ValueError(f"encoder resolution {self.resolution} is not supported; use one of {RESOLUTIONS}")
    expected = (self.resolution, self.resolution, self.image_channels)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
      raise ValueError(f"encoder input has shape {tuple(x.shape)}; expected [N, {expected[0]}, {expected[1]}, "
                       f"{expected[2]}] (NHWC images in [-1, 1] at config.model.resolution)")
    if self.normalization not in NORMALIZATIONS:
      raise ValueError(f"encoder normalization {self.normalization!r} is unknown; use one of {NORMALIZATIONS}")
    norm = lambda name: _norm(self.normalization, self.bn_axis_name, name)
    features = self.channels_base
    x = _conv(features, 3, False, "block0_conv")(x)
    x = nn.leaky_relu(norm("block0_bn")(x, train), 0.2)
    for block in range(1, self.num_blocks - 1):
      features = min(features * 2, self.channels_max)
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
      x = ResBlock(features, self.bn_axis_name, self.normalization, name=f"block{block}")(x, train)
    assert x.shape[1] == _FINAL_RES, x.shape
    # The official dense reads the 4x4 map flattened in NCHW order; transpose so its weights apply unchanged.
    # The barrier keeps the transpose on these few activations: otherwise XLA moves it onto the 117M-entry
    # weight at 256 px (a 470 MB copy every step, 229 ms of a batch-4 inversion step; profile_inversion.py).
    x = jax.lax.optimization_barrier(jnp.transpose(x, (0, 3, 1, 2))).reshape(x.shape[0], -1)
    last = f"block{self.num_blocks - 1}"
    x = ScaledDense(self.num_layers * self.w_dim, gain=1.0, name=f"{last}_dense")(x)
    x = norm(f"{last}_bn")(x, train)
    return x.reshape(x.shape[0], self.num_layers, self.w_dim)


def _init_impl(E: Encoder, rng: jax.Array) -> dict[str, Any]:
  x = jnp.zeros((1, E.resolution, E.resolution, E.image_channels), jnp.float32)
  return dict(E.init(init_lib.fast_init_key(rng), x, train=False))


# Same fast-compiling init as the generator (rbg key, unoptimised XLA build of a run-once function).
_init = init_lib.jit_init(_init_impl)


def init_encoder(E: Encoder, rng: jax.Array) -> dict[str, Any]:
  """Random variables {'params', 'batch_stats'} for `E` (He-normal convs, N(0, 1) scaled dense, BN identity)."""
  return _init(E, rng)


def encode(E: Encoder, variables: dict[str, Any], x: jax.Array) -> jax.Array:
  """Inference: images [N, res, res, C] in [-1, 1] -> wp [N, L, w_dim], BN with the running statistics."""
  return _jitted_encode(E)(variables, x)


@functools.lru_cache(maxsize=16)
def _jitted_encode(E: Encoder):
  # Modules are frozen dataclasses, hence hashable: one compiled function per architecture.
  return jax.jit(functools.partial(E.apply, train=False))


def count_params(variables: dict[str, Any]) -> int:
  """Number of scalars in a variables tree (any collections)."""
  return sum(int(math.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables))


def build_encoder(model_cfg) -> Encoder:
  """Encoder from `config.model` (resolution, image_channels, generator.w_dim, encoder.channels_*)."""
  resolution = int(model_cfg.resolution)
  if resolution not in RESOLUTIONS:
    raise ValueError(f"config.model.resolution={resolution} is not supported by the encoder; "
                     f"use one of {RESOLUTIONS}")
  return Encoder(resolution=resolution,
                 w_dim=int(model_cfg.generator.w_dim),
                 image_channels=int(model_cfg.get("image_channels", 3)),
                 channels_base=int(model_cfg.encoder.channels_base),
                 channels_max=int(model_cfg.encoder.channels_max),
                 normalization=str(model_cfg.encoder.get("normalization", "batch")))
