"""Reconstruction metrics against known values and a straightforward numpy/scipy reference."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from idinvert_jax.metrics import reconstruction as rec


def _images(seed, n=3, size=16):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def _ssim_reference(a, b):
  """Wang et al. SSIM written out in float64 numpy/scipy: Gaussian 11x11 / 1.5, 'valid', on [0, 255]."""
  x, y = a.astype(np.float64) * 127.5 + 127.5, b.astype(np.float64) * 127.5 + 127.5
  offsets = np.arange(11) - 5.0
  g = np.exp(-offsets ** 2 / (2 * 1.5 ** 2))
  window = np.outer(g, g) / np.outer(g, g).sum()
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  out = np.zeros(a.shape[0])
  for n in range(a.shape[0]):
    per_channel = []
    for c in range(a.shape[-1]):
      def f(img):
        full = scipy.ndimage.correlate(img, window, mode="constant")
        return full[5:-5, 5:-5]  # 'valid' part: the window never leaves the image.
      xi, yi = x[n, :, :, c], y[n, :, :, c]
      mx, my = f(xi), f(yi)
      vx, vy, cxy = f(xi * xi) - mx ** 2, f(yi * yi) - my ** 2, f(xi * yi) - mx * my
      s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
      per_channel.append(s.mean())
    out[n] = np.mean(per_channel)
  return out


def test_identical_images_mse_zero_psnr_inf_ssim_one():
  a = _images(0)
  np.testing.assert_array_equal(rec.mse(a, a), 0.0)
  np.testing.assert_array_equal(rec.mse_uint8(a, a), 0.0)
  assert np.all(np.isposinf(rec.psnr(a, a)))
  np.testing.assert_allclose(rec.ssim(a, a), 1.0, atol=1e-5)


def test_mse_and_psnr_known_values():
  a = np.zeros((2, 4, 4, 3), np.float32)
  b = a.copy()
  b[0] += 0.5                  # Every pixel off by 0.5 on [-1, 1] -> MSE 0.25.
  b[1, :2] += 1.0              # Half the pixels off by 1.0 -> MSE 0.5.
  np.testing.assert_allclose(rec.mse(a, b), [0.25, 0.5], rtol=1e-6)
  # On [0, 255] the errors are 63.75 and 127.5 (half the pixels): PSNR = 10 log10(255^2 / mse255).
  expected = [10 * np.log10(255 ** 2 / 63.75 ** 2), 10 * np.log10(255 ** 2 / (0.5 * 127.5 ** 2))]
  np.testing.assert_allclose(rec.psnr(a, b), expected, rtol=1e-5)


def test_mse_uint8_rounds_like_png():
  a = np.zeros((1, 2, 2, 3), np.float32)
  b = np.full_like(a, 0.003)   # 0.003 * 127.5 = 0.38 -> rounds to the same uint8 level 128 as 0.
  assert float(rec.mse(a, b)[0]) > 0
  assert float(rec.mse_uint8(a, b)[0]) == 0.0


def test_ssim_matches_numpy_scipy_reference():
  a = _images(1)
  b = np.clip(a + 0.3 * _images(2), -1, 1)
  smooth = scipy.ndimage.uniform_filter(a, size=(1, 3, 3, 1))  # A structured, correlated pair too.
  for x, y in ((a, b), (a, smooth)):
    np.testing.assert_allclose(rec.ssim(x, y), _ssim_reference(x, y), rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(rec.ssim(a, b)) < 0.99)  # Not trivially 1.


def test_ssim_drops_with_noise_and_rejects_small_images():
  a = _images(3, n=1, size=24)
  noise = _images(4, n=1, size=24)
  values = [float(rec.ssim(a, np.clip(a + s * noise, -1, 1))[0]) for s in (0.05, 0.2, 0.5)]
  assert values[0] > values[1] > values[2]
  with pytest.raises(ValueError, match="window"):
    rec.ssim(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="NHWC"):
    rec.mse(np.zeros((1, 8, 8, 3)), np.zeros((2, 8, 8, 3)))


class _TinyFeatures(nn.Module):
  """Stand-in perceptual net returning named feature maps, like the VGG16 module."""

  @nn.compact
  def __call__(self, x):
    h = nn.Conv(4, (3, 3))(x)
    return {"conv4_3": h, "conv1_1": x}


def test_perceptual_distance_mean_squared_features_and_none_without_weights():
  module = _TinyFeatures()
  a, b = _images(5, n=5, size=8), _images(6, n=5, size=8)
  variables = module.init(jax.random.PRNGKey(0), a[:1])
  got = rec.perceptual_distance(module, variables, a, b, batch_size=2)
  fa, fb = module.apply(variables, a)["conv4_3"], module.apply(variables, b)["conv4_3"]
  np.testing.assert_allclose(got, jnp.mean((fa - fb) ** 2, axis=(1, 2, 3)), rtol=1e-5)
  np.testing.assert_allclose(rec.perceptual_distance(module, variables, a, a), 0.0, atol=1e-7)
  assert rec.perceptual_distance(module, None, a, b) is None
  assert rec.perceptual_distance(None, variables, a, b) is None
