"""StyleGAN-v1 building blocks (NHWC, float32) shared by the generator and the discriminator.

Equalised learning rate: every weight is stored raw (exactly the value the official TF/PyTorch files hold, only
transposed to JAX layouts) and multiplied at run time by `gain / sqrt(fan_in) * lr_mul`; biases by `lr_mul`.
Initialisation follows the official TF code (`get_weight` with `use_wscale=True`): weights ~ N(0, 1 / lr_mul),
biases zero, so training from scratch behaves like the original.

Layouts (all converters rely on these):
  dense kernel   [in, out]            (PyTorch nn.Linear weight transposed; TF dense weight as is)
  conv kernel    [kh, kw, in, out]    (HWIO; PyTorch Conv2d weight [out, in, kh, kw] transposed (2, 3, 1, 0))
  fused up-conv  [kh, kw, in, out]    (the official fused weight, already stored in this layout)
"""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)
_CONV_DIMS = ("NHWC", "HWIO", "NHWC")


def leaky_relu(x: jax.Array, slope: float = LRELU_SLOPE) -> jax.Array:
  """max(x, slope * x), the official activation after every equalised layer."""
  return jnp.where(x >= 0, x, x * slope)


def pixel_norm(x: jax.Array, eps: float = 1e-8, axis: int = -1) -> jax.Array:
  """Normalises each feature vector to unit root-mean-square (the mapping network's input norm)."""
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + eps)


def instance_norm(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Per-sample, per-channel normalisation over the spatial axes of an NHWC tensor."""
  x = x - jnp.mean(x, axis=(1, 2), keepdims=True)
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=(1, 2), keepdims=True) + eps)


def style_modulate(x: jax.Array, style: jax.Array) -> jax.Array:
  """AdaIN affine step: x * (scale + 1) + shift with style = [scale (C), shift (C)] per sample.

  The [scale, shift] order is the official `style.view(-1, 2, C)` split of the 2C-wide style dense output.
  """
  channels = x.shape[-1]
  scale = style[:, None, None, :channels]
  shift = style[:, None, None, channels:]
  return x * (scale + 1.0) + shift


def blur_kernel() -> np.ndarray:
  """The official 3x3 low-pass filter: outer([1, 2, 1], [1, 2, 1]) / 16."""
  k = np.array([1.0, 2.0, 1.0], np.float32)
  k = np.outer(k, k)
  return k / k.sum()


def blur(x: jax.Array) -> jax.Array:
  """[1, 2, 1] x [1, 2, 1] / 16 blur with zero padding ('SAME'), per channel.

  Written as two separable 3-tap passes of shifted slices instead of a depthwise convolution: the same
  result (the kernel is symmetric, so correlation == convolution), fewer FLOPs, and a cheap transpose for
  gradients (the inversion inner loop differentiates through it).
  """
  def taps(y, axis):
    pad = [(0, 0)] * y.ndim
    pad[axis] = (1, 1)
    y = jnp.pad(y, pad)
    n = y.shape[axis] - 2
    left = jax.lax.slice_in_dim(y, 0, n, axis=axis)
    mid = jax.lax.slice_in_dim(y, 1, n + 1, axis=axis)
    right = jax.lax.slice_in_dim(y, 2, n + 2, axis=axis)
    return (left + right) * 0.25 + mid * 0.5

  return taps(taps(x, 1), 2)


def upsample_nearest(x: jax.Array, factor: int = 2) -> jax.Array:
  """Nearest-neighbour upsampling of an NHWC tensor by an integer factor."""
  n, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, factor, w, factor, c))
  return x.reshape(n, h * factor, w * factor, c)


def downsample_avg(x: jax.Array, factor: int = 2) -> jax.Array:
  """factor x factor average pooling (the official `downscale2d`) of an NHWC tensor."""
  n, h, w, c = x.shape
  return x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1,
           padding: Optional[tuple[tuple[int, int], tuple[int, int]]] = None) -> jax.Array:
  """Cross-correlation (TF/PyTorch conv semantics) with an HWIO kernel; default padding k // 2 ('SAME')."""
  if padding is None:
    p = kernel.shape[0] // 2
    padding = ((p, p), (p, p))
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=_CONV_DIMS)


def fuse_kernel_2x2(kernel: jax.Array) -> jax.Array:
  """[k, k, in, out] -> [k+1, k+1, in, out]: zero-pad by 1 and sum the 4 shifted copies (the official trick).

  Convolving with the result at stride 2 is the same as (up/down)sampling by 2 and convolving with `kernel`.
  """
  k = jnp.pad(kernel, ((1, 1), (1, 1), (0, 0), (0, 0)))
  return k[1:, 1:] + k[:-1, 1:] + k[1:, :-1] + k[:-1, :-1]


def conv_transpose_stride2(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-2 transposed convolution with a [4, 4, in, out] kernel, output 2H x 2W.

  Equals PyTorch `conv_transpose2d(x, kernel.permute(2, 3, 0, 1), stride=2, padding=1)` and TF
  `conv2d_transpose(..., strides=2, padding='SAME')`: dilate the input by 2, pad by k - 1 - 1 = 2, and
  cross-correlate with the spatially flipped kernel.
  """
  pad = kernel.shape[0] - 2
  return jax.lax.conv_general_dilated(
      x, kernel[::-1, ::-1], (1, 1), ((pad, pad), (pad, pad)), lhs_dilation=(2, 2),
      dimension_numbers=_CONV_DIMS)


def upconv2d(x: jax.Array, kernel: jax.Array, fused: bool) -> jax.Array:
  """2x upsampling + 3x3 conv with an already scaled HWIO kernel (see `EqualizedUpConv`)."""
  if fused:
    return conv_transpose_stride2(x, fuse_kernel_2x2(kernel))
  return conv2d(upsample_nearest(x), kernel)


def conv2d_downscale(x: jax.Array, kernel: jax.Array, fused: bool) -> jax.Array:
  """3x3 conv + 2x average downsampling with an already scaled HWIO kernel (see `EqualizedDownConv`)."""
  if fused:
    return conv2d(x, fuse_kernel_2x2(kernel) * 0.25, stride=2, padding=((1, 1), (1, 1)))
  return downsample_avg(conv2d(x, kernel))


def he_scale(fan_in: int, gain: float = LRELU_GAIN, lr_mul: float = 1.0) -> float:
  """Equalised-LR runtime multiplier of a raw weight."""
  return gain / math.sqrt(fan_in) * lr_mul


class EqualizedDense(nn.Module):
  """Fully-connected layer with equalised LR: y = x @ (W * gain / sqrt(in) * lr_mul) + b * lr_mul.

  Params: `kernel` [in, out], `bias` [out] (if use_bias). No activation (callers apply leaky_relu).
  """
  features: int
  gain: float = LRELU_GAIN
  lr_mul: float = 1.0
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.normal(1.0 / self.lr_mul), (fan_in, self.features))
    y = x @ (kernel * he_scale(fan_in, self.gain, self.lr_mul))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)) * self.lr_mul
    return y


class EqualizedConv(nn.Module):
  """k x k 'SAME' convolution with equalised LR. Params: `kernel` [k, k, in, out], `bias` [out] (if use_bias)."""
  features: int
  kernel_size: int = 3
  gain: float = LRELU_GAIN
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, fan_in = self.kernel_size, x.shape[-1]
    kernel = self.param("kernel", nn.initializers.normal(1.0), (k, k, fan_in, self.features))
    y = conv2d(x, kernel * he_scale(k * k * fan_in, self.gain))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y


class EqualizedUpConv(nn.Module):
  """2x upsampling + 3x3 convolution, no bias (the generator adds it in the epilogue).

  fused=False: nearest x2 then 3x3 'SAME' conv. fused=True (official at >= 128 px): the raw 3x3 kernel is
  scaled, fused to 4x4 (`fuse_kernel_2x2`) and applied as a stride-2 transposed conv. With the same stored
  kernel the two differ by a spatial flip of the kernel (see tests). Param: `kernel` [3, 3, in, out].
  """
  features: int
  fused: bool = False
  kernel_size: int = 3
  gain: float = LRELU_GAIN

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, fan_in = self.kernel_size, x.shape[-1]
    kernel = self.param("kernel", nn.initializers.normal(1.0), (k, k, fan_in, self.features))
    return upconv2d(x, kernel * he_scale(k * k * fan_in, self.gain), self.fused)


class EqualizedDownConv(nn.Module):
  """3x3 convolution + 2x downsampling + bias (the discriminator's `conv2d_downscale2d` + `apply_bias`).

  fused=False: 3x3 'SAME' conv then 2x2 average pool. fused=True (official at >= 128 px): the scaled kernel is
  fused to 4x4, times 1/4, and applied at stride 2 with padding 1; this equals the non-fused path exactly
  (no flip). Params: `kernel` [3, 3, in, out], `bias` [out].
  """
  features: int
  fused: bool = False
  kernel_size: int = 3
  gain: float = LRELU_GAIN

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, fan_in = self.kernel_size, x.shape[-1]
    kernel = self.param("kernel", nn.initializers.normal(1.0), (k, k, fan_in, self.features))
    y = conv2d_downscale(x, kernel * he_scale(k * k * fan_in, self.gain), self.fused)
    return y + self.param("bias", nn.initializers.zeros, (self.features,))


NOISE_MODES = ("const", "random", "none")


class Epilogue(nn.Module):
  """Per-layer tail of the synthesis network, in the official order:

  + noise * noise_weight[C]  ->  + bias[C]  ->  leaky_relu  ->  instance_norm  ->  style modulation.

  Params: `noise_weight` [C], `bias` [C], `style/{kernel [w_dim, 2C], bias [2C]}` (gain 1, lr_mul 1).
  Buffers: `noise` [1, res, res, 1], the fixed noise map used by noise_mode 'const'.
  """
  resolution: int

  @nn.compact
  def __call__(self, x: jax.Array, w: jax.Array, noise_mode: str = "const") -> jax.Array:
    n, h, wd, channels = x.shape
    fixed_noise = self.variable(
        "buffers", "noise",
        lambda: jax.random.normal(self.make_rng("params"), (1, self.resolution, self.resolution, 1)))
    noise_weight = self.param("noise_weight", nn.initializers.zeros, (channels,))
    if noise_mode == "const":
      x = x + fixed_noise.value * noise_weight
    elif noise_mode == "random":
      x = x + jax.random.normal(self.make_rng("noise"), (n, h, wd, 1), x.dtype) * noise_weight
    elif noise_mode != "none":
      raise ValueError(f"noise_mode={noise_mode!r} is not one of {NOISE_MODES}; fix the config value.")
    x = x + self.param("bias", nn.initializers.zeros, (channels,))
    x = instance_norm(leaky_relu(x))
    style = EqualizedDense(2 * channels, gain=1.0, lr_mul=1.0, name="style")(w)
    return style_modulate(x, style)
