"""Semantic manipulation along a boundary normal in W+ (paper Sec. 4.3, Fig. 7), optionally conditional.

w'[l] = w[l] + d * n[l] for the boundary's layers l only, for every d in linspace(start, end, steps) (official
-3..3, 7 steps). Conditional manipulation (InterFaceGAN) first removes from n its components along other
boundaries, so moving along n leaves those attributes' decision values unchanged.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from idinvert_jax.editing.style_mix import layer_mask


def layerwise_direction(direction: np.ndarray, num_layers: int) -> np.ndarray:
  """A boundary normal as a [L, D] W+ direction.

  Accepts [D] / [1, D] (a W-space normal, repeated for every layer as the official editor does) and
  [L, D] / [1, L, D] (already layer-wise).
  """
  direction = np.asarray(direction, dtype=np.float32)
  if direction.ndim == 3 and direction.shape[0] == 1:
    direction = direction[0]
  if direction.ndim == 2 and direction.shape[0] == 1:
    direction = direction[0]
  if direction.ndim == 1:
    return np.tile(direction[None], (num_layers, 1))
  if direction.ndim == 2 and direction.shape[0] == num_layers:
    return direction
  raise ValueError(f"boundary of shape {direction.shape} does not fit a generator with {num_layers} W+ layers; "
                   f"expected [1, D], [{num_layers}, D] or [1, {num_layers}, D].")


def truncation_strength(num_layers: int, truncation_psi: float, truncation_layers: int) -> np.ndarray:
  """Per-layer manipulation strength that undoes the truncation trick's scaling (official editor helper).

  Layers [0, truncation_layers) were shrunk by psi towards w_avg, so their steps are scaled by psi too.
  """
  strength = np.ones((num_layers,), dtype=np.float32)
  strength[:max(0, int(truncation_layers))] = truncation_psi
  return strength


def manipulate(codes: jnp.ndarray,
               direction: jnp.ndarray,
               distances: jnp.ndarray,
               layers: Sequence[int] | None = None,
               strength: jnp.ndarray | None = None) -> jnp.ndarray:
  """Moves every code along `direction` by every distance, on `layers` only.

  Args:
    codes: [N, L, D] W+ codes.
    direction: [L, D] layer-wise boundary normal (see `layerwise_direction`).
    distances: [S] signed distances (e.g. `jnp.linspace(-3, 3, 7)`).
    layers: W+ layers to edit (static Python sequence); None edits all layers.
    strength: optional [L] per-layer scale of the step (see `truncation_strength`).

  Returns:
    [N, S, L, D]; layers outside `layers` are copies of the input, edited layers are w + d * n[l] * strength[l].
  """
  if codes.ndim != 3 or direction.shape != codes.shape[1:]:
    raise ValueError(f"manipulate: codes {codes.shape} must be [N, L, D] and the direction {direction.shape} "
                     "[L, D] for the same generator; convert it with layerwise_direction().")
  step = direction if strength is None else direction * strength[:, None]
  mask = layer_mask(codes.shape[1], layers)[None, None, :, None]
  distances = jnp.asarray(distances, dtype=codes.dtype)[None, :, None, None]
  edited = codes[:, None] + distances * step[None, None]
  return jnp.where(mask, edited, codes[:, None])


def edit_distances(start: float, end: float, steps: int) -> np.ndarray:
  """The official distance schedule: linspace(start, end, steps) as float32."""
  if steps < 1:
    raise ValueError(f"manipulation steps={steps}; need >= 1.")
  return np.linspace(start, end, steps, dtype=np.float32)


def conditional_direction(primal: np.ndarray,
                          conditions: Sequence[np.ndarray],
                          layers: Sequence[int] | None = None) -> np.ndarray:
  """The primal normal with its components along every condition normal removed, renormalised.

  Only the edited `layers` matter for an edit, so primal and conditions are restricted to those layers
  before projecting; the result is zero elsewhere and orthogonal (over the whole W+ code) to every condition.
  The conditions are orthonormalised by Gram-Schmidt, which equals InterFaceGAN's closed forms for one and two
  conditions and extends to any number.

  Args:
    primal: [L, D] layer-wise normal to edit along.
    conditions: [L, D] layer-wise normals whose attributes must stay fixed.
    layers: edited layers (None = all).

  Returns:
    [L, D] direction; its norm over the edited layers equals the primal's norm there (so the distance scale
    is unchanged: sqrt(#layers) for official per-layer unit normals).
  """
  primal = np.asarray(primal, dtype=np.float64)
  mask = layer_mask(primal.shape[0], layers)[:, None]
  target_norm = np.linalg.norm(primal * mask)
  result = (primal * mask).ravel()
  basis = []
  for i, condition in enumerate(conditions):
    condition = np.asarray(condition, dtype=np.float64)
    if condition.shape != primal.shape:
      raise ValueError(f"condition boundary #{i} has shape {condition.shape}, the primal {primal.shape}; "
                       "use boundaries of the same generator (see layerwise_direction).")
    vector = (condition * mask).ravel()
    for unit in basis:
      vector = vector - (vector @ unit) * unit
    norm = np.linalg.norm(vector)
    if norm > 1e-8 * max(1.0, np.linalg.norm(condition)):
      basis.append(vector / norm)
  for unit in basis:
    result = result - (result @ unit) * unit
  norm = np.linalg.norm(result)
  if norm <= 1e-6 * max(target_norm, 1e-12):
    raise ValueError("the primal boundary lies in the span of the condition boundaries on the edited layers; "
                     "drop a condition or edit other layers.")
  return (result / norm * target_norm).reshape(primal.shape).astype(np.float32)
