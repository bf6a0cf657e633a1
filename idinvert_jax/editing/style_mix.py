"""Style mixing with inverted codes (paper Fig. 9): content codes take the style codes' fine layers."""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

# The official script mixes layers 10..13 of the 14-layer (256 px) generator.
OFFICIAL_MIX_LAYER_START = 10
OFFICIAL_NUM_LAYERS = 14


def default_mix_layer_start(num_layers: int) -> int:
  """The official start layer (10 of 14) scaled to a generator with `num_layers` W+ layers."""
  return int(round(OFFICIAL_MIX_LAYER_START * num_layers / OFFICIAL_NUM_LAYERS))


def layer_mask(num_layers: int, layers: Sequence[int] | None) -> np.ndarray:
  """Boolean [num_layers] mask of `layers` (None = all layers); refuses indices out of range."""
  if layers is None:
    return np.ones((num_layers,), dtype=bool)
  layers = [int(i) for i in layers]
  bad = [i for i in layers if not 0 <= i < num_layers]
  if bad:
    raise ValueError(f"layer indices {bad} are out of range for a generator with {num_layers} W+ layers; "
                     f"use indices in 0..{num_layers - 1}.")
  mask = np.zeros((num_layers,), dtype=bool)
  mask[layers] = True
  return mask


def mix_styles(style_codes: jnp.ndarray, content_codes: jnp.ndarray, mix_layers: Sequence[int]) -> jnp.ndarray:
  """Every style x content pair: the content code with the style code's `mix_layers`.

  Args:
    style_codes: [S, L, D] W+ codes giving the mixed layers.
    content_codes: [C, L, D] W+ codes giving every other layer.
    mix_layers: W+ layer indices copied from the style code (a static Python sequence).

  Returns:
    [S, C, L, D]; result[s, c, l] is style_codes[s, l] for l in mix_layers, else content_codes[c, l].
  """
  if style_codes.ndim != 3 or style_codes.shape[1:] != content_codes.shape[1:]:
    raise ValueError(f"mix_styles: style codes {style_codes.shape} and content codes {content_codes.shape} must "
                     "both be [N, L, D] W+ codes of the same generator.")
  mask = layer_mask(style_codes.shape[1], mix_layers)[None, None, :, None]
  return jnp.where(mask, style_codes[:, None], content_codes[None, :])
