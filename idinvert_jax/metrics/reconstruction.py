"""Per-image reconstruction metrics: MSE, PSNR, SSIM and the perceptual (VGG16 conv4_3) distance.

All functions take two image batches NHWC float in [-1, 1] (the project convention) of equal shape and return one
value per image, shape [N]. Scales, stated once:
  - `mse`: mean over H, W, C of the squared difference on the [-1, 1] scale (the scale the models work in).
  - `mse_uint8`: the same, after both images went through the uint8 round trip that saving a PNG does
    (x * 127.5 + 127.5, rounded, clipped, mapped back to [-1, 1]); still on the [-1, 1] scale.
  - `psnr`: on the [0, 255] scale (x * 127.5 + 127.5, not rounded), data range 255; +inf for identical images.
  - `ssim`: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, 'valid' filtering,
    computed on [0, 255] with L = 255 (identical to [0, 1] with L = 1: SSIM is scale invariant when L scales),
    mean over the SSIM map, then mean over channels (as tf.image.ssim).
  - `perceptual_distance`: mean squared difference of VGG16 conv4_3 features (the paper's perceptual term).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

# SSIM constants (Wang et al. 2004).
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
PIXEL_RANGE = 255.0


def _check_pair(a, b, name: str) -> None:
  if a.shape != b.shape or a.ndim != 4:
    raise ValueError(f"{name}: image batches must both be NHWC with one shape; got {a.shape} and {b.shape}.")


def _to_pixels(x: jax.Array) -> jax.Array:
  """[-1, 1] -> [0, 255] float, no rounding (the official x * 127.5 + 127.5 mapping)."""
  return x * 127.5 + 127.5


def _quantise(x: jax.Array) -> jax.Array:
  """[-1, 1] -> uint8 round trip -> [-1, 1] (what saving and reloading a PNG does)."""
  return jnp.clip(jnp.round(_to_pixels(x)), 0, 255) / 127.5 - 1.0


@jax.jit
def _mse(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)), axis=(1, 2, 3))


def mse(a, b) -> jax.Array:
  """Per-image mean squared error on the [-1, 1] scale, shape [N]."""
  a, b = jnp.asarray(a), jnp.asarray(b)
  _check_pair(a, b, "mse")
  return _mse(a, b)


def mse_uint8(a, b) -> jax.Array:
  """Per-image MSE on the [-1, 1] scale after the uint8 (PNG) round trip of both images, shape [N]."""
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  _check_pair(a, b, "mse_uint8")
  return _mse(_quantise(a), _quantise(b))


@jax.jit
def _psnr(a: jax.Array, b: jax.Array) -> jax.Array:
  err = jnp.mean(jnp.square(_to_pixels(a) - _to_pixels(b)), axis=(1, 2, 3))
  # err == 0 gives log10(inf) = inf, the conventional PSNR of identical images.
  return 10.0 * jnp.log10(PIXEL_RANGE ** 2 / err)


def psnr(a, b) -> jax.Array:
  """Per-image PSNR in dB on the [0, 255] scale (data range 255); +inf where the images are identical."""
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  _check_pair(a, b, "psnr")
  return _psnr(a, b)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
  """Normalised 1-D Gaussian window of `size` taps centred on the middle tap."""
  offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  window = np.exp(-offsets ** 2 / (2.0 * sigma ** 2))
  return (window / window.sum()).astype(np.float32)


def _filter_valid(x: jax.Array, window: np.ndarray) -> jax.Array:
  """Separable 'valid' Gaussian filtering of every channel of NHWC `x` independently."""
  channels = x.shape[-1]
  taps = window.shape[0]
  kernel_h = jnp.tile(jnp.asarray(window).reshape(taps, 1, 1, 1), (1, 1, 1, channels))
  kernel_w = jnp.tile(jnp.asarray(window).reshape(1, taps, 1, 1), (1, 1, 1, channels))
  dims = ("NHWC", "HWIO", "NHWC")
  for kernel in (kernel_h, kernel_w):
    x = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=dims,
                                     feature_group_count=channels,
                                     precision=jax.lax.Precision.HIGHEST)
  return x


@functools.partial(jax.jit, static_argnames=("size", "sigma"))
def _ssim(a: jax.Array, b: jax.Array, size: int, sigma: float) -> jax.Array:
  x, y = _to_pixels(a), _to_pixels(b)
  window = gaussian_window(size, sigma)
  c1 = (SSIM_K1 * PIXEL_RANGE) ** 2
  c2 = (SSIM_K2 * PIXEL_RANGE) ** 2
  mu_x, mu_y = _filter_valid(x, window), _filter_valid(y, window)
  var_x = _filter_valid(x * x, window) - mu_x ** 2
  var_y = _filter_valid(y * y, window) - mu_y ** 2
  cov_xy = _filter_valid(x * y, window) - mu_x * mu_y
  ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
  per_channel = jnp.mean(ssim_map, axis=(1, 2))
  return jnp.mean(per_channel, axis=-1)


def ssim(a, b, window_size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> jax.Array:
  """Per-image SSIM (Gaussian window 11, sigma 1.5, K1 .01, K2 .03; mean over map then channels), shape [N]."""
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  _check_pair(a, b, "ssim")
  if min(a.shape[1:3]) < window_size:
    raise ValueError(f"ssim: images are {a.shape[1]}x{a.shape[2]}, smaller than the {window_size}px window; "
                     "pass larger images or a smaller window_size.")
  return _ssim(a, b, window_size, float(sigma))


def select_features(features: Any, layer: str) -> jax.Array:
  """The `layer` feature map from whatever the perceptual module returns (array, dict or sequence)."""
  if isinstance(features, dict):
    if layer in features:
      return features[layer]
    if len(features) == 1:
      return next(iter(features.values()))
    raise ValueError(f"perceptual_distance: the perceptual model returned layers {sorted(features)}; "
                     f"pass layer= one of them.")
  if isinstance(features, (list, tuple)):
    return features[-1]
  return features


def perceptual_distance(F: Any, variables: Any, a, b, layer: str = "conv4_3",
                        batch_size: int = 32) -> jax.Array | None:
  """Per-image mean squared difference of perceptual features, shape [N]; None when no VGG16 weights are given.

  Args:
    F: the perceptual flax module (`idinvert_jax.models.vgg16`), called as `F.apply(variables, images)` on
      [-1, 1] images (the module does its own Keras 'caffe' preprocessing); or None.
    variables: its variables, or None when no weights were given. Callers print None as
      "n/a (no VGG16 weights)".
    a, b: image batches NHWC in [-1, 1].
    layer: which feature map to compare when the module returns several.
    batch_size: images per forward pass (bounds memory).
  """
  if F is None or variables is None:
    return None
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  _check_pair(a, b, "perceptual_distance")
  apply = _feature_distance_fn(F, layer)
  chunks = [apply(variables, a[i:i + batch_size], b[i:i + batch_size]) for i in range(0, a.shape[0], batch_size)]
  return jnp.concatenate(chunks, axis=0)


@functools.lru_cache(maxsize=8)
def _feature_distance_fn(F: Any, layer: str) -> Callable:
  def distance(variables, a, b):
    fa = select_features(F.apply(variables, a), layer)
    fb = select_features(F.apply(variables, b), layer)
    return jnp.mean(jnp.square(fa - fb), axis=tuple(range(1, fa.ndim)))
  return jax.jit(distance)
