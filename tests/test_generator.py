"""StyleGAN-v1 generator and its layers: numpy references, official conventions, jit/vmap, truncation, noise."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ffhq256, tiny
from idinvert_jax import models
from idinvert_jax.models import generator as gen
from idinvert_jax.models import layers

# ---------------------------------------------------------------------------------------------------------------
# numpy references (float64), written from the official definitions, independent of the JAX code


def np_lrelu(x):
  return np.where(x >= 0, x, 0.2 * x)


def np_conv(x, k, stride=1, pad=None):
  """Cross-correlation NHWC x HWIO with zero padding (TF/PyTorch conv2d)."""
  kh = k.shape[0]
  pad = kh // 2 if pad is None else pad
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho, wo = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kh) // stride + 1
  out = np.zeros((x.shape[0], ho, wo, k.shape[3]))
  for a in range(kh):
    for b in range(kh):
      patch = xp[:, a:a + stride * (ho - 1) + 1:stride, b:b + stride * (wo - 1) + 1:stride]
      out += np.einsum("nhwc,co->nhwo", patch, k[a, b])
  return out


def np_up(x):
  return x.repeat(2, axis=1).repeat(2, axis=2)


def np_blur(x):
  k = np.outer([1, 2, 1], [1, 2, 1]) / 16.0
  c = x.shape[-1]
  return np_conv(x, np.einsum("ab,cd->abcd", k, np.eye(c)))


def np_conv_transpose_torch(x, k4, pad=1):
  """PyTorch conv_transpose2d(stride=2, padding=pad) by scattering: out[2i + a - pad] += x[i] * k[a]."""
  n, h, w, _ = x.shape
  kh = k4.shape[0]
  full = np.zeros((n, 2 * (h - 1) + kh, 2 * (w - 1) + kh, k4.shape[3]))
  for a in range(kh):
    for b in range(kh):
      full[:, a:a + 2 * h:2, b:b + 2 * w:2] += np.einsum("nhwc,co->nhwo", x, k4[a, b])
  return full[:, pad:pad + 2 * h, pad:pad + 2 * w]


def np_instance_norm(x):
  x = x - x.mean(axis=(1, 2), keepdims=True)
  return x / np.sqrt((x ** 2).mean(axis=(1, 2), keepdims=True) + 1e-8)


def np_dense(x, p, gain=np.sqrt(2.0), lr_mul=1.0):
  k = np.asarray(p["kernel"], np.float64)
  return x @ (k * gain / np.sqrt(k.shape[0]) * lr_mul) + np.asarray(p["bias"], np.float64) * lr_mul


def np_epilogue(x, w, p, noise):
  x = x + noise * p["noise_weight"]
  x = np_instance_norm(np_lrelu(x + p["bias"]))
  style = np_dense(w, p["style"], gain=1.0)
  c = x.shape[-1]
  return x * (style[:, None, None, :c] + 1) + style[:, None, None, c:]


def np_tree(tree):
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def randomize(variables, seed, scale=0.3):
  """Non-zero values everywhere (biases, noise strengths, w_avg start at zero) so every term is exercised.

  numpy draws: one eager jax.random call per new shape would compile a sampler each time.
  """
  rs = np.random.RandomState(seed)
  return jax.tree_util.tree_map(
      lambda x: jnp.asarray(np.asarray(x) + scale * rs.randn(*x.shape).astype(np.float32)), variables)


def small_generator(resolution, **kw):
  cfg = dict(resolution=resolution, z_dim=8, w_dim=8, mapping_layers=2, mapping_fmaps=8, fmaps_base=64,
             fmaps_max=8)
  cfg.update(kw)
  return gen.Generator(**cfg)


@pytest.fixture(scope="module")
def tiny_model():
  """The project's tiny config with randomised biases / noise strengths / w_avg."""
  G = models.build_generator(tiny.get_config().model)
  variables = randomize(models.init_generator(G, jax.random.PRNGKey(0)), 1, 0.2)
  return G, variables


# ---------------------------------------------------------------------------------------------------------------
# layers


def test_blur_matches_numpy():
  x = np.random.RandomState(0).randn(2, 7, 6, 3).astype(np.float32)
  np.testing.assert_allclose(layers.blur(x), np_blur(x), atol=1e-6)
  np.testing.assert_allclose(layers.blur_kernel(), np.outer([1, 2, 1], [1, 2, 1]) / 16.0)


def test_pixel_and_instance_norm_and_style_modulation_match_numpy():
  rs = np.random.RandomState(1)
  z = rs.randn(3, 10).astype(np.float32) * 4
  np.testing.assert_allclose(layers.pixel_norm(z), z / np.sqrt((z.astype(np.float64) ** 2).mean(1, keepdims=True)
                                                                + 1e-8), rtol=1e-5)
  x = (rs.randn(2, 5, 5, 4) * 3 + 1).astype(np.float32)
  np.testing.assert_allclose(layers.instance_norm(x), np_instance_norm(x.astype(np.float64)), atol=1e-5)
  style = rs.randn(2, 8).astype(np.float32)
  expected = x * (style[:, None, None, :4] + 1) + style[:, None, None, 4:]  # [scale, shift] order
  np.testing.assert_allclose(layers.style_modulate(x, style), expected, atol=1e-5)


def test_epilogue_order_matches_numpy():
  x = np.random.RandomState(2).randn(2, 8, 8, 4).astype(np.float32)
  w = np.random.RandomState(3).randn(2, 6).astype(np.float32)
  module = layers.Epilogue(resolution=8)
  variables = module.init({"params": jax.random.PRNGKey(0)}, x, w)
  variables = randomize(variables, 1)
  apply = jax.jit(module.apply, static_argnums=3)
  out = apply(variables, x, w, "const")
  ref = np_epilogue(x.astype(np.float64), w.astype(np.float64), np_tree(variables["params"]),
                    np.asarray(variables["buffers"]["noise"], np.float64))
  np.testing.assert_allclose(out, ref, atol=2e-5)
  without_noise = apply(variables, x, w, "none")
  ref0 = np_epilogue(x.astype(np.float64), w.astype(np.float64), np_tree(variables["params"]), 0.0)
  np.testing.assert_allclose(without_noise, ref0, atol=2e-5)
  assert np.abs(out - without_noise).max() > 1e-3


def test_fused_upconv_equals_upsample_conv_with_flipped_kernel():
  rs = np.random.RandomState(4)
  x = rs.randn(2, 5, 5, 3).astype(np.float32)
  k = rs.randn(3, 3, 3, 4).astype(np.float32)
  fused = layers.upconv2d(x, k, fused=True)
  # The transposed conv scatters the kernel: it equals nearest-up + cross-correlation with the kernel flipped
  # in both spatial axes, k[::-1, ::-1] (so fused and non-fused layers share a layout but not a kernel).
  separate = layers.upconv2d(x, k[::-1, ::-1], fused=False)
  assert fused.shape == (2, 10, 10, 4)
  assert float(jnp.abs(fused - separate).max()) <= 1e-5
  # Without the flip they differ: the test can tell the two conventions apart.
  assert float(jnp.abs(fused - layers.upconv2d(x, k, fused=False)).max()) > 1e-2
  # And the fused path is PyTorch's conv_transpose2d(stride 2, padding 1) on the 2x2-summed 4x4 kernel.
  k4 = np.pad(k, ((1, 1), (1, 1), (0, 0), (0, 0)))
  k4 = k4[1:, 1:] + k4[:-1, 1:] + k4[1:, :-1] + k4[:-1, :-1]
  np.testing.assert_allclose(fused, np_conv_transpose_torch(x.astype(np.float64), k4), atol=1e-5)


def test_fused_upconv_matches_torch_conv_transpose():
  torch = pytest.importorskip("torch")
  rs = np.random.RandomState(5)
  x = rs.randn(1, 4, 4, 2).astype(np.float32)
  k = rs.randn(3, 3, 2, 3).astype(np.float32)
  k4 = np.asarray(layers.fuse_kernel_2x2(k))
  ref = torch.nn.functional.conv_transpose2d(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                                             torch.from_numpy(k4.transpose(2, 3, 0, 1).copy()), stride=2, padding=1)
  np.testing.assert_allclose(layers.upconv2d(x, k, fused=True), ref.numpy().transpose(0, 2, 3, 1), atol=1e-5)


def test_fused_downconv_equals_conv_then_average_pool():
  rs = np.random.RandomState(6)
  x = rs.randn(2, 8, 8, 3).astype(np.float32)
  k = rs.randn(3, 3, 3, 5).astype(np.float32)
  fused = layers.conv2d_downscale(x, k, fused=True)
  ref = np_conv(x.astype(np.float64), k.astype(np.float64))
  ref = ref.reshape(2, 4, 2, 4, 2, 5).mean(axis=(2, 4))
  assert fused.shape == (2, 4, 4, 5)
  np.testing.assert_allclose(fused, ref, atol=1e-5)
  np.testing.assert_allclose(layers.conv2d_downscale(x, k, fused=False), ref, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# generator


def test_official_config_has_29500757_trainable_parameters():
  """Mapping + synthesis + all 7 ToRGB (output{b}) layers, as the official state_dict; `lod` not counted."""
  G = models.build_generator(ffhq256.get_config().model)
  shapes = jax.eval_shape(lambda: models.init_generator(G, jax.random.PRNGKey(0)))
  count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["params"]))
  assert count == 29_500_757
  assert G.num_layers == 14
  assert shapes["buffers"]["w_avg"].shape == (512,)
  assert shapes["buffers"]["synthesis"]["layer13"]["epilogue"]["noise"].shape == (1, 256, 256, 1)
  # Official layouts: fused up-conv kernel [3, 3, in, out] at 128 and 256 px, last mapping layer L * w_dim wide.
  assert shapes["params"]["synthesis"]["layer10"]["kernel"].shape == (3, 3, 256, 128)
  assert shapes["params"]["mapping"]["dense7"]["kernel"].shape == (512, 14 * 512)


@pytest.mark.parametrize("resolution", [8, 16, 32])
def test_shapes_and_range_at_several_resolutions(resolution):
  G = small_generator(resolution)
  variables = models.init_generator(G, jax.random.PRNGKey(resolution))
  z = jax.random.normal(jax.random.PRNGKey(1), (3, G.z_dim))
  wp = models.mapping(G, variables, z)
  assert wp.shape == (3, 2 * (int(np.log2(resolution)) - 1), 8)
  images = models.generate(G, variables, z)
  assert images.shape == (3, resolution, resolution, 3)
  images = np.asarray(images)
  # float32 tanh rounds |x| > ~9 to exactly 1, so the closed bound; most pixels must not be saturated.
  assert np.isfinite(images).all() and np.abs(images).max() <= 1 and np.mean(np.abs(images) < 0.999) > 0.5
  assert images.std() > 1e-3
  if resolution == 16:
    raw = models.generate(G.clone(final_tanh=False), variables, z)
    np.testing.assert_allclose(np.tanh(raw), images, atol=1e-5)
    assert np.abs(np.asarray(raw)).max() > 0.5


def test_synthesis_matches_numpy_reference_at_8px():
  """Independent float64 forward of the whole 8 px network (const, epilogues, up-conv + blur, ToRGB, tanh)."""
  G = small_generator(8, fmaps_base=32, fmaps_max=4)  # 4 channels at 4 px and 8 px
  v = randomize(models.init_generator(G, jax.random.PRNGKey(2)), 3)
  wp = np.random.RandomState(7).randn(2, G.num_layers, G.w_dim).astype(np.float32)
  out = models.synthesize(G, v, wp)
  p, b = np_tree(v["params"]["synthesis"]), np_tree(v["buffers"]["synthesis"])
  wp64 = wp.astype(np.float64)
  s3 = lambda k: k * np.sqrt(2.0) / np.sqrt(9 * k.shape[2])
  x = np.broadcast_to(p["layer0"]["const"], (2, 4, 4, 4))
  x = np_epilogue(x, wp64[:, 0], p["layer0"]["epilogue"], b["layer0"]["epilogue"]["noise"])
  x = np_conv(x, s3(p["layer1"]["kernel"]))
  x = np_epilogue(x, wp64[:, 1], p["layer1"]["epilogue"], b["layer1"]["epilogue"]["noise"])
  x = np_blur(np_conv(np_up(x), s3(p["layer2"]["kernel"])))
  x = np_epilogue(x, wp64[:, 2], p["layer2"]["epilogue"], b["layer2"]["epilogue"]["noise"])
  x = np_conv(x, s3(p["layer3"]["kernel"]))
  x = np_epilogue(x, wp64[:, 3], p["layer3"]["epilogue"], b["layer3"]["epilogue"]["noise"])
  rgb = np_conv(x, p["output1"]["kernel"] / np.sqrt(4)) + p["output1"]["bias"]
  np.testing.assert_allclose(out, np.tanh(rgb), atol=1e-4)


def test_mapping_matches_numpy_and_reshapes_to_wplus(tiny_model):
  G, v = tiny_model
  z = np.random.RandomState(8).randn(2, G.z_dim).astype(np.float64) * 3
  x = z / np.sqrt((z ** 2).mean(1, keepdims=True) + 1e-8)
  for i in range(G.mapping_layers):
    x = np_lrelu(np_dense(x, np_tree(v["params"]["mapping"][f"dense{i}"]), lr_mul=0.01))
  wp = models.mapping(G, v, z.astype(np.float32))
  np.testing.assert_allclose(wp, x.reshape(2, G.num_layers, G.w_dim), rtol=1e-4, atol=1e-5)


def test_repeat_w_broadcasts_one_w():
  G = small_generator(8, repeat_w=True)
  v = models.init_generator(G, jax.random.PRNGKey(3))
  assert v["params"]["mapping"]["dense1"]["kernel"].shape == (8, 8)
  wp = np.asarray(models.mapping(G, v, jax.random.normal(jax.random.PRNGKey(4), (2, 8))))
  assert wp.shape == (2, G.num_layers, 8)
  np.testing.assert_array_equal(wp, np.broadcast_to(wp[:, :1], wp.shape))
  assert np.abs(wp[0, 0] - wp[1, 0]).max() > 1e-4


def test_truncation_psi_one_is_identity_and_psi_moves_only_first_layers(tiny_model):
  G, v = tiny_model
  wp = jax.random.normal(jax.random.PRNGKey(5), (2, G.num_layers, G.w_dim))
  np.testing.assert_array_equal(models.truncate(G, v, wp, psi=1.0, layers=8), wp)
  np.testing.assert_array_equal(jax.jit(lambda p: models.truncate(G, v, wp, psi=p, layers=8))(1.0), wp)
  out = np.asarray(models.truncate(G, v, wp, psi=0.5, layers=3))
  w_avg = np.asarray(v["buffers"]["w_avg"])
  assert np.abs(w_avg).max() > 0  # randomised, so "towards w_avg" is not "towards zero"
  np.testing.assert_allclose(out[:, :3], w_avg + 0.5 * (np.asarray(wp)[:, :3] - w_avg), atol=1e-6)
  np.testing.assert_array_equal(out[:, 3:], np.asarray(wp)[:, 3:])
  # Defaults come from the module: psi 0.7 on the first 8 of L = 8 layers.
  default = np.asarray(models.truncate(G, v, wp))
  np.testing.assert_allclose(default, w_avg + 0.7 * (np.asarray(wp) - w_avg), atol=1e-6)
  # generate == synthesize(truncate(mapping(z))) with those defaults.
  z = jax.random.normal(jax.random.PRNGKey(6), (2, G.z_dim))
  via_parts = models.synthesize(G, v, models.truncate(G, v, models.mapping(G, v, z)))
  np.testing.assert_allclose(models.generate(G, v, z), via_parts, atol=1e-6)
  assert np.abs(np.asarray(models.generate(G, v, z, psi=1.0)) - np.asarray(via_parts)).max() > 1e-4


def test_jit_and_vmap_equal_plain_call(tiny_model):
  G, v = tiny_model
  wp = jax.random.normal(jax.random.PRNGKey(7), (3, 2, G.num_layers, G.w_dim))
  plain = np.asarray(models.synthesize(G, v, wp[0]))
  jitted = jax.jit(functools.partial(models.synthesize, G))
  per_batch = np.stack([jitted(v, wp[i]) for i in range(3)])
  np.testing.assert_allclose(per_batch[0], plain, atol=1e-5)
  vmapped = jax.vmap(lambda w: models.synthesize(G, v, w))(wp)
  # A different compiled program sums the convolutions in another order (and XLA:CPU splits them over threads by
  # load); instance normalisation amplifies that float32 noise to ~1.6e-5 at worst (seen under load).
  np.testing.assert_allclose(vmapped, per_batch, atol=1e-4)
  assert np.abs(per_batch[0] - per_batch[1]).max() > 1e-3


def test_gradient_wrt_wp_reaches_every_layer(tiny_model):
  G, v = tiny_model
  wp = jax.random.normal(jax.random.PRNGKey(8), (2, G.num_layers, G.w_dim))
  target = jax.random.uniform(jax.random.PRNGKey(9), (2, 32, 32, 3), minval=-1, maxval=1)
  loss = lambda w: jnp.mean(jnp.square(models.synthesize(G, v, w) - target))
  grad = np.asarray(jax.jit(jax.grad(loss))(wp))
  assert np.isfinite(grad).all()
  assert (np.abs(grad).max(axis=(0, 2)) > 0).all(), "some W+ layer does not influence the image"
  # What inversion relies on: a small step against the gradient lowers the loss.
  assert float(loss(wp - 1e-2 * grad / np.abs(grad).max())) < float(loss(wp))


def test_same_key_same_model_and_images():
  G = small_generator(8)
  a, b = models.init_generator(G, jax.random.PRNGKey(11)), models.init_generator(G, jax.random.PRNGKey(11))
  c = models.init_generator(G, jax.random.PRNGKey(12))
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)
  z = jax.random.normal(jax.random.PRNGKey(13), (2, 8))
  np.testing.assert_array_equal(models.generate(G, a, z), models.generate(G, b, z))
  assert np.abs(np.asarray(models.generate(G, a, z)) - np.asarray(models.generate(G, c, z))).max() > 1e-3
  # Official initialisation: ones const, zero biases / noise strengths / w_avg, N(0, 1/lr_mul) mapping weights.
  np.testing.assert_array_equal(a["params"]["synthesis"]["layer0"]["const"], 1.0)
  np.testing.assert_array_equal(a["params"]["synthesis"]["layer1"]["epilogue"]["noise_weight"], 0.0)
  np.testing.assert_array_equal(a["buffers"]["w_avg"], 0.0)
  assert 50 < float(jnp.std(a["params"]["mapping"]["dense0"]["kernel"])) < 200


def test_noise_modes(tiny_model):
  G, v = tiny_model
  wp = jax.random.normal(jax.random.PRNGKey(14), (2, G.num_layers, G.w_dim))
  const = np.asarray(models.synthesize(G, v, wp))
  np.testing.assert_array_equal(models.synthesize(G, v, wp, noise_rng=jax.random.PRNGKey(1)), const)
  Gr = G.clone(noise_mode="random")
  r1 = np.asarray(models.synthesize(Gr, v, wp, noise_rng=jax.random.PRNGKey(1)))
  r1b = np.asarray(models.synthesize(Gr, v, wp, noise_rng=jax.random.PRNGKey(1)))
  r2 = np.asarray(models.synthesize(Gr, v, wp, noise_rng=jax.random.PRNGKey(2)))
  np.testing.assert_array_equal(r1, r1b)
  assert np.abs(r1 - r2).max() > 1e-3 and np.abs(r1 - const).max() > 1e-3
  with pytest.raises(ValueError, match="noise_rng"):
    models.synthesize(Gr, v, wp)
  Gn = G.clone(noise_mode="none")
  zero_noise = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.zeros_like(x) if "noise" in jax.tree_util.keystr(path) else x, v)
  np.testing.assert_allclose(models.synthesize(Gn, v, wp), models.synthesize(G, zero_noise, wp), atol=1e-6)


def test_user_errors_are_one_line_value_errors(tiny_model):
  G, v = tiny_model
  with pytest.raises(ValueError, match=r"wp has shape \(2, 7, 32\)"):
    models.synthesize(G, v, jnp.zeros((2, 7, 32)))
  with pytest.raises(ValueError, match="z has shape"):
    models.mapping(G, v, jnp.zeros((2, 5)))
  with pytest.raises(ValueError, match="resolution=48"):
    gen.Generator(resolution=48)
  with pytest.raises(ValueError, match="fused_scale"):
    gen.Generator(fused_scale="yes")


def official_style_numpy_init(shapes, seed=0):
  """The init rules of init_generator, drawn with numpy (compiling the 30M-parameter init costs more than this
  whole test): ones const, zero biases / noise strengths / w_avg, N(0, 100) mapping kernels, N(0, 1) others."""
  rs = np.random.RandomState(seed)

  def draw(path, x):
    name = jax.tree_util.keystr(path)
    if "const" in name:
      return np.ones(x.shape, np.float32)
    if "bias" in name or "noise_weight" in name or "w_avg" in name:
      return np.zeros(x.shape, np.float32)
    std = 100.0 if "mapping" in name else 1.0
    return (std * rs.randn(*x.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def test_ffhq256_single_forward_full_size():
  """SLOW (~10-30 s on 2 CPU cores): one real 256 px forward of the official architecture, N = 1."""
  G = models.build_generator(ffhq256.get_config().model)
  v = official_style_numpy_init(jax.eval_shape(lambda: models.init_generator(G, jax.random.PRNGKey(0))))
  images = models.generate(G, v, jax.random.normal(jax.random.PRNGKey(1), (1, 512)))
  assert images.shape == (1, 256, 256, 3)
  images = np.asarray(images)
  assert np.isfinite(images).all() and np.abs(images).max() <= 1 and images.std() > 1e-2
  assert np.mean(np.abs(images) < 0.999) > 0.5
