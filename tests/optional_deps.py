"""Optional test dependencies (extras, Debian's chromium): skip with the reason on a laptop, fail in CI.

`.ci/run` installs every one of them, so in CI (the CI environment variable is set) a missing one is an error,
never a silent skip.
"""
import importlib
import os

import pytest


def in_ci() -> bool:
  return os.environ.get("CI", "").lower() not in ("", "0", "false")


def missing(reason: str):
  """Skips the test (or fails it in CI) because something optional is not installed."""
  if in_ci():
    pytest.fail(f"{reason} (CI must install it: see .ci/run)")
  pytest.skip(reason)


def require(module: str, install: str):
  """Imports `module` or skips/fails naming the install command."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    missing(f"{module} is not installed ({e}); install it with `{install}`")
