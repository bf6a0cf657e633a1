"""Frechet distance: closed forms for Gaussians, identity, named features, extractors."""
import numpy as np
import pytest

from idinvert_jax.metrics import frechet


def test_closed_form_for_diagonal_gaussians():
  mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  var_a, var_b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
  # Commuting covariances: Tr(S_a + S_b - 2 sqrt(S_a S_b)) = sum (sqrt(var_a) - sqrt(var_b))^2.
  want = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
  got = frechet.frechet_distance_from_stats(mu_a, np.diag(var_a), mu_b, np.diag(var_b))
  assert got == pytest.approx(want, rel=1e-10)
  assert want == pytest.approx(7.0)


def test_closed_form_for_full_covariances_against_eigendecomposition():
  rng = np.random.default_rng(0)
  m = rng.normal(size=(4, 4))
  sigma_a = m @ m.T + np.eye(4)
  sigma_b = 2.5 * sigma_a  # S_b = c S_a -> sqrt(S_a S_b) = sqrt(c) S_a.
  want = (1 + 2.5 - 2 * np.sqrt(2.5)) * np.trace(sigma_a)
  assert frechet.frechet_distance_from_stats(np.zeros(4), sigma_a, np.zeros(4), sigma_b) == pytest.approx(want)


def test_identical_sets_zero_and_shifted_sample_gives_squared_shift():
  features = np.random.default_rng(1).normal(size=(400, 8))
  same = frechet.frechet_distance(features, features, "gaussian_samples")
  assert abs(same["frechet_distance"]) < 1e-6
  shift = np.array([0.5, -1.0, 0, 0, 0, 0, 0, 2.0])
  shifted = frechet.frechet_distance(features, features + shift, "gaussian_samples")
  # Equal sample covariances: the trace term vanishes and d^2 = |shift|^2 exactly.
  assert shifted["frechet_distance"] == pytest.approx(shift @ shift, rel=1e-6)
  assert shifted["feature_name"] == "gaussian_samples"
  assert (shifted["num_a"], shifted["num_b"], shifted["feature_dim"]) == (400, 400, 8)


def test_independent_gaussian_samples_converge_to_the_population_value():
  rng = np.random.default_rng(2)
  a = rng.normal(size=(20000, 3))
  b = rng.normal(size=(20000, 3)) * 2.0 + 1.0
  want = 3 * 1.0 + 3 * (2.0 - 1.0) ** 2  # |mu|^2 + sum (sqrt(1) - sqrt(4))^2.
  assert frechet.frechet_distance(a, b, "g")["frechet_distance"] == pytest.approx(want, rel=0.03)


def test_pixel_projection_features_are_fixed_and_named():
  images = np.random.default_rng(3).uniform(-1, 1, (6, 32, 32, 3)).astype(np.float32)
  f1, name = frechet.pixel_projection_features(images)
  f2, _ = frechet.pixel_projection_features(images)
  assert f1.shape == (6, 64) and name == "random_projection64_pixels16"
  np.testing.assert_array_equal(f1, f2)
  # Box downsampling: a constant image of value v maps to v times the column sums of the projection.
  flat = np.full((1, 32, 32, 3), 0.5, np.float32)
  got, _ = frechet.pixel_projection_features(flat)
  np.testing.assert_allclose(got[0], 0.5 * frechet._projection_matrix(768, 64, 0).sum(axis=0), rtol=1e-5)


def test_image_level_distance_grows_with_a_colour_shift_and_requires_a_name():
  images = np.random.default_rng(4).uniform(-0.5, 0.5, (80, 16, 16, 3)).astype(np.float32)
  values = [frechet.frechet_distance_images(images, images + s)["frechet_distance"] for s in (0.0, 0.1, 0.3)]
  assert abs(values[0]) < 1e-6 and values[0] < values[1] < values[2]
  result = frechet.frechet_distance_images(images, images)
  assert result["feature_name"] == "random_projection64_pixels16" and "fid" not in str(result).lower()
  with pytest.raises(ValueError, match="feature_name"):
    frechet.frechet_distance(images.reshape(80, -1), images.reshape(80, -1), "")


def test_vgg_extractor_is_used_when_weights_are_given():
  import flax.linen as nn
  import jax

  class _Features(nn.Module):  # Stand-in for VGG16Features: one conv4_3 map.
    @nn.compact
    def __call__(self, x):
      return nn.relu(nn.Conv(5, (3, 3))(x))

  module = _Features()
  images = np.random.default_rng(5).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
  variables = module.init(jax.random.PRNGKey(0), images[:1])
  features, name = frechet.image_features(images, module, variables)
  assert name == "vgg16_conv4_3_mean" and features.shape == (4, 5)
  np.testing.assert_allclose(features, np.asarray(module.apply(variables, images)).mean(axis=(1, 2)), rtol=1e-5)
  assert frechet.image_features(images, module, None)[1] == "random_projection64_pixels16"
