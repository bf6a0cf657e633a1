"""What ran a measurement: the one description of the machine that reports and benchmarks print."""
from __future__ import annotations

import os
import platform
from typing import Any


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.lower().startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def describe() -> dict[str, Any]:
  """CPU model and cores, OS, JAX version, backend and devices, and Python: printed next to timings."""
  import jax  # pylint: disable=import-outside-toplevel
  devices = jax.devices()
  return {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
          "jax_backend": jax.default_backend(), "jax_devices": len(devices),
          "jax_device_kind": devices[0].device_kind, "jax_version": jax.__version__,
          "python": platform.python_version()}
