"""Linear interpolation between W+ codes (paper Sec. 4.3, Fig. 6).

The official script shows `steps` intermediate codes plus both endpoints, i.e. `steps + 2` codes per pair.
"""
from __future__ import annotations

import jax.numpy as jnp


def interpolate(src: jnp.ndarray, dst: jnp.ndarray, num_codes: int) -> jnp.ndarray:
  """Codes spaced evenly from `src` to `dst`, both endpoints included.

  Uses (1 - t) * src + t * dst, which reproduces `src` (t = 0) and `dst` (t = 1) bit for bit; the official
  src + t * (dst - src) form can miss `dst` by one ulp.

  Args:
    src: source codes [N, *code_shape] (W+ codes: [N, L, D]).
    dst: target codes, same shape as `src`.
    num_codes: how many codes per pair, endpoints included (>= 2).

  Returns:
    [N, num_codes, *code_shape].
  """
  if src.shape != dst.shape:
    raise ValueError(f"interpolate: source codes {src.shape} and target codes {dst.shape} differ in shape; "
                     "invert both with the same model.")
  if num_codes < 2:
    raise ValueError(f"interpolate: num_codes={num_codes}; need >= 2 (the two endpoints).")
  t = jnp.linspace(0.0, 1.0, num_codes, dtype=src.dtype)
  t = t.reshape((1, num_codes) + (1,) * (src.ndim - 1))
  return (1.0 - t) * src[:, None] + t * dst[:, None]


def interpolate_all_pairs(src: jnp.ndarray, dst: jnp.ndarray, num_codes: int) -> jnp.ndarray:
  """Every source x target pair: [S, *shape], [T, *shape] -> [S, T, num_codes, *shape]."""
  if src.shape[1:] != dst.shape[1:]:
    raise ValueError(f"interpolate: source codes {src.shape} and target codes {dst.shape} have different "
                     "code shapes; invert both with the same model.")
  num_src, num_dst = src.shape[0], dst.shape[0]
  tiled_src = jnp.repeat(src, num_dst, axis=0)
  tiled_dst = jnp.tile(dst, (num_src,) + (1,) * (dst.ndim - 1))
  codes = interpolate(tiled_src, tiled_dst, num_codes)
  return codes.reshape((num_src, num_dst) + codes.shape[1:])
