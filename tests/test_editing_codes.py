"""Pure W+ code edits: interpolation, manipulation (plain and conditional), style mixing."""
import jax
import numpy as np
import pytest

import idinvert_jax.editing.interpolate as interp_lib
import idinvert_jax.editing.manipulate as manip_lib
import idinvert_jax.editing.style_mix as style_mix


def _codes(seed, n, layers=6, dim=8):
  return np.random.default_rng(seed).normal(size=(n, layers, dim)).astype(np.float32) * 3.0


def test_interpolation_endpoints_reproduce_inputs_exactly_and_middle_is_linear():
  src, dst = _codes(0, 3), _codes(1, 3)
  codes = np.asarray(jax.jit(interp_lib.interpolate, static_argnums=2)(src, dst, 7))
  assert codes.shape == (3, 7, 6, 8)
  np.testing.assert_array_equal(codes[:, 0], src)
  np.testing.assert_array_equal(codes[:, -1], dst)
  np.testing.assert_allclose(codes[:, 3], (src + dst) / 2, rtol=1e-6, atol=1e-6)
  # Evenly spaced: every consecutive difference equals (dst - src) / 6.
  np.testing.assert_allclose(np.diff(codes, axis=1), np.broadcast_to(((dst - src) / 6)[:, None], (3, 6, 6, 8)),
                             rtol=1e-5, atol=1e-5)


def test_interpolation_all_pairs_orders_source_then_target():
  src, dst = _codes(2, 2), _codes(3, 3)
  codes = np.asarray(interp_lib.interpolate_all_pairs(src, dst, 4))
  assert codes.shape == (2, 3, 4, 6, 8)
  for s in range(2):
    for t in range(3):
      np.testing.assert_array_equal(codes[s, t, 0], src[s])
      np.testing.assert_array_equal(codes[s, t, -1], dst[t])


def test_interpolation_refuses_mismatched_shapes():
  with pytest.raises(ValueError, match="differ in shape"):
    interp_lib.interpolate(_codes(0, 2), _codes(1, 3), 5)


def test_manipulation_changes_only_listed_layers_by_exactly_d_times_n():
  codes = _codes(4, 3)
  direction = _codes(5, 1)[0]
  distances = manip_lib.edit_distances(-3.0, 3.0, 7)
  layers = (1, 4)
  fn = jax.jit(manip_lib.manipulate, static_argnames="layers")
  edited = np.asarray(fn(codes, direction, distances, layers=layers))
  assert edited.shape == (3, 7, 6, 8)
  for i, d in enumerate(distances):
    for layer in range(6):
      if layer in layers:
        # Float32 reference (XLA may fuse the multiply-add, so allow an ulp of the result).
        np.testing.assert_allclose(edited[:, i, layer], codes[:, layer] + np.float32(d) * direction[layer],
                                   rtol=2e-7, atol=1e-6)
        np.testing.assert_allclose(edited[:, i, layer] - codes[:, layer],
                                   np.broadcast_to(d * direction[layer], (3, 8)), atol=1e-5)
      else:
        np.testing.assert_array_equal(edited[:, i, layer], codes[:, layer])
  # d = 0 (the middle step) is the input itself.
  np.testing.assert_array_equal(edited[:, 3], codes)


def test_manipulation_truncation_strength_scales_early_layers():
  codes, direction = _codes(6, 2), _codes(7, 1)[0]
  strength = manip_lib.truncation_strength(6, 0.7, 2)
  np.testing.assert_allclose(strength, [0.7, 0.7, 1, 1, 1, 1])
  edited = np.asarray(manip_lib.manipulate(codes, direction, np.array([2.0], np.float32), strength=strength))
  np.testing.assert_allclose(edited[:, 0] - codes, np.broadcast_to(2.0 * direction * strength[:, None], codes.shape),
                             rtol=1e-5, atol=1e-5)


def test_layerwise_direction_repeats_w_space_normals_and_checks_layers():
  normal = np.arange(8, dtype=np.float32)[None]
  np.testing.assert_array_equal(manip_lib.layerwise_direction(normal, 3), np.tile(normal, (3, 1)))
  np.testing.assert_array_equal(manip_lib.layerwise_direction(_codes(0, 1), 6), _codes(0, 1)[0])
  with pytest.raises(ValueError, match="does not fit a generator with 5"):
    manip_lib.layerwise_direction(_codes(0, 1), 5)
  with pytest.raises(ValueError, match="out of range"):
    manip_lib.manipulate(_codes(0, 2), _codes(0, 1)[0], np.zeros((1,), np.float32), layers=(6,))


@pytest.mark.parametrize("num_conditions", [1, 2, 3])
def test_conditional_direction_is_orthogonal_to_conditions(num_conditions):
  primal = _codes(8, 1)[0]
  conditions = [_codes(9 + i, 1)[0] + 0.5 * primal for i in range(num_conditions)]  # Correlated on purpose.
  layers = (0, 2, 3)
  direction = manip_lib.conditional_direction(primal, conditions, layers=layers)
  mask = np.zeros((6, 1), np.float32)
  mask[list(layers)] = 1
  assert np.all(direction[[1, 4, 5]] == 0)
  np.testing.assert_allclose(np.linalg.norm(direction), np.linalg.norm(primal * mask), rtol=1e-5)
  # The actual edit (on the chosen layers only) leaves every condition's decision value unchanged.
  codes = _codes(20, 4)
  edited = np.asarray(manip_lib.manipulate(codes, direction, np.array([3.0], np.float32), layers=layers))[:, 0]
  for condition in conditions:
    before = np.einsum("nld,ld->n", codes, condition)
    after = np.einsum("nld,ld->n", edited, condition)
    np.testing.assert_allclose(after, before, atol=1e-3)
    cosine = np.sum(direction * condition) / np.linalg.norm(direction) / np.linalg.norm(condition)
    assert abs(cosine) < 1e-5
  # It still moves along the primal: positive correlation with it.
  assert np.sum(direction * primal) > 0


def test_conditional_direction_closed_form_for_one_condition():
  """InterFaceGAN's one-condition closed form: (n1 - (n1.n2) n2) / ||...|| for unit n1, n2."""
  rng = np.random.default_rng(0)
  n1, n2 = rng.normal(size=(2, 1, 16))
  n1, n2 = n1 / np.linalg.norm(n1), n2 / np.linalg.norm(n2)
  expected = n1 - np.sum(n1 * n2) * n2
  expected /= np.linalg.norm(expected)
  np.testing.assert_allclose(manip_lib.conditional_direction(n1, [n2]), expected, rtol=1e-5, atol=1e-6)


def test_conditional_direction_refuses_primal_inside_condition_span():
  primal = _codes(1, 1)[0]
  with pytest.raises(ValueError, match="span"):
    manip_lib.conditional_direction(primal, [2.0 * primal])


def test_style_mixing_copies_exactly_the_chosen_layers():
  styles, contents = _codes(30, 2), _codes(31, 3)
  mixed = np.asarray(jax.jit(style_mix.mix_styles, static_argnums=2)(styles, contents, (4, 5)))
  assert mixed.shape == (2, 3, 6, 8)
  for s in range(2):
    for c in range(3):
      np.testing.assert_array_equal(mixed[s, c, 4:], styles[s, 4:])
      np.testing.assert_array_equal(mixed[s, c, :4], contents[c, :4])


def test_default_mix_layer_start_scales_official_choice():
  assert style_mix.default_mix_layer_start(14) == 10
  assert style_mix.default_mix_layer_start(18) == 13
  assert style_mix.default_mix_layer_start(8) == 6
