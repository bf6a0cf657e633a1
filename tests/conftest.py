"""Test set-up: 8 simulated CPU devices, float32 matmuls, and small shared fixtures."""
import os

# Must happen before jax is imported anywhere: every test process sees 8 CPU devices, so sharding tests can
# compare 1 vs 8 devices; single-device code uses jax.devices()[:1].
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "float32")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen as nn  # noqa: E402

# Stand-in models for the inversion engine's tests (tests/test_inversion.py, tests/test_editing_diffuse.py):
# 8 px images, W+ codes [N, 4, 8].
RES, LAYERS, WDIM = 8, 4, 8


class TinyG(nn.Module):
  """Stand-in generator: W+ [N,L,D] -> image [N,8,8,3] (uses every layer's code, nonlinear)."""

  @nn.compact
  def __call__(self, wp):
    h = nn.Dense(4 * 4 * 8)(wp.reshape(wp.shape[0], -1))
    h = nn.leaky_relu(h.reshape(-1, 4, 4, 8), 0.2)
    h = jax.image.resize(h, (h.shape[0], RES, RES, 8), "nearest")
    h = nn.leaky_relu(nn.Conv(8, (3, 3))(h), 0.2)
    return jnp.tanh(nn.Conv(3, (1, 1))(h))


class TinyE(nn.Module):
  """Stand-in encoder: image [N,8,8,3] -> W+ [N,4,8]."""

  @nn.compact
  def __call__(self, x):
    h = nn.leaky_relu(nn.Conv(8, (3, 3), strides=2)(x), 0.2)
    return nn.Dense(LAYERS * WDIM)(h.reshape(h.shape[0], -1)).reshape(-1, LAYERS, WDIM)


class TinyF(nn.Module):
  """Stand-in perceptual features: image [N,8,8,3] -> [N,8,8,6]."""

  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Conv(6, (3, 3))(nn.relu(nn.Conv(4, (3, 3))(x))))


def stand_in_fns(with_encoder=True, with_features=True):
  """The tiny models as an inversion.ModelFns (the engine's custom-model entry point), fixed seed."""
  from idinvert_jax import inversion  # pylint: disable=import-outside-toplevel
  G, E, F = TinyG(), TinyE(), TinyF()
  k = jax.random.split(jax.random.key(0), 3)
  variables = {"generator": G.init(k[0], jnp.zeros((1, LAYERS, WDIM))),
               "encoder": E.init(k[1], jnp.zeros((1, RES, RES, 3))),
               "perceptual": F.init(k[2], jnp.zeros((1, RES, RES, 3)))}
  return inversion.ModelFns(
      synthesize=G.apply, encode=E.apply if with_encoder else None,
      features=F.apply if with_features else None, variables=variables,
      num_layers=LAYERS, w_dim=WDIM, resolution=RES, w_avg=np.linspace(-0.5, 0.5, WDIM).astype(np.float32))
