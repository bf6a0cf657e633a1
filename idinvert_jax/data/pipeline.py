"""Training input: a deterministic, resumable stream of global batches sharded over the device mesh.

The stream is defined globally, independent of how many hosts read it: global position `g` (0, 1, 2, ...) holds
example `order[g]`, where `order` is a grain shuffle of the source reshuffled every epoch (epoch = g // N), so
each example appears exactly once per epoch. Global batch k is positions [k*B, (k+1)*B); process p of P reads
only its slice [k*B + p*b, k*B + (p+1)*b) with b = B / P, and the slices are assembled into one `jax.Array`
sharded as NamedSharding(mesh, P('data')) with `jax.make_array_from_process_local_data`.

Reading, decoding and preprocessing run in grain (`MapDataset` -> `to_iter_dataset` with reader threads,
optionally `mp_prefetch` worker processes). Bad images (unreadable, truncated, too small, ...) are skipped: the
process takes the next position of its own slice instead, counts the skip and logs the path and reason once.

`get_state()` returns a JSON-serialisable dict (the grain iterator position plus counters) and `set_state`
restores it, so a resumed run sees exactly the batches an uninterrupted run would have seen. The state is
per process: when bad files were skipped, processes are at different positions, so the trainer saves every
process's state and each process restores its own (training/checkpoints.py).
"""
from __future__ import annotations

import functools
import sys
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from idinvert_jax.data import preprocess, sources

STATE_VERSION = 1
_MAX_REPORTED_FAILURES = 20


def _host_position(local_index: int, local_batch: int, global_batch: int, process_index: int) -> int:
  """Global stream position of this process's `local_index`-th example (see the module docstring)."""
  step, offset = divmod(local_index, local_batch)
  return step * global_batch + process_index * local_batch + offset


def _flip(seed: int, position: int) -> bool:
  """Deterministic coin for the mirror augmentation of one stream position."""
  return bool(np.random.default_rng([seed, position, 0x6D1]).integers(2))


def _load_example(position: int, *, order, source, resolution: int, resize: str, resample: str, min_size: int,
                  mirror: bool, seed: int) -> dict[str, Any]:
  """Reads and preprocesses the example at stream `position`; failures are returned, not raised."""
  index = int(order[position])
  try:
    _, image = sources.read_prepared(source, index, resolution, resize, resample, min_size)
  except preprocess.ImageError as e:
    return {"image": None, "index": index, "position": position, "error": str(e)}
  if mirror and _flip(seed, position):
    image = image[:, ::-1]
  return {"image": np.ascontiguousarray(image), "index": index, "position": position, "error": ""}


@jax.jit
def _to_float(images_uint8: jax.Array) -> jax.Array:
  """uint8 -> float32 in [-1, 1] on the devices (4x less host-to-device traffic than sending floats); an
  elementwise op, so the output keeps the input's sharding."""
  return images_uint8.astype(jnp.float32) / 127.5 - 1.0


class TrainIterator:
  """Infinite iterator of global batches float32 [B, R, R, 3] in [-1, 1], sharded over `mesh` axis `data_axis`.

  Build it with `make_train_iterator`. `next_local()` gives this process's uint8 slice and example indices
  (used by tests and tools that do not need device arrays).
  """

  def __init__(self, source: sources.ImageSource, resolution: int, global_batch_size: int, mesh: Mesh | None,
               seed: int, *, mirror: bool = False, shuffle: bool = True, resize: str = "center_crop",
               resample: str = "lanczos", min_size_fraction: float = 0.25, data_axis: str = "data",
               process_index: int | None = None, process_count: int | None = None, worker_count: int = 0,
               num_threads: int = 4, prefetch_buffer_size: int = 64):
    self.source = source
    self.resolution = int(resolution)
    self.global_batch_size = int(global_batch_size)
    self.seed = int(seed)
    self.process_index = jax.process_index() if process_index is None else int(process_index)
    self.process_count = jax.process_count() if process_count is None else int(process_count)
    self.mesh = mesh
    self.num_examples = len(source)
    if self.num_examples == 0:
      raise sources.EmptySourceError(f"{source.description}: no images; fix config.data")
    if global_batch_size <= 0 or global_batch_size % self.process_count:
      raise ValueError(f"global batch size {global_batch_size} must be a positive multiple of the number of "
                       f"processes ({self.process_count}); change the batch size")
    self.local_batch_size = global_batch_size // self.process_count
    if mesh is not None:
      if data_axis not in mesh.axis_names:
        raise ValueError(f"mesh axes {mesh.axis_names} have no {data_axis!r} axis; set config.mesh or data_axis")
      data_devices = mesh.shape[data_axis]
      if global_batch_size % data_devices:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the {data_devices} devices "
                         f"of mesh axis {data_axis!r}; use a multiple of {data_devices}")
      self.sharding = NamedSharding(mesh, PartitionSpec(data_axis))
    else:
      self.sharding = None
    # Consecutive failures before giving up: a source that is all bad would otherwise loop forever.
    self.max_consecutive_failures = min(self.num_examples, 1000)

    positions = grain.MapDataset.range(sys.maxsize).map(functools.partial(
        _host_position, local_batch=self.local_batch_size, global_batch=self.global_batch_size,
        process_index=self.process_index))
    order = grain.MapDataset.range(self.num_examples)
    if shuffle:
      order = order.shuffle(seed=self.seed % 2**32)  # grain reshuffles each epoch (seed + epoch).
    order = order.repeat()
    examples = positions.map(functools.partial(
        _load_example, order=order, source=source, resolution=self.resolution, resize=resize, resample=resample,
        min_size=preprocess.default_min_size(self.resolution, min_size_fraction), mirror=mirror, seed=self.seed))
    dataset = examples.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                         prefetch_buffer_size=prefetch_buffer_size))
    if worker_count > 0:
      if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags; scripts and Colab never parse them.
      dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    self._dataset = dataset
    self._iterator = iter(dataset)
    self.skipped = 0  # Bad examples skipped so far (this process).
    self.batches = 0  # Batches produced so far.
    self.last_position = -1
    self.failures: list[str] = []  # The first few failure messages, for the end-of-run summary.

  @property
  def epoch(self) -> float:
    """Fractional epoch of the last example read (global positions / dataset size)."""
    return (self.last_position + 1) / self.num_examples

  def _record_failure(self, message: str) -> None:
    self.skipped += 1
    if len(self.failures) < _MAX_REPORTED_FAILURES:
      self.failures.append(message)
      logging.warning("data: skipping bad image: %s", message)

  def next_local(self) -> tuple[np.ndarray, np.ndarray]:
    """This process's next slice: (uint8 [b, R, R, 3], source indices int64 [b])."""
    images, indices, consecutive = [], [], 0
    while len(images) < self.local_batch_size:
      example = next(self._iterator)
      self.last_position = max(self.last_position, example["position"])
      if example["image"] is None:
        self._record_failure(example["error"])
        consecutive += 1
        if consecutive >= self.max_consecutive_failures:
          raise ValueError(f"{self.source.description}: {consecutive} images in a row could not be used (last: "
                           f"{example['error']}); fix or remove the bad files")
        continue
      consecutive = 0
      images.append(example["image"])
      indices.append(example["index"])
    self.batches += 1
    return np.stack(images), np.asarray(indices, np.int64)

  def __iter__(self):
    return self

  def __next__(self) -> jax.Array:
    if self.sharding is None:
      raise ValueError("this TrainIterator has no mesh; use next_local() or pass a mesh")
    local, _ = self.next_local()
    global_shape = (self.global_batch_size,) + local.shape[1:]
    images = jax.make_array_from_process_local_data(self.sharding, local, global_shape)
    return _to_float(images)

  def close(self) -> None:
    """Stops grain's reader threads and worker processes (also done when the iterator is garbage collected)."""
    close = getattr(self._iterator, "close", None)
    if close is not None:
      close()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()

  def summary(self) -> str:
    """One line for logs: how many batches were read and how many bad images were skipped."""
    text = f"{self.source.description}: {self.batches} batches, {self.skipped} bad images skipped"
    if self.failures:
      text += f" (first: {self.failures[0]})"
    return text

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position of this process's stream (see `set_state`)."""
    return {
        "version": STATE_VERSION,
        "grain": self._iterator.get_state(),
        "batches": self.batches,
        "skipped": self.skipped,
        "last_position": self.last_position,
        "seed": self.seed,
        "global_batch_size": self.global_batch_size,
        "process_index": self.process_index,
        "process_count": self.process_count,
        "num_examples": self.num_examples,
    }

  def set_state(self, state: dict[str, Any]) -> None:
    """Restores a `get_state()` dict; the stream must be the same (seed, batch size, dataset size, process)."""
    if state.get("version") != STATE_VERSION:
      raise ValueError(f"data iterator state version {state.get('version')} is not {STATE_VERSION}; "
                       "start the data stream afresh (omit the saved data state)")
    for key in ("seed", "global_batch_size", "num_examples", "process_index", "process_count"):
      if state[key] != getattr(self, key):
        raise ValueError(f"data iterator state is for {key}={state[key]}, this run has {getattr(self, key)}; "
                         "resume with the same data/config, or start the data stream afresh")
    self._iterator.set_state(state["grain"])
    self.batches = int(state["batches"])
    self.skipped = int(state["skipped"])
    self.last_position = int(state["last_position"])


def make_train_iterator(data_cfg, resolution: int, global_batch_size: int, mesh: Mesh | None, seed: int, *,
                        mirror: bool, **overrides) -> TrainIterator:
  """The training iterator for `config.data` (see `get_data_config`).

  `mirror` (random horizontal flips) is passed by the trainer from config.train.<stage>.mirror, its only owner;
  config.data has no mirror field. `overrides` go to TrainIterator (e.g. process_index/process_count to simulate
  hosts, data_axis).
  """
  source = sources.open_source(data_cfg, resolution)
  options = dict(mirror=bool(mirror), shuffle=data_cfg.shuffle, resize=data_cfg.resize,
                 resample=data_cfg.resample, min_size_fraction=data_cfg.min_size_fraction,
                 worker_count=data_cfg.worker_count, num_threads=data_cfg.num_threads,
                 prefetch_buffer_size=data_cfg.prefetch_buffer_size)
  options.update(overrides)
  return TrainIterator(source, resolution, global_batch_size, mesh, seed, **options)
