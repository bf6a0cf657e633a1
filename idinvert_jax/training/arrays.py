"""An in-memory batch iterator with the data pipeline's interface, for benchmarks, tests and small experiments.

`ArrayBatches(images, global_batch_size, mesh)` cycles through `images` ([N, H, W, C], float in [-1, 1]) in order,
yields globally sharded [B, H, W, C] jax.Arrays (each process contributes its rows of the batch, as
make_train_iterator does) and has JSON get_state()/set_state(), so resumed runs see the same batches.
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from idinvert_jax.training import mesh as mesh_lib


class ArrayBatches:
  """Batch i holds images[(i * B + k) % N] for k < B; `transform(index, batch)` may alter a host batch."""

  def __init__(self, images: np.ndarray, global_batch_size: int, mesh: jax.sharding.Mesh,
               transform: Callable[[int, np.ndarray], np.ndarray] | None = None):
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
      raise ValueError(f"ArrayBatches needs images [N, H, W, C]; got shape {images.shape}")
    mesh_lib.check_batch_size(global_batch_size, mesh)
    self.images = images
    self.global_batch_size = global_batch_size
    self.sharding = mesh_lib.batch_sharding(mesh)
    self.transform = transform
    self.index = 0

  def __iter__(self):
    return self

  def __next__(self) -> jax.Array:
    b, n = self.global_batch_size, len(self.images)
    rows = (self.index * b + np.arange(b)) % n
    batch = self.images[rows]
    if self.transform is not None:
      batch = self.transform(self.index, batch)
    self.index += 1
    per_process = b // jax.process_count()
    local = batch[jax.process_index() * per_process:(jax.process_index() + 1) * per_process]
    return jax.make_array_from_process_local_data(self.sharding, local, batch.shape)

  def get_state(self) -> dict:
    return {"index": self.index}

  def set_state(self, state: dict) -> None:
    self.index = int(state["index"])
