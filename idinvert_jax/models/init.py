"""Fast, deterministic initialisation of the project's models (shared by every model module).

Initialisation runs once per model but every test of the project initialises models, so its compile time
matters: `fast_init_key` draws through XLA's RngBitGenerator instead of threefry, and `jit_init` compiles small
models without LLVM's expensive passes.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


def fast_init_key(rng: jax.Array) -> jax.Array:
  """Turns a PRNG key into an 'unsafe_rbg' key for parameter initialisation.

  Initialisers make ~50-150 separate draws (one per parameter, each after a fold_in of its path). With threefry
  each draw adds a large block of HLO; 'unsafe_rbg' (XLA RngBitGenerator, hash-based split/fold_in, the
  generator t5x/MaxText train with) compiles several times faster, and every test of the project initialises
  models. Same key -> same variables on a given backend.
  """
  return jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl="unsafe_rbg")


# Initialisation runs once per model. For small models (all tests use one) LLVM optimisation of that program is
# wasted time: measured 16 s -> 7 s compile for the tiny config on a loaded 2-core machine. For big ones the
# unoptimised random-number code is slow to run (ffhq256: 3.8 s -> 80 s), so they compile normally.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
FAST_COMPILE_MAX_PARAMS = 2_000_000


def _outside_traces() -> bool:
  """True at top level (no jit / eval_shape trace in progress): only there may compiler options be passed.

  JAX has no public API for this; the private probe is confined to this function.
  """
  try:
    from jax._src import core  # pylint: disable=import-outside-toplevel
    return core.trace_state_clean()
  except (ImportError, AttributeError):  # private API moved: fall back to the plain jit
    return False


def jit_init(init_fn):
  """`init_fn(module, rng)` jitted with the module static; small models compile with INIT_COMPILER_OPTIONS.

  XLA accepts compiler options on top-level computations only, so nested calls (jit, eval_shape) use the plain
  jit. Compiled programs are cached per (module, key type).
  """
  plain = jax.jit(init_fn, static_argnums=0)

  @functools.lru_cache(maxsize=64)
  def compiled(module, key_shape, key_dtype):
    lowered = plain.lower(module, jax.ShapeDtypeStruct(key_shape, key_dtype))
    size = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(lowered.out_info))
    return lowered.compile(INIT_COMPILER_OPTIONS if size <= FAST_COMPILE_MAX_PARAMS else None)

  def run(module, rng):
    if not _outside_traces():
      return plain(module, rng)
    rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
    return compiled(module, rng.shape, rng.dtype)(rng)

  return run
