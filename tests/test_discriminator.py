"""StyleGAN-v1 D_basic: shapes, TF parameter layout/count, minibatch stddev vs numpy, fused == separate, jit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ffhq256, tiny
from idinvert_jax import models
from idinvert_jax.models import discriminator as disc


def np_lrelu(x):
  return np.where(x >= 0, x, 0.2 * x)


def np_conv(x, k, pad=None):
  """Cross-correlation NHWC x HWIO, stride 1, zero padding k // 2."""
  kh = k.shape[0]
  pad = kh // 2 if pad is None else pad
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  h, w = xp.shape[1] - kh + 1, xp.shape[2] - kh + 1
  out = np.zeros((x.shape[0], h, w, k.shape[3]))
  for a in range(kh):
    for b in range(kh):
      out += np.einsum("nhwc,co->nhwo", xp[:, a:a + h, b:b + w], k[a, b])
  return out


def np_blur(x):
  k = np.outer([1, 2, 1], [1, 2, 1]) / 16.0
  return np_conv(x, np.einsum("ab,cd->abcd", k, np.eye(x.shape[-1])))


def np_mbstd(x, group_size, num_features):
  """Direct transcription of the TF layer in NCHW, on explicit groups (group m = samples m, m+M, m+2M, ...)."""
  x = x.transpose(0, 3, 1, 2)  # NCHW as TF
  n, c, h, w = x.shape
  g = min(group_size, n)
  m = n // g
  out = np.zeros((n, num_features, h, w))
  cg = c // num_features
  for group in range(m):
    members = x[group::m]                                          # the G samples of this group
    for f in range(num_features):
      block = members[:, f * cg:(f + 1) * cg]                      # [G, c, H, W]
      std = np.sqrt(((block - block.mean(0)) ** 2).mean(0) + 1e-8)  # [c, H, W]
      out[group::m, f] = std.mean()
  return np.concatenate([x, out], axis=1).transpose(0, 2, 3, 1)


def scaled(k, gain=np.sqrt(2.0)):
  return k * gain / np.sqrt(np.prod(k.shape[:-1]))


def np_discriminator_8px(p, images, group_size):
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
  x = np_lrelu(np_conv(images, scaled(p["FromRGB_lod0"]["kernel"])) + p["FromRGB_lod0"]["bias"])
  x = np_lrelu(np_conv(x, scaled(p["8x8"]["Conv0"]["kernel"])) + p["8x8"]["Conv0"]["bias"])
  x = np_conv(np_blur(x), scaled(p["8x8"]["Conv1_down"]["kernel"]))
  x = x.reshape(x.shape[0], 4, 2, 4, 2, -1).mean(axis=(2, 4))
  x = np_lrelu(x + p["8x8"]["Conv1_down"]["bias"])
  x = np_mbstd(x, group_size, 1)
  x = np_lrelu(np_conv(x, scaled(p["4x4"]["Conv"]["kernel"])) + p["4x4"]["Conv"]["bias"])
  x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # TF flattens NCHW
  x = np_lrelu(x @ scaled(p["4x4"]["Dense0"]["kernel"]) + p["4x4"]["Dense0"]["bias"])
  return x @ scaled(p["4x4"]["Dense1"]["kernel"], gain=1.0) + p["4x4"]["Dense1"]["bias"]


def randomize(variables, seed, scale=0.3):
  rs = np.random.RandomState(seed)
  return jax.tree_util.tree_map(
      lambda x: jnp.asarray(np.asarray(x) + scale * rs.randn(*x.shape).astype(np.float32)), variables)


@pytest.mark.parametrize("n,group", [(8, 4), (6, 3), (4, 4), (3, 8), (8, 2)])
def test_minibatch_stddev_matches_numpy(n, group):
  x = np.random.RandomState(n).randn(n, 4, 4, 6).astype(np.float32) * 2
  for features in (1, 2):
    out = disc.minibatch_stddev(jnp.asarray(x), group, features)
    assert out.shape == (n, 4, 4, 6 + features)
    np.testing.assert_allclose(out, np_mbstd(x.astype(np.float64), group, features), rtol=1e-5, atol=1e-6)


def test_minibatch_stddev_needs_divisible_batch():
  with pytest.raises(ValueError, match="not divisible by the minibatch-stddev group size 4"):
    disc.minibatch_stddev(jnp.zeros((6, 4, 4, 2)), 4, 1)


def test_official_layout_and_parameter_count():
  """ffhq 256 px D_basic, counted from the TF definition: nf(stage) = min(8192 / 2 ** stage, 512)."""
  D = models.build_discriminator(ffhq256.get_config().model)
  shapes = jax.eval_shape(lambda: models.init_discriminator(D, jax.random.PRNGKey(0)))["params"]
  nf = lambda stage: min(8192 // 2 ** stage, 512)
  expected = 3 * nf(7) + nf(7)                                   # FromRGB_lod0 (1x1) at 256 px (log2 = 8)
  for res_log2 in range(8, 2, -1):
    expected += 9 * nf(res_log2 - 1) ** 2 + nf(res_log2 - 1)     # Conv0
    expected += 9 * nf(res_log2 - 1) * nf(res_log2 - 2) + nf(res_log2 - 2)  # Conv1_down
  expected += 9 * (nf(1) + 1) * nf(1) + nf(1)                    # 4x4/Conv on features + 1 stddev map
  expected += 16 * nf(1) * nf(0) + nf(0) + nf(0) + 1             # Dense0, Dense1
  count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
  assert count == expected == 23_042_625
  assert shapes["FromRGB_lod0"]["kernel"].shape == (1, 1, 3, 64)
  assert shapes["128x128"]["Conv1_down"]["kernel"].shape == (3, 3, 128, 256)
  assert shapes["4x4"]["Dense0"]["kernel"].shape == (512 * 16, 512)


@pytest.fixture(scope="module")
def tiny_disc():
  D = models.build_discriminator(tiny.get_config().model)
  return D, randomize(models.init_discriminator(D, jax.random.PRNGKey(0)), 1, 0.1)


def test_output_shape(tiny_disc):
  D, v = tiny_disc
  images = jax.random.uniform(jax.random.PRNGKey(2), (8, 32, 32, 3), minval=-1, maxval=1)
  logits = jax.jit(D.apply)(v, images)
  assert logits.shape == (8, 1) and np.isfinite(logits).all()
  assert np.abs(np.asarray(logits[:4]) - np.asarray(logits[4:])).max() > 1e-4
  with pytest.raises(ValueError, match=r"expected \[N, 32, 32, 3\]"):
    D.apply(v, jnp.zeros((4, 16, 16, 3)))


def test_matches_numpy_reference_at_8px_and_jit_equals_plain():
  D = disc.Discriminator(resolution=8, fmaps_base=32, fmaps_max=4)
  v = randomize(models.init_discriminator(D, jax.random.PRNGKey(3)), 4)
  images = np.random.RandomState(5).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
  ref = np_discriminator_8px(v["params"], images.astype(np.float64), 4)
  jitted = np.asarray(jax.jit(D.apply)(v, images))
  np.testing.assert_allclose(jitted, ref, rtol=1e-4, atol=1e-5)
  with jax.disable_jit():  # jit equality: the op-by-op call gives the same logits
    np.testing.assert_allclose(D.apply(v, images), jitted, rtol=1e-5, atol=1e-5)


def test_fused_downscale_equals_separate_ops():
  """The fused conv2d_downscale2d (>= fused_scale_min_res) is exactly conv + 2x2 average pool: same logits."""
  fused = disc.Discriminator(resolution=16, fmaps_base=64, fmaps_max=8, fused_scale=True)
  v = randomize(models.init_discriminator(fused, jax.random.PRNGKey(6)), 7)
  images = jax.random.uniform(jax.random.PRNGKey(8), (4, 16, 16, 3), minval=-1, maxval=1)
  separate = fused.clone(fused_scale=False)
  auto = fused.clone(fused_scale="auto", fused_scale_min_res=16)  # fused at 16 px only
  out = np.asarray(jax.jit(fused.apply)(v, images))
  np.testing.assert_allclose(jax.jit(separate.apply)(v, images), out, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(jax.jit(auto.apply)(v, images), out, rtol=1e-4, atol=1e-5)
  assert np.abs(out).max() > 1e-3
