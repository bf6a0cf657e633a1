"""Sliced Wasserstein distance: pyramid against scipy, 1-D closed form, identity, invariances, monotonicity."""
import jax
import numpy as np
import pytest
import scipy.ndimage

from idinvert_jax.metrics import swd


def _smooth_images(seed, n=8, size=32):
  """Random smooth colour images in [-1, 1] (structure at several scales, like natural images)."""
  x = np.random.default_rng(seed).normal(size=(n, size, size, 3))
  x = scipy.ndimage.gaussian_filter(x, (0, 1.5, 1.5, 0))
  return np.clip(x / x.std() * 0.5, -1, 1).astype(np.float32)


def _reference_pyramid(images, num_levels):
  """cv2-style Laplacian pyramid in float64 scipy (binomial 5x5, 'mirror' borders)."""
  g = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0
  conv = lambda x, k: scipy.ndimage.convolve(x, k[None, :, :, None], mode="mirror")
  levels = [images.astype(np.float64)]
  for _ in range(1, num_levels):
    down = conv(levels[-1], g)[:, ::2, ::2]
    up = np.zeros_like(levels[-1])
    up[:, ::2, ::2] = down
    levels[-1] = levels[-1] - conv(up, 4 * g)
    levels.append(down)
  return levels


def test_laplacian_pyramid_matches_scipy_reference():
  images = _smooth_images(0, n=2, size=32)
  got = swd.laplacian_pyramid(images, 3)
  want = _reference_pyramid(images, 3)
  assert [g.shape[1] for g in got] == [32, 16, 8]
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), w, atol=1e-5)


def test_pyramid_resolutions_stop_at_16():
  assert swd.pyramid_resolutions(256) == (256, 128, 64, 32, 16)
  assert swd.pyramid_resolutions(16) == (16,)


def test_one_dimensional_sliced_wasserstein_is_the_shift():
  # With 1-D descriptors every unit direction is +-1, so W1 between a sample and its shift is the shift.
  a = np.random.default_rng(1).normal(size=(500, 1)).astype(np.float32)
  got = swd._sliced_wasserstein(a, a + 0.25, jax.random.PRNGKey(0), dir_repeats=2, dirs_per_repeat=8)
  assert got == pytest.approx(0.25, rel=1e-5)


def test_identical_sets_give_zero_and_results_are_deterministic():
  a, b = _smooth_images(2), _smooth_images(3)
  same = swd.sliced_wasserstein_distance(a, a, seed=0)
  assert same.resolutions == (32, 16)
  assert same.per_level == (0.0, 0.0) and same.average == 0.0
  first = swd.sliced_wasserstein_distance(a, b, seed=0)
  assert first == swd.sliced_wasserstein_distance(a, b, seed=0)
  assert first.average > 1.0
  assert first.average == pytest.approx(np.mean(first.per_level))
  assert set(first.as_dict()) == {"swd_32", "swd_16", "swd_avg"}


def test_swd_grows_monotonically_with_the_shift():
  a = _smooth_images(4)
  # The shift: increasingly strong blur (a change of the local patch distribution at every scale).
  values = [swd.sliced_wasserstein_distance(a, scipy.ndimage.gaussian_filter(a, (0, s, s, 0)) if s else a).average
            for s in (0, 0.5, 1.0, 2.0)]
  assert values[0] == 0.0
  assert all(lo < hi for lo, hi in zip(values, values[1:])), values


def test_swd_ignores_a_per_channel_affine_change_of_a_whole_set():
  # Documented consequence of ProGAN's per-set normalisation.
  a = _smooth_images(5)
  assert swd.sliced_wasserstein_distance(a, 0.5 * a + 0.2).average < 1e-2


def test_swd_rejects_mismatched_or_tiny_sets():
  with pytest.raises(ValueError, match="same|one shape"):
    swd.sliced_wasserstein_distance(np.zeros((2, 16, 16, 3)), np.zeros((3, 16, 16, 3)))
  with pytest.raises(ValueError, match="16px"):
    swd.sliced_wasserstein_distance(np.zeros((2, 8, 8, 3)), np.zeros((2, 8, 8, 3)))
