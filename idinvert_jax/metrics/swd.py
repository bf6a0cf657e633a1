"""Sliced Wasserstein distance (SWD) over Laplacian-pyramid patches, as the ProGAN paper's metric.

Karras et al. 2018 (ProGAN), appendix D / their metrics/sliced_wasserstein.py, whose settings we keep:
  - a Laplacian pyramid of each image (5x5 binomial filter, mirror borders, like cv2.pyrDown/pyrUp), one level per
    resolution from the full size down to 16 px (so a 16 px image has one level, 256 px has five);
  - 128 random 7x7 neighbourhoods per image per level; each set's descriptors are normalised per channel (its own
    mean and std over all its patches and pixels), then flattened to 7*7*C vectors;
  - 4 repeats of 128 random unit directions (512 projections in all); per direction the 1-D Wasserstein-1
    distance of the sorted projections; averaged over directions and repeats;
  - reported per level x 1e3, plus their average.
One deliberate difference: the patch positions of a level are drawn once and shared by both sets (common random
numbers). Both sets hold the same number of equally sized images, so this is still a sample of each distribution,
but identical sets give exactly 0 and comparisons between methods vary less. Everything is driven by `seed`.

Because each set is normalised on its own, SWD ignores per-channel brightness/contrast changes of a whole set and
measures the shape of the local patch distribution (structure, sharpness, noise) at each scale.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

NHOOD_SIZE = 7
NHOODS_PER_IMAGE = 128
DIR_REPEATS = 4
DIRS_PER_REPEAT = 128
MIN_RESOLUTION = 16

# 5x5 binomial filter of cv2.pyrDown; pyrUp uses 4x it (the zeros inserted by upsampling carry no weight).
_BINOMIAL = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float32) / 256.0


@dataclasses.dataclass(frozen=True)
class SWDResult:
  """SWD x 1e3 per pyramid level (finest first) and their average."""
  resolutions: tuple[int, ...]
  per_level: tuple[float, ...]
  average: float

  def as_dict(self, prefix: str = "swd") -> dict[str, float]:
    """{'swd_256': .., 'swd_128': .., ..., 'swd_avg': ..} (values x 1e3)."""
    out = {f"{prefix}_{res}": value for res, value in zip(self.resolutions, self.per_level)}
    out[f"{prefix}_avg"] = self.average
    return out


def pyramid_resolutions(resolution: int, min_resolution: int = MIN_RESOLUTION) -> tuple[int, ...]:
  """Resolutions of the pyramid levels: resolution, resolution/2, ... while >= min_resolution."""
  levels = []
  while resolution >= min_resolution:
    levels.append(resolution)
    resolution //= 2
  return tuple(levels)


def _filter_mirror(x: jax.Array, kernel: np.ndarray) -> jax.Array:
  """Depthwise 5x5 filtering of NHWC `x` with mirror (reflect, edge not repeated) borders, as scipy 'mirror'."""
  channels = x.shape[-1]
  x = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
  weights = jnp.tile(jnp.asarray(kernel)[:, :, None, None], (1, 1, 1, channels))
  return jax.lax.conv_general_dilated(x, weights, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=channels, precision=jax.lax.Precision.HIGHEST)


def _pyr_down(x: jax.Array) -> jax.Array:
  return _filter_mirror(x, _BINOMIAL)[:, ::2, ::2]


def _pyr_up(x: jax.Array) -> jax.Array:
  n, h, w, c = x.shape
  up = jnp.zeros((n, 2 * h, 2 * w, c), x.dtype).at[:, ::2, ::2].set(x)
  return _filter_mirror(up, _BINOMIAL * 4.0)


def laplacian_pyramid(images: jax.Array, num_levels: int) -> list[jax.Array]:
  """Laplacian pyramid of NHWC images, finest level first; the last level is the low-pass residual."""
  pyramid = [images]
  for _ in range(1, num_levels):
    coarser = _pyr_down(pyramid[-1])
    pyramid[-1] = pyramid[-1] - _pyr_up(coarser)
    pyramid.append(coarser)
  return pyramid


def _patch_positions(key: jax.Array, num_images: int, size: int, nhoods: int, nhood_size: int) -> jax.Array:
  """[num_images * nhoods, 2] top-left corners of random neighbourhoods that fit inside a size x size level."""
  return jax.random.randint(key, (num_images * nhoods, 2), 0, size - nhood_size + 1)


def _extract_descriptors(level: jax.Array, corners: jax.Array, nhoods: int, nhood_size: int) -> jax.Array:
  """Per-channel normalised, flattened patch descriptors [num_images * nhoods, nhood_size^2 * C]."""
  image_index = jnp.arange(corners.shape[0]) // nhoods

  def one(index, corner):
    return jax.lax.dynamic_slice(level[index], (corner[0], corner[1], 0),
                                 (nhood_size, nhood_size, level.shape[-1]))

  patches = jax.vmap(one)(image_index, corners)
  patches = patches - jnp.mean(patches, axis=(0, 1, 2), keepdims=True)
  # The floor keeps flat sets (e.g. constant images: an all-zero Laplacian level) finite instead of NaN.
  patches = patches / jnp.maximum(jnp.std(patches, axis=(0, 1, 2), keepdims=True), 1e-8)
  return patches.reshape(patches.shape[0], -1)


@functools.partial(jax.jit, static_argnames=("dirs_per_repeat",))
def _project(a: jax.Array, b: jax.Array, key: jax.Array, dirs_per_repeat: int) -> tuple[jax.Array, jax.Array]:
  """Projections of both descriptor sets on `dirs_per_repeat` random unit directions."""
  dirs = jax.random.normal(key, (a.shape[1], dirs_per_repeat), jnp.float32)
  dirs = dirs / jnp.sqrt(jnp.sum(jnp.square(dirs), axis=0, keepdims=True))
  project = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
  return project(a, dirs), project(b, dirs)


def _sliced_wasserstein(a: jax.Array, b: jax.Array, key: jax.Array, dir_repeats: int,
                        dirs_per_repeat: int) -> float:
  """Mean over repeats and directions of the 1-D W1 distance between sorted projections of a and b."""
  results = []
  for repeat_key in jax.random.split(key, dir_repeats):
    proj_a, proj_b = _project(a, b, repeat_key, dirs_per_repeat)
    # Sorting runs in numpy: XLA's CPU sort is ~10x slower than numpy's on these [patches, directions] arrays.
    sorted_a = np.sort(np.asarray(proj_a), axis=0)
    sorted_b = np.sort(np.asarray(proj_b), axis=0)
    results.append(np.mean(np.abs(sorted_a - sorted_b), dtype=np.float64))
  return float(np.mean(results))


@functools.partial(jax.jit, static_argnames=("num_levels", "nhoods", "nhood_size"))
def _descriptors(a: jax.Array, b: jax.Array, key: jax.Array, num_levels: int, nhoods: int,
                 nhood_size: int) -> list[tuple[jax.Array, jax.Array]]:
  """Per pyramid level, the normalised patch descriptors of both sets (at shared positions)."""
  # ProGAN builds the pyramid on uint8-valued pixels; the per-set normalisation makes the scale irrelevant.
  pyramid_a = laplacian_pyramid(a * 127.5 + 127.5, num_levels)
  pyramid_b = laplacian_pyramid(b * 127.5 + 127.5, num_levels)
  out = []
  for level, (level_a, level_b) in enumerate(zip(pyramid_a, pyramid_b)):
    corners = _patch_positions(jax.random.fold_in(key, level), a.shape[0], level_a.shape[1], nhoods, nhood_size)
    out.append((_extract_descriptors(level_a, corners, nhoods, nhood_size),
                _extract_descriptors(level_b, corners, nhoods, nhood_size)))
  return out


def sliced_wasserstein_distance(images_a, images_b, seed: int = 0, nhoods_per_image: int = NHOODS_PER_IMAGE,
                                nhood_size: int = NHOOD_SIZE, dir_repeats: int = DIR_REPEATS,
                                dirs_per_repeat: int = DIRS_PER_REPEAT,
                                min_resolution: int = MIN_RESOLUTION) -> SWDResult:
  """SWD x 1e3 between two image sets (NHWC float in [-1, 1], same shape), per pyramid level and averaged.

  Args:
    images_a, images_b: [N, R, R, C] image sets with the same N and size (e.g. reconstructions and targets).
    seed: drives patch positions and projection directions; same seed and inputs give the same result.
    nhoods_per_image, nhood_size, dir_repeats, dirs_per_repeat, min_resolution: the ProGAN settings (defaults).
  """
  a = jnp.asarray(images_a, jnp.float32)
  b = jnp.asarray(images_b, jnp.float32)
  if a.ndim != 4 or a.shape != b.shape:
    raise ValueError(f"sliced_wasserstein_distance: image sets must be NHWC with one shape; got {a.shape} and "
                     f"{b.shape}. Pass as many images of each (e.g. pair each reconstruction with its target).")
  if a.shape[1] != a.shape[2]:
    raise ValueError(f"sliced_wasserstein_distance: images are {a.shape[1]}x{a.shape[2]}; pass square images.")
  resolutions = pyramid_resolutions(a.shape[1], min_resolution)
  if not resolutions or resolutions[-1] < nhood_size:
    raise ValueError(f"sliced_wasserstein_distance: {a.shape[1]}px images are smaller than {min_resolution}px; "
                     "pass images of at least 16px or lower min_resolution.")
  pos_key, dir_key = jax.random.split(jax.random.PRNGKey(seed))
  levels = _descriptors(a, b, pos_key, len(resolutions), nhoods_per_image, nhood_size)
  per_level = tuple(1e3 * _sliced_wasserstein(desc_a, desc_b, jax.random.fold_in(dir_key, level), dir_repeats,
                                              dirs_per_repeat)
                    for level, (desc_a, desc_b) in enumerate(levels))
  return SWDResult(resolutions, per_level, float(np.mean(per_level)))
