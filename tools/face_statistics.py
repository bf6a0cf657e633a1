"""Attribute scores computed from pixels, for boundaries on a model trained without attribute labels.

InterFaceGAN needs a score per generated face; the shared CelebA crops carry no labels, so these two scorers
measure what a face crop shows directly (aligned crops: hair at the top, face in the middle):

  python edit.py train-boundary --checkpoint runs/celeba64 --classifier tools.face_statistics:hair_lightness \
      --num_samples 4000 --output runs/celeba64/boundaries_work/hair_lightness
  python edit.py train-boundary --checkpoint runs/celeba64 --classifier tools.face_statistics:face_lighting \
      --num_samples 4000 --output runs/celeba64/boundaries_work/face_lighting

Each takes images [B, H, W, 3] in [-1, 1] and returns [B] scores (higher = lighter hair / brighter face).
"""
import numpy as np

# Rec. 601 luma weights.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _luma(images) -> np.ndarray:
  return (np.asarray(images, np.float32) + 1.0) * 0.5 @ _LUMA


def hair_lightness(images) -> np.ndarray:
  """Mean luma of the top eighth of the crop (hair or background above it), minus the face centre's luma.

  Subtracting the face keeps the boundary from being a global exposure change.
  """
  y = _luma(images)
  h = y.shape[1]
  return y[:, :h // 8].mean(axis=(1, 2)) - y[:, 3 * h // 8:5 * h // 8, 3 * h // 8:5 * h // 8].mean(axis=(1, 2))


def face_lighting(images) -> np.ndarray:
  """Mean luma of the central quarter of the crop (the face under its lighting)."""
  y = _luma(images)
  h, w = y.shape[1:]
  return y[:, h // 4:3 * h // 4, w // 4:3 * w // 4].mean(axis=(1, 2))
