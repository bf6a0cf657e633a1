"""Semantic diffusion: crop geometry, stitching, and a masked objective that ignores pixels outside the crop."""
import jax
import numpy as np
import pytest

from idinvert_jax import inversion
import idinvert_jax.editing.diffuse as diffuse_lib

from conftest import LAYERS, RES, WDIM, stand_in_fns  # pylint: disable=wrong-import-order


def _fns(with_encoder=True):
  return stand_in_fns(with_encoder=with_encoder)


def _section(**overrides):
  config = inversion.get_invert_config()
  config.num_iterations = 5
  config.chunk_size = 5
  config.num_results = 1
  config.batch_size = 8
  config.loss_weight_feat = 0.05  # Large enough that the perceptual term matters here.
  config.loss_weight_enc = 0.0
  config.update(overrides)
  return config


def _images(n, seed):
  return np.random.default_rng(seed).uniform(-1, 1, size=(n, RES, RES, 3)).astype(np.float32)


def test_default_crop_is_official_at_256_and_scales():
  assert diffuse_lib.default_crop(256) == (110, 125, 145)
  assert diffuse_lib.default_crop(1024) == (440, 500, 580)
  assert diffuse_lib.default_crop(32) == (14, 16, 18)


def test_crop_mask_square_and_bounds():
  mask = diffuse_lib.crop_mask(16, 4, center_x=6, center_y=9)
  assert mask.shape == (16, 16, 1) and mask.sum() == 16
  rows, cols = np.nonzero(mask[..., 0])
  assert (rows.min(), rows.max(), cols.min(), cols.max()) == (7, 10, 4, 7)
  with pytest.raises(ValueError, match="does not fit a 16 px image"):
    diffuse_lib.crop_mask(16, 8, center_x=2, center_y=8)


def test_stitch_pastes_target_inside_and_keeps_context_outside():
  target, contexts = _images(1, 0)[0], _images(3, 1)
  mask = diffuse_lib.crop_mask(RES, 4, 4, 4)
  stitched = np.asarray(jax.jit(diffuse_lib.stitch)(target, contexts, mask))
  inside = mask[..., 0] > 0
  for c in range(3):
    np.testing.assert_array_equal(stitched[c][inside], target[inside])
    np.testing.assert_array_equal(stitched[c][~inside], contexts[c][~inside])


def test_masked_objective_ignores_pixels_outside_the_mask():
  fns = _fns()
  mask = diffuse_lib.crop_mask(RES, 4, 4, 4)
  masks = np.broadcast_to(mask[None], (2, RES, RES, 1)).copy()
  images = _images(2, 2)
  outside_changed = np.where(mask[None] > 0, images, _images(2, 3))
  inside_changed = np.where(mask[None] > 0, _images(2, 4), images)
  codes = np.random.default_rng(5).normal(size=(2, LAYERS, WDIM)).astype(np.float32)
  losses, grads = inversion.loss_and_grad(codes, images, fns, _section(), mask=masks)
  losses_out, grads_out = inversion.loss_and_grad(codes, outside_changed, fns, _section(), mask=masks)
  losses_in, grads_in = inversion.loss_and_grad(codes, inside_changed, fns, _section(), mask=masks)
  for name in ("pix", "feat", "total"):
    np.testing.assert_array_equal(losses_out[name], losses[name])
  np.testing.assert_array_equal(grads_out, grads)
  assert losses["feat"].min() > 0
  # Positive control: pixels inside the mask do matter.
  assert not np.allclose(losses_in["total"], losses["total"])
  assert not np.allclose(grads_in, grads)


def test_masked_optimisation_result_ignores_outside_pixels():
  """From a fixed start (the mean code), the whole optimisation is unaffected by pixels outside the crop."""
  fns = _fns(with_encoder=False)
  mask = diffuse_lib.crop_mask(RES, 4, 3, 5)
  masks = np.broadcast_to(mask[None], (2, RES, RES, 1)).copy()
  images = _images(2, 6)
  changed = np.where(mask[None] > 0, images, -images)
  section = _section(init="mean", method="optimize")
  a = inversion.invert(images, fns, section, mask=masks, progress=False)
  b = inversion.invert(changed, fns, section, mask=masks, progress=False)
  np.testing.assert_array_equal(a.codes, b.codes)
  assert not np.allclose(a.codes, np.broadcast_to(fns.w_avg, a.codes.shape))  # It did optimise.


def test_diffuse_runs_batched_over_contexts():
  fns = _fns()
  target, contexts = _images(1, 7)[0], _images(3, 8)
  result = diffuse_lib.diffuse(target, contexts, fns, _section(batch_size=2), crop_size=4, center_x=4,
                               center_y=4)
  assert result.codes.shape == (3, LAYERS, WDIM) and result.results.shape == (3, RES, RES, 3)
  assert result.encoder_codes.shape == (3, LAYERS, WDIM) and result.encoder_outputs.shape == (3, RES, RES, 3)
  np.testing.assert_array_equal(result.stitched, np.asarray(diffuse_lib.stitch(target, contexts, result.mask)))
  np.testing.assert_allclose(result.encoder_codes, np.asarray(fns.encode(fns.variables["encoder"],
                                                                         result.stitched)), atol=1e-5)
  # Adam moved the codes away from the encoder's.
  assert not np.allclose(result.codes, result.encoder_codes)
  assert [step for step, _ in result.snapshots] == [5]
  with pytest.raises(ValueError, match="loss_weight_enc"):
    diffuse_lib.diffuse(target, contexts, fns, _section(loss_weight_enc=2.0), 4, 4, 4)


def test_diffusion_settings_turn_off_the_encoder_term():
  import ml_collections
  config = ml_collections.ConfigDict({"model": {"resolution": 8}, "invert": _section(loss_weight_enc=2.0,
                                                                                    num_iterations=50)})
  section = diffuse_lib.diffusion_settings(config, learning_rate=0.1)
  assert section.loss_weight_enc == 0.0 and section.method == "indomain" and section.init == "encoder"
  assert section.num_iterations == 50 and section.learning_rate == 0.1


def test_a_diverged_diffusion_fails_with_the_pair_named_and_writes_nothing():
  from idinvert_jax.editing import jobs  # pylint: disable=import-outside-toplevel
  target, contexts = _images(1, 7), _images(2, 8)
  settings = inversion.InvertSettings.from_config(_section(learning_rate=1e38, loss_weight_feat=0.0))
  with pytest.raises(ValueError, match=r"diffusion of target_0 into context_0, context_1 diverged \(non-finite "
                     r"codes at learning rate 1e\+38\); nothing was written; lower --learning_rate"):
    jobs.diffuse(_fns(), target, contexts, settings, crop_size=4, center_x=4, center_y=4)
  # A sane rate on the same inputs passes the guard.
  result = jobs.diffuse(_fns(), target, contexts, settings.replace(learning_rate=0.01), crop_size=4, center_x=4,
                        center_y=4)
  assert np.isfinite(result.codes).all()
