"""The reordered-math fast paths in models/layers.py against their direct float32/float64 forms.

Each path (phase-form upsampling convolution, convolutions as im2col products, strided-max pooling) must give the
direct computation's values and gradients; bench/profile_inversion.py shows why they exist. (The encoder's dense
layer order and its optimisation barrier are covered by the PyTorch parity tests in test_convert.py; the weight copy
they avoid only appears with 256-px constant weights, too big for a unit test.)
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idinvert_jax.models import layers

DIMS = ("NHWC", "HWIO", "NHWC")


def _conv_direct(x, k, padding):
  return jax.lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=DIMS)


def _conv_fast(x, k, padding):
  return layers.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=DIMS)


@pytest.mark.parametrize("h", [1, 4, 7])
def test_upsample_correlate_phase_form_equals_lhs_dilated_convolution(h):
  rs = np.random.RandomState(h)
  x = rs.randn(2, h, h + 1, 3).astype(np.float32)
  k = rs.randn(4, 4, 3, 5).astype(np.float32)
  g = rs.randn(2, 2 * h, 2 * h + 2, 5).astype(np.float32)
  # The definition, written independently of layers.py (whose backward is the same computation, so a reference
  # taken from there would make the gradient check below compare a function with itself).
  direct = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2),
                                                     dimension_numbers=DIMS)
  np.testing.assert_allclose(layers.upsample_correlate_4x4(x, k), direct(x, k), atol=2e-5)
  # Gradients w.r.t. the input and the kernel: the custom backward is the direct form's own (tests both).
  loss = lambda f: lambda x, k: jnp.sum(f(x, k) * g)
  fast = jax.grad(loss(layers.upsample_correlate_4x4), argnums=(0, 1))(x, k)
  ref = jax.grad(loss(direct), argnums=(0, 1))(x, k)
  for a, b in zip(fast, ref):
    np.testing.assert_allclose(a, b, atol=5e-5)
  # float64 reference of the forward: each output pixel 2p + r sums taps r, r + 2 over the real samples.
  x64, k64 = x.astype(np.float64), k.astype(np.float64)
  dilated = np.zeros((2, 2 * h - 1 + 4, 2 * (h + 1) - 1 + 4, 3))
  dilated[:, 2:-2:2, 2:-2:2] = x64
  ref64 = np.zeros((2, 2 * h, 2 * h + 2, 5))
  for dy in range(4):
    for dx in range(4):
      ref64 += np.einsum("nhwc,co->nhwo", dilated[:, dy:dy + 2 * h, dx:dx + 2 * h + 2], k64[dy, dx])
  np.testing.assert_allclose(layers.upsample_correlate_4x4(x, k), ref64, atol=2e-5)


def test_fused_upconv_uses_phase_form_and_matches_transposed_conv():
  rs = np.random.RandomState(1)
  x = rs.randn(1, 6, 6, 4).astype(np.float32)
  k = rs.randn(3, 3, 4, 2).astype(np.float32)
  ref = layers.conv_transpose_stride2(x, layers.fuse_kernel_2x2(k))
  np.testing.assert_allclose(layers.upconv2d(x, k, fused=True), ref, atol=2e-5)
  jaxpr = str(jax.make_jaxpr(lambda x: layers.upconv2d(x, k, fused=True))(x))
  assert "lhs_dilation=(2, 2)" not in jaxpr and "custom_vjp" in jaxpr


@pytest.mark.parametrize("shape,ksize,padding", [
    ((2, 4, 4, 8), 3, ((1, 1), (1, 1))),   # small map: product
    ((2, 5, 6, 8), 3, "SAME"),              # string padding, odd sizes
    ((1, 6, 6, 3), 3, "VALID"),             # 3 input channels
    ((2, 4, 4, 8), 1, ((0, 0), (0, 0))),   # 1x1
    ((2, 6, 6, 8), 2, ((1, 0), (0, 1))),   # even kernel, asymmetric padding
    ((2, 40, 40, 8), 3, ((1, 1), (1, 1))),  # 3200 rows: stays a convolution
])
def test_conv_general_dilated_fast_path_matches_lax(shape, ksize, padding):
  rs = np.random.RandomState(0)
  x = rs.randn(*shape).astype(np.float32)
  k = rs.randn(ksize, ksize, shape[-1], 5).astype(np.float32)
  fast, ref = _conv_fast(x, k, padding), _conv_direct(x, k, padding)
  assert fast.shape == ref.shape
  np.testing.assert_allclose(fast, ref, atol=2e-5 * np.abs(ref).max())
  grads = [jax.grad(lambda x, k: jnp.sum(f(x, k, padding) ** 2), argnums=(0, 1))(x, k)
           for f in (_conv_fast, _conv_direct)]
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
  as_product = shape[0] * shape[1] * shape[2] <= layers.MATMUL_CONV_MAX_ROWS or ksize == 1 or shape[-1] <= 4
  fast_fn = lambda x: _conv_fast(x, k, padding)
  assert _lowered_ops(fast_fn, x, "cpu") == ({"dot_general"} if as_product else {"convolution"})
  # Lowered for an accelerator (here without one: jax.export), the same call is the plain convolution.
  assert _lowered_ops(fast_fn, x, "tpu") == _lowered_ops(fast_fn, x, "cuda") == {"convolution"}
  with layers.direct_convolutions():
    assert _lowered_ops(fast_fn, x, "cpu") == {"convolution"}


def _lowered_ops(fn, x, platform):
  """Which of dot_general / convolution the StableHLO of fn holds when lowered for `platform`.

  Both forms are staged out (lax.platform_dependent); lowering keeps the one for the target platform.
  """
  text = jax.export.export(jax.jit(fn), platforms=(platform,))(x).mlir_module()
  return {op for op in ("dot_general", "convolution") if f"stablehlo.{op}" in text}


def test_conv_general_dilated_falls_back_for_strides_and_groups():
  rs = np.random.RandomState(2)
  x = rs.randn(1, 6, 6, 4).astype(np.float32)
  k = rs.randn(3, 3, 4, 4).astype(np.float32)
  strided = layers.conv_general_dilated(x, k, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DIMS)
  np.testing.assert_allclose(strided, jax.lax.conv_general_dilated(x, k, (2, 2), ((1, 1), (1, 1)),
                                                                    dimension_numbers=DIMS), atol=1e-5)
  grouped = layers.conv_general_dilated(x, k[:, :, :2], (1, 1), "SAME", dimension_numbers=DIMS,
                                        feature_group_count=2)
  assert grouped.shape == (1, 6, 6, 4)
  assert "dot_general" not in str(jax.make_jaxpr(
      lambda x: layers.conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=DIMS))(x))


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 7, 5, 2)])
def test_max_pool_2x2_matches_reduce_window_pool(shape):
  x = np.random.RandomState(3).randn(*shape).astype(np.float32)  # Continuous values: no ties.
  ref_fn = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(layers.max_pool_2x2(x), ref_fn(x))
  g = np.random.RandomState(4).randn(*ref_fn(x).shape).astype(np.float32)
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * g))(x)
  np.testing.assert_array_equal(grad(layers.max_pool_2x2), grad(ref_fn))
