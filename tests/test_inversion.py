"""The in-domain inversion engine: per-image independence, exact losses/gradients/Adam, sharding, masks."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from idinvert_jax import inversion

from conftest import LAYERS, RES, WDIM, stand_in_fns as _stand_in_fns  # pylint: disable=wrong-import-order


@pytest.fixture(scope="module")
def fns():
  return _stand_in_fns()


def _targets(n, seed=1):
  """Images the stand-in G can roughly make: G of random codes, plus noise."""
  fns = _stand_in_fns()
  rng = np.random.default_rng(seed)
  wp = rng.normal(size=(n, LAYERS, WDIM)).astype(np.float32)
  x = np.asarray(fns.synthesize(fns.variables["generator"], wp))
  return np.clip(x + 0.05 * rng.normal(size=x.shape), -1, 1).astype(np.float32)


def _config(**overrides):
  c = inversion.get_invert_config()
  c.num_iterations = 6
  c.chunk_size = 4
  c.num_results = 3
  c.loss_weight_feat = 0.05  # Larger than official so the (tiny) perceptual term matters in the checks.
  c.update(overrides)
  return c


def _plain_loss(fns, w, x, mask, c):
  """The in-domain objective written out directly, float32, summed over images of per-image means."""
  v = fns.variables
  rec = fns.synthesize(v["generator"], w)
  pix = jnp.mean(jnp.square((x - rec) * mask), axis=(1, 2, 3))
  feat = jnp.mean(jnp.square(fns.features(v["perceptual"], x * mask) - fns.features(v["perceptual"], rec * mask)),
                  axis=(1, 2, 3))
  enc = jnp.mean(jnp.square(w - fns.encode(v["encoder"], rec)), axis=(1, 2))
  return jnp.sum(c.loss_weight_pix * pix + c.loss_weight_feat * feat + c.loss_weight_enc * enc)


def test_loss_and_gradient_match_a_direct_float32_evaluation(fns):
  x = _targets(3)
  mask = (np.random.default_rng(2).uniform(size=(3, RES, RES, 1)) > 0.3).astype(np.float32)
  w = np.random.default_rng(3).normal(size=(3, LAYERS, WDIM)).astype(np.float32)
  c = _config()
  losses, grads = inversion.loss_and_grad(w, x, fns, c, mask=mask)
  want_total = jax.vmap(lambda *a: _plain_loss(fns, *(t[None] for t in a), c))(w, x, mask)
  want_grad = jax.grad(_plain_loss, argnums=1)(fns, w, x, mask, c)
  np.testing.assert_allclose(losses["total"], want_total, rtol=1e-5)
  assert np.all(losses["feat"] > 0) and np.all(losses["enc"] > 0)
  scale = np.abs(want_grad).max()
  assert np.abs(grads - want_grad).max() <= 1e-5 * scale


def test_engine_equals_a_plain_per_image_adam_loop(fns):
  """Codes after k steps equal a Python loop of optax Adam (lr .01, b1 .9, b2 .999, eps 1e-8) on each image."""
  x = _targets(2)
  c = _config(num_iterations=5, chunk_size=2)
  result = inversion.invert(x, fns, c, progress=False, devices=jax.devices()[:1])
  opt = optax.adam(0.01, b1=0.9, b2=0.999, eps=1e-8)
  grad = jax.jit(jax.grad(lambda w, xi: _plain_loss(fns, w, xi, jnp.ones(xi.shape[:3] + (1,)), c)))
  for i in range(2):
    w = fns.encode(fns.variables["encoder"], x[i:i + 1])
    np.testing.assert_allclose(result.encoder_codes[i:i + 1], w, atol=1e-6)
    state = opt.init(w)
    for _ in range(5):
      updates, state = opt.update(grad(w, x[i:i + 1]), state, w)
      w = optax.apply_updates(w, updates)
    np.testing.assert_allclose(result.codes[i], w[0], atol=1e-5)


def test_a_sweep_over_loss_weights_and_learning_rate_reuses_one_compiled_engine(fns):
  """Learning rate and loss weights are runtime inputs: evaluate's lambda_enc sweep compiles once, and every value
  still gives exactly its own optimisation (checked against a plain optax loop with that value)."""
  x = _targets(1)
  inverter = inversion.Inverter(fns)
  opt_grad = lambda c: jax.jit(jax.grad(lambda w, xi: _plain_loss(fns, w, xi, jnp.ones(xi.shape[:3] + (1,)), c)))
  for enc, lr in ((0.5, 0.01), (2.0, 0.01), (5.0, 0.03)):
    c = _config(num_iterations=3, chunk_size=3, loss_weight_enc=enc, learning_rate=lr)
    result = inversion.invert(x, inverter, c, progress=False, devices=jax.devices()[:1])
    grad, opt = opt_grad(c), optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)
    w = fns.encode(fns.variables["encoder"], x)
    state = opt.init(w)
    for _ in range(3):
      updates, state = opt.update(grad(w, x), state, w)
      w = optax.apply_updates(w, updates)
    np.testing.assert_allclose(result.codes, w, atol=1e-5)
  assert len(inverter.engines) == 1
  # Switching a term off changes the program (no encoder pass at all): a second engine.
  inversion.invert(x, inverter, _config(num_iterations=1, loss_weight_enc=0.0), progress=False,
                   devices=jax.devices()[:1])
  assert len(inverter.engines) == 2


def test_a_code_does_not_depend_on_the_other_images_in_its_batch(fns):
  x = _targets(8)
  c = _config(batch_size=8)
  together = inversion.invert(x, fns, c, progress=False, devices=jax.devices()[:1])
  alone = inversion.invert(x[5:6], fns, c, progress=False, devices=jax.devices()[:1])
  assert np.abs(together.codes[5] - alone.codes[0]).max() <= 1e-5
  assert np.abs(together.reconstructions[5] - alone.reconstructions[0]).max() <= 1e-5


def test_sharded_over_8_devices_equals_one_device_and_drops_padding(fns):
  x = _targets(5)
  c = _config(batch_size=3)  # Rounded up to 8 on 8 devices: one batch of 5 padded to 8.
  one = inversion.invert(x, fns, c, progress=False, devices=jax.devices()[:1])
  eight = inversion.invert(x, fns, c, progress=False, devices=jax.devices()[:8])
  assert eight.codes.shape == (5, LAYERS, WDIM) and eight.reconstructions.shape == (5, RES, RES, 3)
  assert np.abs(one.codes - eight.codes).max() <= 1e-5
  for name in inversion.LOSS_NAMES:
    assert eight.losses[name].shape == (5,)
    np.testing.assert_allclose(one.losses[name], eight.losses[name], rtol=1e-5, atol=1e-7)


def test_a_few_steps_reduce_the_loss_and_snapshots_follow_the_official_steps(fns):
  x = _targets(4)
  c = _config(num_iterations=30, chunk_size=7, num_results=3)
  result = inversion.invert(x, fns, c, progress=False, devices=jax.devices()[:1])
  start_losses, _ = inversion.loss_and_grad(result.encoder_codes, x, fns, c)
  assert np.all(result.losses["total"] < start_losses["total"])
  assert [s for s, _ in result.snapshots] == [10, 20, 30]
  np.testing.assert_allclose(result.snapshots[-1][1], result.reconstructions, atol=1e-6)
  assert [s for s, _ in result.loss_history] == [7, 10, 14, 20, 21, 28, 30]
  assert result.seconds_per_image > 0


def test_encoder_method_equals_g_of_e(fns):
  x = _targets(3)
  result = inversion.invert(x, fns, _config(method="encoder"), progress=False, devices=jax.devices()[:1])
  v = fns.variables
  wp = fns.encode(v["encoder"], x)
  np.testing.assert_allclose(result.codes, wp, atol=1e-6)
  np.testing.assert_allclose(result.reconstructions, fns.synthesize(v["generator"], wp), atol=1e-6)
  np.testing.assert_allclose(result.encoder_reconstructions, result.reconstructions, atol=1e-6)
  assert result.snapshots == [] and result.loss_history == []


def test_optimize_method_from_the_mean_needs_no_encoder():
  fns = _stand_in_fns(with_encoder=False)
  x = _targets(2)
  c = inversion.get_invert_config("optimize")
  assert (c.num_iterations, c.init, c.loss_weight_enc) == (1000, "mean", 0.0)
  c.num_iterations, c.num_results = 3, 0
  result = inversion.invert(x, fns, c, progress=False, devices=jax.devices()[:1])
  assert result.encoder_codes is None and result.snapshots == []
  assert np.all(result.losses["enc"] == 0)
  c.num_iterations = 0
  zero_steps = inversion.invert(x, fns, c, progress=False, devices=jax.devices()[:1])
  np.testing.assert_allclose(zero_steps.codes, np.broadcast_to(fns.w_avg, (2, LAYERS, WDIM)))
  with pytest.raises(inversion.InversionError, match="needs an encoder"):
    inversion.invert(x, fns, _config(), progress=False)


def test_mask_ignores_pixels_outside_it(fns):
  """Changing the target outside the mask changes nothing (pixel and perceptual terms both use the mask)."""
  x = _targets(2)
  mask = np.zeros((2, RES, RES, 1), np.float32)
  mask[:, 2:6, 2:6] = 1
  other = np.where(mask > 0, x, -x)
  c = _config(loss_weight_enc=0.0)
  a = inversion.invert(x, fns, c, mask=mask, progress=False, devices=jax.devices()[:1])
  assert np.all(a.losses["total"] < inversion.loss_and_grad(a.encoder_codes, x, fns, c, mask=mask)[0]["total"])
  # E (the init) sees the whole image, so compare the objective at common codes rather than whole runs.
  la, ga = inversion.loss_and_grad(a.codes, x, fns, c, mask=mask)
  lb, gb = inversion.loss_and_grad(a.codes, other, fns, c, mask=mask)
  np.testing.assert_allclose(la["total"], lb["total"], rtol=1e-6)
  np.testing.assert_allclose(ga, gb, atol=1e-7)
  lu, _ = inversion.loss_and_grad(a.codes, other, fns, c)
  assert np.all(lu["pix"] > la["pix"])


def test_bfloat16_compute_is_close_to_float32(fns):
  x = _targets(2)
  f32 = inversion.invert(x, fns, _config(), progress=False, devices=jax.devices()[:1])
  bf16 = inversion.invert(x, fns, _config(precision="bfloat16"), progress=False, devices=jax.devices()[:1])
  assert bf16.codes.dtype == np.float32
  code_diff = np.abs(f32.codes - bf16.codes).max()
  mse_gap = abs(float(np.mean(f32.losses["pix"])) - float(np.mean(bf16.losses["pix"])))
  assert 0 < code_diff < 0.05, code_diff
  assert mse_gap < 0.01, mse_gap


def test_user_errors_are_one_line_and_name_the_fix(fns):
  with pytest.raises(inversion.InversionError, match=r"expected \[N, 8, 8, 3\]"):
    inversion.invert(np.zeros((1, 16, 16, 3)), fns, _config(), progress=False)
  with pytest.raises(inversion.InversionError, match="method 'bogus'"):
    inversion.invert(_targets(1), fns, _config(method="bogus"), progress=False)
  with pytest.raises(inversion.InversionError, match="mask has shape"):
    inversion.invert(_targets(1), fns, _config(), mask=np.ones((1, RES, RES, 3)), progress=False)
  wrong = fns._replace(num_layers=LAYERS + 2)
  with pytest.raises(inversion.InversionError, match="does not accept W\\+ codes|takes"):
    inversion.check_models(wrong)


@pytest.mark.parametrize("field", ["learning_rate", "loss_weight_pix", "loss_weight_feat", "loss_weight_enc"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_non_finite_or_negative_hyper_parameters_are_refused_when_parsed(field, value):
  with pytest.raises(inversion.InversionError, match=rf"^invert: {field}={value}; use a finite value >= 0") as e:
    inversion.InvertSettings.from_config(None, **{field: value})
  assert "\n" not in str(e.value)
  for name, bad in (("num_iterations", -1), ("batch_size", 0), ("num_results", -1), ("chunk_size", 0)):
    with pytest.raises(inversion.InversionError, match=rf"^invert: {name}={bad}; use a value >= "):
      inversion.InvertSettings.from_config(None, **{name: bad})
