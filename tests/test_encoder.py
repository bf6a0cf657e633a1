"""Domain-guided encoder: official architecture size, BatchNorm semantics (train/inference, cross-device sync),
input checks and config building. Numerical parity with the official PyTorch encoder is in test_convert.py."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from idinvert_jax.models import encoder as encoder_lib
from idinvert_jax.models import generator as generator_lib


def official_encoder_parameter_count(resolution, w_dim=512, channels_base=64, channels_max=1024):
  """PyTorch `StyleGANEncoderNet(use_bn=True).parameters()` counted from its class definition.

  FirstBlock: conv3x3 no bias + BN(weight, bias). ResBlock(in, out): hidden = min(in, out); conv1x1 + BN when
  in != out; conv1 3x3 in->hidden + wscale1 bias + BN; conv2 3x3 hidden->out + wscale2 bias + BN.
  LastBlock: fc (16 * in) -> L * w_dim without bias + BN. Channels double from channels_base to channels_max.
  """
  num_blocks = int(math.log2(resolution))
  bn = lambda c: 2 * c
  in_c, out_c = 3, channels_base
  total = 0
  for block in range(num_blocks):
    if block == 0:
      total += 9 * in_c * out_c + bn(out_c)
    elif block == num_blocks - 1:
      fan_in, out_c = in_c * 16, w_dim * 2 * block
      total += fan_in * out_c + bn(out_c)
    else:
      hidden = min(in_c, out_c)
      if in_c != out_c:
        total += in_c * out_c + bn(out_c)
      total += 9 * in_c * hidden + hidden + bn(hidden)
      total += 9 * hidden * out_c + out_c + bn(out_c)
    in_c, out_c = out_c, min(out_c * 2, channels_max)
  return total


def test_official_256_encoder_has_the_official_parameter_count():
  E = encoder_lib.Encoder(resolution=256)
  shapes = jax.eval_shape(lambda: encoder_lib.init_encoder(E, jax.random.key(0)))
  trained = encoder_lib.count_params(shapes["params"])
  frozen_scales = sum(int(np.prod(leaf.shape)) for path, leaf in
                      jax.tree_util.tree_leaves_with_path(shapes["batch_stats"]) if path[-1].key == "scale")
  # 165,326,848 = sum(p.numel() for p in StyleGANEncoderNet(256, use_bn=True).parameters()), measured once.
  assert official_encoder_parameter_count(256) == 165_326_848
  assert trained + frozen_scales == 165_326_848, (trained, frozen_scales)
  assert trained == 165_310_720  # the frozen BN gammas (16,128) are not trained
  assert E.num_layers == 14


@pytest.mark.parametrize("resolution,base,cmax", [(32, 4, 16)])  # 4->8->16 shortcuts, then 16->16 identity
def test_small_encoders_match_the_official_count_and_output_shape(resolution, base, cmax):
  E = encoder_lib.Encoder(resolution=resolution, w_dim=8, channels_base=base, channels_max=cmax)
  variables = encoder_lib.init_encoder(E, jax.random.key(1))
  scales = sum(int(np.prod(v.shape)) for p, v in jax.tree_util.tree_leaves_with_path(variables["batch_stats"])
               if p[-1].key == "scale")
  assert encoder_lib.count_params(variables["params"]) + scales == official_encoder_parameter_count(
      resolution, 8, base, cmax)
  x = jax.random.uniform(jax.random.key(2), (3, resolution, resolution, 3), minval=-1, maxval=1)
  wp = encoder_lib.encode(E, variables, x)
  assert wp.shape == (3, generator_lib.num_wp_layers(resolution), 8)
  assert np.all(np.isfinite(wp))


def _bn_reference(x, mean, var, scale, bias, eps=1e-5):
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def test_batchnorm_train_uses_batch_statistics_and_updates_running_averages():
  bn = encoder_lib.BatchNorm()
  x = np.random.default_rng(0).normal(2.0, 3.0, (6, 5, 5, 4)).astype(np.float32)
  variables = bn.init(jax.random.key(0), x, train=True)
  stats = {"mean": np.full(4, 0.5, np.float32), "var": np.full(4, 2.0, np.float32),
           "scale": np.array([1.0, 2.0, 0.5, 1.5], np.float32)}
  variables = {"params": {"bias": np.array([0.1, -0.2, 0.3, 0.0], np.float32)}, "batch_stats": stats}
  y, updated = bn.apply(variables, x, train=True, mutable=["batch_stats"])
  batch_mean, batch_var = x.mean((0, 1, 2)), x.var((0, 1, 2))
  np.testing.assert_allclose(y, _bn_reference(x, batch_mean, batch_var, stats["scale"],
                                              variables["params"]["bias"]), rtol=1e-5, atol=1e-5)
  new = updated["batch_stats"]
  np.testing.assert_allclose(new["mean"], 0.9 * 0.5 + 0.1 * batch_mean, rtol=1e-5)
  np.testing.assert_allclose(new["var"], 0.9 * 2.0 + 0.1 * batch_var, rtol=1e-5)
  np.testing.assert_array_equal(new["scale"], stats["scale"])  # frozen: never updated
  # Inference uses the running statistics, whatever the batch.
  y_eval = bn.apply(variables, x, train=False)
  np.testing.assert_allclose(y_eval, _bn_reference(x, 0.5, 2.0, stats["scale"], variables["params"]["bias"]),
                             rtol=1e-5, atol=1e-5)


def test_batchnorm_axis_name_synchronises_statistics_across_devices():
  devices = np.array(jax.devices()[:4])
  assert len(devices) == 4, "conftest provides 8 simulated devices"
  E = encoder_lib.Encoder(resolution=8, w_dim=4, channels_base=4, channels_max=8)
  E_sync = E.clone(bn_axis_name="data")
  variables = encoder_lib.init_encoder(E, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (8, 8, 8, 3)) * 0.5 + 0.2

  def step(module):
    def run(vs, images):
      wp, updated = module.apply(vs, images, train=True, mutable=["batch_stats"])
      return wp, updated["batch_stats"]
    return run

  wp_full, stats_full = jax.jit(step(E))(variables, x)
  mesh = Mesh(devices, ("data",))
  sharded = jax.jit(jax.shard_map(step(E_sync), mesh=mesh, in_specs=(P(), P("data")),
                                  out_specs=(P("data"), P()), check_vma=False))
  wp_sync, stats_sync = sharded(variables, x)
  np.testing.assert_allclose(wp_sync, wp_full, rtol=1e-4, atol=1e-4)
  for a, b in zip(jax.tree_util.tree_leaves(stats_sync), jax.tree_util.tree_leaves(stats_full)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Without the axis name each device would normalise with its own 2 images: a different result.
  unsynced = jax.jit(jax.shard_map(step(E), mesh=mesh, in_specs=(P(), P("data")),
                                   out_specs=(P("data"), P()), check_vma=False))(variables, x)[0]
  assert np.abs(np.asarray(unsynced) - np.asarray(wp_full)).max() > 1e-3


def test_last_block_flattens_in_nchw_order():
  """The dense row for input (c, h, w) is at c * 16 + h * 4 + w, as in the official NCHW `view`."""
  E = encoder_lib.Encoder(resolution=8, w_dim=2, channels_base=2, channels_max=4)
  variables = jax.tree_util.tree_map(np.asarray, encoder_lib.init_encoder(E, jax.random.key(0)))
  kernel = np.zeros_like(variables["params"]["block2_dense"]["kernel"])
  channels = kernel.shape[0] // 16
  # Output unit 0 reads channel 1, row 2, column 3 of the 4x4 map only.
  kernel[1 * 16 + 2 * 4 + 3, 0] = math.sqrt(kernel.shape[0])  # undo the runtime 1/sqrt(fan_in)
  variables["params"]["block2_dense"]["kernel"] = kernel
  x = jax.random.normal(jax.random.key(3), (2, 8, 8, 3))
  wp, state = jax.jit(lambda v, x: E.apply(v, x, train=False, capture_intermediates=True,
                                           mutable=["intermediates"]))(variables, x)
  features = {"map": state["intermediates"]["block1"]["__call__"][0]}  # the 4x4 map entering the last block
  assert channels >= 2 and features["map"].shape == (2, 4, 4, channels)
  expected = features["map"][:, 2, 3, 1]  # NHWC map: row 2, column 3, channel 1
  np.testing.assert_allclose(wp[:, 0, 0], expected / np.sqrt(1 + 1e-5), rtol=1e-5, atol=1e-6)


def test_wrong_input_shape_is_a_clear_error():
  E = encoder_lib.Encoder(resolution=16, w_dim=4, channels_base=4, channels_max=8)
  variables = encoder_lib.init_encoder(E, jax.random.key(0))
  with pytest.raises(ValueError, match=r"\[N, 16, 16, 3\]"):
    encoder_lib.encode(E, variables, jnp.zeros((1, 3, 16, 16)))
  with pytest.raises(ValueError, match="resolution 12"):
    encoder_lib.init_encoder(encoder_lib.Encoder(resolution=12), jax.random.key(0))


def test_build_encoder_from_model_config():
  model = ml_collections.ConfigDict({
      "resolution": 32, "image_channels": 3, "generator": {"w_dim": 24},
      "encoder": {"channels_base": 8, "channels_max": 16}})
  E = encoder_lib.build_encoder(model)
  assert (E.resolution, E.w_dim, E.channels_base, E.channels_max, E.num_layers) == (32, 24, 8, 16, 8)
  model.resolution = 48
  with pytest.raises(ValueError, match="config.model.resolution=48"):
    encoder_lib.build_encoder(model)
