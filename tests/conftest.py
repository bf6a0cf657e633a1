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
