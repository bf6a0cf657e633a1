"""Mixed precision as configuration: the models compute in a chosen dtype, parameters and optimiser state stay float32.

  compute_dtype('bfloat16', 'config.train.gan.precision')   -> jnp.bfloat16 (a one-line error naming the setting)
  cast_floating(tree, dtype)                                 every floating leaf cast; integer leaves untouched

Inside a jitted step the trainers cast the float32 parameters with `cast_floating` where the models use them: the
gradient of a cast comes back in the parameter's own dtype, so optimiser state and updates stay float32 (the policy
of jmp / Flax's param_dtype). Losses, R1 and the w_avg / BatchNorm statistics are computed in float32; the
normalisation layers compute their statistics in float32 whatever the input dtype (models/layers.py). float32 is
the default everywhere: it is the reference the parity tests hold against the official code.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PRECISIONS = ("float32", "bfloat16")


def compute_dtype(name: str, setting: str = "precision") -> jnp.dtype:
  """The dtype called `name` ('float32' | 'bfloat16'); `setting` names the config field in the error."""
  if str(name) not in PRECISIONS:
    raise ValueError(f"{setting}={name!r} is not a compute dtype; use one of {PRECISIONS}")
  return jnp.dtype(str(name))


def cast_floating(tree: Any, dtype) -> Any:
  """`tree` with every floating-point leaf cast to `dtype` (a no-op for leaves already in it)."""
  dtype = jnp.dtype(dtype)

  def cast(leaf):
    if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.dtype != dtype:
      return leaf.astype(dtype)
    return leaf

  return jax.tree_util.tree_map(cast, tree)
