"""Semantic diffusion (paper Sec. 4.3, Fig. 10): paste a target's crop into contexts and re-invert.

The crop of the target is copied into every context image (the "copy-paste" image). Inversion starts from the
encoder's code of that stitched image and optimises only the pixel and perceptual losses inside the crop (no
encoder term), so the generator fills the surroundings with content that matches the pasted region.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections
import numpy as np

# Official settings for 256 px FFHQ faces (diffuse.py): a 110 px square centred on column 125, row 145.
OFFICIAL_RESOLUTION = 256
OFFICIAL_CROP_SIZE = 110
OFFICIAL_CENTER_X = 125
OFFICIAL_CENTER_Y = 145


def default_crop(resolution: int) -> tuple[int, int, int]:
  """(crop_size, center_x, center_y): the official 110 / 125 / 145 at 256 px, scaled to `resolution`."""
  scale = resolution / OFFICIAL_RESOLUTION
  return (max(1, int(round(OFFICIAL_CROP_SIZE * scale))), int(round(OFFICIAL_CENTER_X * scale)),
          int(round(OFFICIAL_CENTER_Y * scale)))


def crop_mask(resolution: int, crop_size: int, center_x: int, center_y: int) -> np.ndarray:
  """[resolution, resolution, 1] float32 mask: 1 inside the square crop, 0 outside.

  The square starts at (center - crop_size // 2) as in the official code; it must lie inside the image (the
  official code silently wraps negative starts around).
  """
  left, top = center_x - crop_size // 2, center_y - crop_size // 2
  if crop_size < 1 or left < 0 or top < 0 or left + crop_size > resolution or top + crop_size > resolution:
    raise ValueError(f"diffusion crop (size {crop_size}, centre x={center_x}, y={center_y}) does not fit a "
                     f"{resolution} px image; choose --crop_size/--center_x/--center_y so the square is inside "
                     f"(defaults at this size: {default_crop(resolution)}).")
  mask = np.zeros((resolution, resolution, 1), np.float32)
  mask[top:top + crop_size, left:left + crop_size] = 1.0
  return mask


def stitch(target: jnp.ndarray, contexts: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Copy-paste images: target [H, W, 3] inside the mask [H, W, 1], each context [N, H, W, 3] outside."""
  return target[None] * mask[None] + contexts * (1.0 - mask[None])


def diffusion_settings(config: ml_collections.ConfigDict | None, num_iterations: int | None = None,
                       learning_rate: float | None = None, loss_weight_feat: float | None = None,
                       batch_size: int | None = None, num_results: int | None = None):
  """The `InvertSettings` of a diffusion: the experiment's in-domain settings (config.invert, else the official
  ones) from E(stitched image) with the encoder term off (official diffuse.py: regularization_loss_weight=0),
  and the given (non-None) values on top."""
  from idinvert_jax import inversion

  return inversion.InvertSettings.from_config(
      config, method="indomain", init="encoder", loss_weight_enc=0.0, num_iterations=num_iterations,
      learning_rate=learning_rate, loss_weight_feat=loss_weight_feat, batch_size=batch_size,
      num_results=num_results)


@dataclasses.dataclass
class DiffusionResult:
  """Per context image (numpy, float32, context order).

  stitched: [N, H, W, 3] copy-paste inputs.   mask: [H, W, 1] the crop.
  encoder_codes / encoder_outputs: E(stitched) and G(E(stitched)).
  codes / results: optimised W+ codes [N, L, D] and G(codes).
  snapshots: [(step, images [N, H, W, 3])] intermediate results.
  losses: {name: [N]} final loss terms.
  """
  stitched: np.ndarray
  mask: np.ndarray
  encoder_codes: np.ndarray
  encoder_outputs: np.ndarray
  codes: np.ndarray
  results: np.ndarray
  snapshots: list
  losses: dict


def diffuse(target: np.ndarray, contexts: np.ndarray, models, settings, crop_size: int, center_x: int,
            center_y: int, progress: bool = False) -> DiffusionResult:
  """Diffuses the crop of `target` [H, W, 3] into every context [N, H, W, 3] (images in [-1, 1]).

  Args:
    models: an `inversion.Inverter` (reused across calls), an `export.Models` bundle with generator, encoder and
      (optionally) perceptual model, or an `inversion.ModelFns`.
    settings: `InvertSettings` from `diffusion_settings` (its loss_weight_enc must be 0), an invert section, or
      an experiment config, from which `diffusion_settings` takes them.
    crop_size, center_x, center_y: the square (see `crop_mask`, `default_crop`).

  Returns:
    DiffusionResult; the contexts are optimised together in batches of the settings' batch_size.
  """
  from idinvert_jax import inversion

  if isinstance(settings, ml_collections.ConfigDict) and "model" in settings:
    settings = diffusion_settings(settings)
  settings = inversion.as_settings(settings)
  if settings.loss_weight_enc != 0.0:
    raise ValueError(f"diffuse: loss_weight_enc={settings.loss_weight_enc}; diffusion optimises only the masked "
                     "pixel and perceptual terms - build the settings with diffusion_settings().")
  inverter = inversion.as_inverter(models)
  if inverter.fns.encode is None:
    raise ValueError("diffuse: the checkpoint has no encoder; diffusion starts from E(stitched image) - use a "
                     "checkpoint with an encoder.")
  target = np.asarray(target, np.float32)
  contexts = np.asarray(contexts, np.float32)
  if target.ndim != 3 or contexts.ndim != 4 or contexts.shape[1:] != target.shape:
    raise ValueError(f"diffuse: target {target.shape} must be [H, W, 3] and contexts {contexts.shape} "
                     "[N, H, W, 3] of the same size; load them at the generator's resolution.")
  mask = crop_mask(target.shape[0], crop_size, center_x, center_y)
  stitched = np.asarray(stitch(jnp.asarray(target), jnp.asarray(contexts), jnp.asarray(mask)))
  masks = np.broadcast_to(mask[None], stitched.shape[:3] + (1,)).copy()
  result = inversion.invert(stitched, inverter, settings, mask=masks, progress=progress)
  return DiffusionResult(stitched=stitched, mask=mask, encoder_codes=result.encoder_codes,
                         encoder_outputs=result.encoder_reconstructions, codes=result.codes,
                         results=result.reconstructions, snapshots=result.snapshots, losses=result.losses)
