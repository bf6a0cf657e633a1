"""StyleGAN-v1 building blocks (NHWC; float32, or bfloat16 with float32 normalisation statistics) shared by the generator and the discriminator.

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

import contextlib
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
  """Normalises each feature vector to unit root-mean-square (the mapping network's input norm).

  Computed in float32 and returned in x's dtype (bfloat16 compute keeps float32 statistics; float32 is unchanged).
  """
  y = x.astype(jnp.float32)
  return (y * jax.lax.rsqrt(jnp.mean(jnp.square(y), axis=axis, keepdims=True) + eps)).astype(x.dtype)


def instance_norm(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Per-sample, per-channel normalisation over the spatial axes of an NHWC tensor (float32 statistics, output
  in x's dtype, as `pixel_norm`)."""
  y = x.astype(jnp.float32)
  y = y - jnp.mean(y, axis=(1, 2), keepdims=True)
  return (y * jax.lax.rsqrt(jnp.mean(jnp.square(y), axis=(1, 2), keepdims=True) + eps)).astype(x.dtype)


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


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling, stride 2, of an NHWC tensor (H and W even), as two elementwise maxima of strided slices.

  Same values as `nn.max_pool(x, (2, 2), strides=(2, 2))`; its gradient goes to the maximum of each window too,
  except that exact ties share it (the reduce-window form picks one). Behind a ReLU the only ties in practice are
  zeros, whose gradient the ReLU drops either way. Reason: XLA:CPU's select-and-scatter gradient of the
  reduce-window form is slow (4 x 256 x 256 x 64: 178 ms forward+backward vs 37 ms).
  """
  x = x[:, :x.shape[1] // 2 * 2, :x.shape[2] // 2 * 2]  # Odd sizes: floor, as the 'VALID' pool.
  x = jnp.maximum(x[:, 0::2], x[:, 1::2])
  return jnp.maximum(x[:, :, 0::2], x[:, :, 1::2])


def downsample_avg(x: jax.Array, factor: int = 2) -> jax.Array:
  """factor x factor average pooling (the official `downscale2d`) of an NHWC tensor."""
  n, h, w, c = x.shape
  return x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


# Below this many output rows (batch x height x width) a stride-1 convolution runs as one matrix product of
# the im2col patches on XLA:CPU: its convolution kernel is 2-3x slower than the product for small maps with many
# channels (4 x 8 x 8 x 1024 -> 1024: 93 vs 234 GFLOP/s forward+backward; 4 x 32 x 32 x 512: 238 vs 210, so
# larger maps keep the convolution). Measured with bench/profile_inversion.py and a per-shape sweep.
MATMUL_CONV_MAX_ROWS = 1024
_matmul_convs = [True]


@contextlib.contextmanager
def direct_convolutions():
  """Within this block (at trace time) every convolution is lowered as written, never as a matrix product.

  For FLOP counting: cost_analysis() counts the zero padding inside im2col patches as work, which would
  overstate the useful FLOPs of a step (bench/bench_inversion.py counts with this on). Clears JAX's caches on
  entry and exit, so compiled functions are traced again afterwards.
  """
  jax.clear_caches()  # The models' inner jitted applies would otherwise reuse traces made outside the block.
  _matmul_convs.append(False)
  try:
    yield
  finally:
    _matmul_convs.pop()
    jax.clear_caches()


def _conv_as_matmul(x: jax.Array, kernel: jax.Array, padding, precision) -> jax.Array:
  """Stride-1 NHWC x HWIO correlation as patches [rows, kh*kw*in] @ kernel [kh*kw*in, out]."""
  kh, kw, cin, cout = kernel.shape
  x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  n, h, w = x.shape[0], x.shape[1] - kh + 1, x.shape[2] - kw + 1
  patches = [x[:, dy:dy + h, dx:dx + w] for dy in range(kh) for dx in range(kw)]
  patches = patches[0] if len(patches) == 1 else jnp.concatenate(patches, axis=-1)  # (dy, dx, in) = HWIO order.
  y = jnp.dot(patches.reshape(n * h * w, kh * kw * cin), kernel.reshape(kh * kw * cin, cout), precision=precision)
  return y.reshape(n, h, w, cout)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
  """`jax.lax.conv_general_dilated`, except that small NHWC/HWIO stride-1 maps use `_conv_as_matmul` on CPU.

  Drop-in (also as `nn.Conv(conv_general_dilated=...)`): same arguments, same result up to float32 summation order.
  The choice follows the platform the program is compiled for, not the host's default backend: both forms are
  staged out with `jax.lax.platform_dependent`, and lowering keeps only the product for CPU devices and only the
  convolution for any other (a step lowered on a CPU host for a TPU topology gets the TPU's native convolution).
  """
  def direct(lhs, rhs):
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type)

  ones = lambda v: v is None or all(int(d) == 1 for d in v)
  simple = (lhs.ndim == 4 and ones(window_strides) and ones(lhs_dilation) and ones(rhs_dilation)
            and feature_group_count == 1 and batch_group_count == 1 and preferred_element_type is None
            and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _CONV_DIMS))
  if simple and _matmul_convs[-1]:
    pads = padding
    if isinstance(padding, str):
      pads = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
    out_h, out_w = (lhs.shape[1 + i] + sum(pads[i]) - rhs.shape[i] + 1 for i in (0, 1))
    rows = lhs.shape[0] * out_h * out_w
    # 1x1 convolutions and 3-channel inputs are also faster as products at any size (toRGB 64 -> 3 at
    # 4 x 256 x 256: 75 -> 21 ms forward+backward; VGG conv1_1: 65 -> 47 ms).
    if rows <= MATMUL_CONV_MAX_ROWS or rhs.shape[0] * rhs.shape[1] == 1 or rhs.shape[2] <= 4:
      product = lambda lhs, rhs: _conv_as_matmul(lhs, rhs, pads, precision)
      return jax.lax.platform_dependent(lhs, rhs, cpu=product, default=direct)
  return direct(lhs, rhs)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1,
           padding: Optional[tuple[tuple[int, int], tuple[int, int]]] = None) -> jax.Array:
  """Cross-correlation (TF/PyTorch conv semantics) with an HWIO kernel; default padding k // 2 ('SAME')."""
  if padding is None:
    p = kernel.shape[0] // 2
    padding = ((p, p), (p, p))
  return conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=_CONV_DIMS)


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


def _upsample_correlate_phases(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The same as four 2x2 "phase" kernels on the original grid, stacked into one convolution.

  Output pixel 2p + r only meets real samples at kernel taps r and r + 2 (per axis): phase (ry, rx) is the
  kernel `kernel[ry::2, rx::2]`. The phases are stacked along the output channels, applied as one stride-1
  convolution of the input padded by 1, and phase (ry, rx) is that output shifted by (ry, rx).
  """
  n, h, w, cin = x.shape
  cout = kernel.shape[-1]
  # Kernel row 2a + ry, column 2b + rx -> [a, b, in, (ry, rx, out)].
  phases = kernel.reshape(2, 2, 2, 2, cin, cout).transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, cin, 4 * cout)
  y = conv2d(x, phases, padding=((1, 1), (1, 1))).reshape(n, h + 1, w + 1, 2, 2, cout)
  rows = [jnp.stack([y[:, ry:ry + h, rx:rx + w, ry, rx] for rx in (0, 1)], axis=3) for ry in (0, 1)]
  return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, cout)


@jax.custom_vjp
def upsample_correlate_4x4(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Zero-insertion 2x upsampling, pad 2, cross-correlation with a [4, 4, in, out] kernel (output 2H x 2W).

  Forward: the phase form (`_upsample_correlate_phases`), which never multiplies the inserted zeros.
  Backward: the direct form's own gradients (`conv_transpose_stride2` of the flipped kernel: a stride-2
  convolution for x). Both are the fastest variant on XLA:CPU for their direction (bench/profile_inversion.py
  shows the per-layer times): the lhs-dilated forward and the phase form's backward (2x2 windows over 4x the
  channels) both run at about half the rate of a plain convolution. Results equal the direct form up to float32
  summation order (tests).
  """
  return _upsample_correlate_phases(x, kernel)


def _upsample_correlate_fwd(x, kernel):
  return _upsample_correlate_phases(x, kernel), (x, kernel)


def _upsample_correlate_bwd(residuals, grad):
  x, kernel = residuals
  _, vjp = jax.vjp(lambda x, k: conv_transpose_stride2(x, k[::-1, ::-1]), x, kernel)
  return vjp(grad)


upsample_correlate_4x4.defvjp(_upsample_correlate_fwd, _upsample_correlate_bwd)


def upconv2d(x: jax.Array, kernel: jax.Array, fused: bool) -> jax.Array:
  """2x upsampling + 3x3 conv with an already scaled HWIO kernel (the generator's up `SynthesisLayer`).

  fused: the official transposed convolution (`conv_transpose_stride2`), computed as `upsample_correlate_4x4`
  with the flipped fused kernel (same result, ~20 % faster G forward+backward at 256 px on CPU). Not fused:
  nearest x2 then a 3x3 'SAME' conv. (That also equals upsample_correlate_4x4 with fuse_kernel_2x2(kernel), with
  4/9 of the multiplies, but measured no faster on CPU, so the direct form stays.)
  """
  if fused:
    return upsample_correlate_4x4(x, fuse_kernel_2x2(kernel)[::-1, ::-1])
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
