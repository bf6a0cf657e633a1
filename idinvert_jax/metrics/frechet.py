"""Frechet distance between Gaussian fits of image features, on a stated feature extractor.

d^2 = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))   (Dowson & Landau 1982; the formula behind FID).

This is NOT FID: FID is defined on Inception-v3 pool3 features, and no Inception weights are available here.
Every result therefore carries `feature_name`, and callers must print it next to the value. Extractors:
  - 'vgg16_conv4_3_mean' (the default when VGG16 weights are given): the perceptual module's conv4_3 map
    (after ReLU), averaged over space -> 512 features.
  - 'random_projection64_pixels16' (the default otherwise): images area-downsampled to 16x16, flattened (768
    values) and multiplied by a fixed Gaussian random matrix (seed 0, scaled by 1/sqrt(768)) -> 64 features. A
    seeded linear map: the same for every run and machine, sensitive to colour layout, blind to texture.
  - any [N, D] features a caller computes (e.g. the attribute classifier's penultimate layer), with its own name.
With N images the covariance has rank <= N - 1; below ~D images the value is dominated by estimation bias, so
compare values only at equal N and feature extractor.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from idinvert_jax.metrics import reconstruction

PIXEL_FEATURE_SIZE = 16
PIXEL_FEATURE_DIM = 64
PIXEL_FEATURE_SEED = 0


def gaussian_fit(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and unbiased covariance [D, D] (float64) of features [N, D]."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"gaussian_fit: features have shape {features.shape}; pass [N, D] with N >= 2.")
  return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


def frechet_distance_from_stats(mu_a, sigma_a, mu_b, sigma_b, eps: float = 1e-6) -> float:
  """Frechet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b).

  When the product of the covariances is singular (few samples), eps * I is added to both before the matrix square
  root, as the reference FID code does; tiny imaginary parts from sqrtm's round-off are dropped.
  """
  mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
  sigma_a, sigma_b = np.asarray(sigma_a, np.float64), np.asarray(sigma_b, np.float64)
  if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape:
    raise ValueError(f"frechet_distance: statistics differ in shape ({mu_a.shape} vs {mu_b.shape}); "
                     "compute both with the same feature extractor.")
  diff = mu_a - mu_b
  covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b)
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma_a.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
  covmean = np.real(covmean)
  return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean))


def frechet_distance(features_a, features_b, feature_name: str) -> dict[str, Any]:
  """Frechet distance between Gaussian fits of two feature sets [N, D]; the result names its features.

  Returns:
    {'frechet_distance': float, 'feature_name': str, 'num_a': int, 'num_b': int, 'feature_dim': int}.
  """
  if not feature_name:
    raise ValueError("frechet_distance: feature_name is empty; name the extractor so the value is never read "
                     "as FID.")
  mu_a, sigma_a = gaussian_fit(features_a)
  mu_b, sigma_b = gaussian_fit(features_b)
  return {"frechet_distance": frechet_distance_from_stats(mu_a, sigma_a, mu_b, sigma_b),
          "feature_name": feature_name, "num_a": int(np.shape(features_a)[0]),
          "num_b": int(np.shape(features_b)[0]), "feature_dim": int(mu_a.shape[0])}


@functools.lru_cache(maxsize=4)
def _projection_matrix(in_dim: int, out_dim: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((in_dim, out_dim)) / np.sqrt(in_dim)).astype(np.float32)


def _downsample(images: jax.Array, size: int) -> jax.Array:
  """Area (box) downsampling of square NHWC images to size x size; other sizes go through a linear resize."""
  n, h, w, c = images.shape
  if h % size == 0 and w % size == 0:
    return images.reshape(n, size, h // size, size, w // size, c).mean(axis=(2, 4))
  return jax.image.resize(images, (n, size, size, c), method="linear", antialias=True)


def pixel_projection_features(images, size: int = PIXEL_FEATURE_SIZE, dim: int = PIXEL_FEATURE_DIM,
                              seed: int = PIXEL_FEATURE_SEED) -> tuple[np.ndarray, str]:
  """Fixed random projection of downsampled pixels: ([N, dim] features, feature_name)."""
  images = jnp.asarray(images, jnp.float32)
  small = _downsample(images, size).reshape(images.shape[0], -1)
  matrix = _projection_matrix(small.shape[1], dim, seed)
  features = jnp.matmul(small, matrix, precision=jax.lax.Precision.HIGHEST)
  name = f"random_projection{dim}_pixels{size}" + ("" if seed == PIXEL_FEATURE_SEED else f"_seed{seed}")
  return np.asarray(features), name


@functools.partial(jax.jit, static_argnums=0)
def _vgg_means(F: Any, variables: Any, images: jax.Array) -> jax.Array:
  return jnp.mean(reconstruction.select_features(F.apply(variables, images), "conv4_3"), axis=(1, 2))


def vgg16_mean_features(F: Any, variables: Any, images, batch_size: int = 32) -> tuple[np.ndarray, str]:
  """Spatially averaged VGG16 conv4_3 features: ([N, 512], 'vgg16_conv4_3_mean')."""
  images = jnp.asarray(images, jnp.float32)
  chunks = [_vgg_means(F, variables, images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)]
  return np.asarray(jnp.concatenate(chunks, axis=0)), "vgg16_conv4_3_mean"


def image_features(images, F: Any = None, variables: Any = None) -> tuple[np.ndarray, str]:
  """The default extractor: VGG16 conv4_3 means when weights are given, else the pixel random projection."""
  if F is not None and variables is not None:
    return vgg16_mean_features(F, variables, images)
  return pixel_projection_features(images)


def frechet_distance_images(images_a, images_b, F: Any = None, variables: Any = None) -> dict[str, Any]:
  """Frechet distance between two image sets (NHWC in [-1, 1]) on the default extractor (see module doc)."""
  features_a, name = image_features(images_a, F, variables)
  features_b, _ = image_features(images_b, F, variables)
  return frechet_distance(features_a, features_b, name)
