"""Devices and sharding: multi-process start-up, the device Mesh from config.mesh, and NamedShardings.

The same code runs on one CPU, on 8 simulated CPU devices, and on a TPU pod: the batch is split over the `data`
mesh axis (and over hosts), parameters are replicated unless config.mesh.param_rules shards them.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Sequence

import jax
from jax.experimental import mesh_utils
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None, cpu_collectives: str | None = None,
                                 shutdown_timeout_s: int | None = None) -> bool:
  """Calls jax.distributed.initialize() when flags or the environment say this is a multi-process run.

  Explicit flags win; otherwise JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID are read; a TPU pod
  or SLURM cluster that JAX detects on its own is started with IDINVERT_DISTRIBUTED=1. Returns True if started.
  `shutdown_timeout_s`: how long a process that exits waits for the others (JAX's default 300 s).
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None and env.get("JAX_NUM_PROCESSES"):
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and env.get("JAX_PROCESS_ID"):
    process_id = int(env["JAX_PROCESS_ID"])
  auto_detect = env.get("IDINVERT_DISTRIBUTED", "") == "1"
  if not coordinator_address and not auto_detect:
    return False
  if jax.distributed.is_initialized():
    return True
  if cpu_collectives:
    # CPU devices of different processes need a collectives backend to talk (gloo works everywhere).
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  extra = {} if shutdown_timeout_s is None else {"shutdown_timeout_seconds": int(shutdown_timeout_s)}
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id, **extra)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def _client():
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  return distributed.global_state.client


def barrier(name: str, timeout_s: float) -> None:
  """Waits until every process reached barrier `name` (a unique name per barrier); no-op in one process.

  The coordination service's barrier, not a device collective: a process may wait here for hours (a pod host
  that finished its share before the slowest one) without a collective timing out.
  """
  if jax.process_count() > 1:
    _client().wait_at_barrier(name, int(timeout_s * 1000))


def share_from_process0(key: str, make, timeout_s: float = 3600.0) -> Any:
  """`make()` run on process 0 and its JSON result handed to every process (the coordination service's key-value
  store; `make` may return an {"error": message} dict that every process then raises on its own)."""
  import json  # pylint: disable=import-outside-toplevel
  if jax.process_count() == 1:
    return make()
  if jax.process_index() == 0:
    try:
      value = make()
    except Exception as e:  # noqa: BLE001 -- the others must not wait for a plan that never comes.
      _client().key_value_set(key, json.dumps({"error": f"process 0: {e}"}))
      raise
    _client().key_value_set(key, json.dumps(value))
    return value
  return json.loads(_client().blocking_key_value_get(key, int(timeout_s * 1000)))


def claim_counter(key: str) -> int:
  """The next value of a counter every process shares (0, 1, 2, ... across processes: work claiming)."""
  if jax.process_count() == 1:
    raise ValueError("claim_counter is for multi-process runs")
  return int(_client().key_value_increment(key, 1)) - 1


def make_mesh(mesh_config: Any = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the Mesh that config.mesh describes.

  config.mesh.axes: axis names (default ('data',)); config.mesh.shape: sizes with at most one -1 meaning "the
  remaining devices" (default (-1,)). `devices` restricts the mesh (e.g. jax.devices()[:1] in tests).
  """
  devices = list(jax.devices() if devices is None else devices)
  axes = tuple(_get(mesh_config, "axes", (DATA_AXIS,)))
  shape = list(_get(mesh_config, "shape", (-1,) * len(axes)))
  if len(shape) != len(axes):
    raise ValueError(f"config.mesh.shape {tuple(shape)} and config.mesh.axes {axes} differ in length; give one "
                     "size per axis")
  if DATA_AXIS not in axes:
    raise ValueError(f"config.mesh.axes {axes} has no '{DATA_AXIS}' axis; the batch is split over it, add it")
  if shape.count(-1) > 1:
    raise ValueError(f"config.mesh.shape {tuple(shape)} has more than one -1; give all sizes but one")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"config.mesh.shape {tuple(shape)} does not divide {len(devices)} devices; change the sizes")
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"config.mesh.shape {tuple(shape)} needs {int(np.prod(shape))} devices but {len(devices)} are "
                     "available; use -1 for the data axis")
  device_array = None
  if devices == list(jax.devices()) or devices[0].platform == "tpu":
    # Topology-aware order (ICI rings on TPU, also for a topology compiled for without TPUs); plain order on CPU.
    try:
      device_array = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
      # A subset it has no ring order for (one pod host's own chips, for inversion: no collective, any order).
      device_array = None
  if device_array is None:
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, axes)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis, the rest replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(images, sharding: NamedSharding) -> jax.Array:
  """Puts a batch on `sharding` unless it already is there (the data pipeline yields it that way)."""
  if isinstance(images, jax.Array) and images.sharding.is_equivalent_to(sharding, images.ndim):
    return images
  if jax.process_count() > 1:
    raise ValueError("multi-process training needs globally sharded jax.Array batches (use "
                     "idinvert_jax.data.pipeline.make_train_iterator)")
  return jax.device_put(images, sharding)


def data_axis_size(mesh: Mesh) -> int:
  return mesh.shape[DATA_AXIS]


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  """The global batch must split evenly over the data axis and over processes."""
  n = data_axis_size(mesh)
  if global_batch_size % n or global_batch_size % jax.process_count():
    raise ValueError(f"config.train.batch_size={global_batch_size} is not divisible by the {n} data-parallel "
                     f"devices / {jax.process_count()} processes; pick a multiple of {max(n, jax.process_count())}")


def param_shardings(tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Sequence[str | None]]] = ()) -> Any:
  """NamedSharding per leaf: the first rule whose regex matches the '/'-joined path gives its PartitionSpec.

  A rule is (regex, spec) e.g. ('generator/.*/kernel', (None, None, None, 'model')); a spec is dropped (leaf
  replicated) when it does not fit the leaf's rank or a sharded dimension is not divisible by the axis size.
  Without rules everything is replicated: the official models (~30M parameters) fit any accelerator.
  """
  compiled = [(re.compile(pattern), tuple(spec)) for pattern, spec in rules]

  def sharding_for(path, leaf):
    name = "/".join(_key_name(k) for k in path)
    shape = tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)
    for pattern, spec in compiled:
      if pattern.search(name) and _spec_fits(spec, shape, mesh):
        return NamedSharding(mesh, P(*spec))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(sharding_for, tree)


def _spec_fits(spec, shape, mesh) -> bool:
  if len(spec) != len(shape):
    return False
  for axis, dim in zip(spec, shape):
    if axis is None:
      continue
    size = int(np.prod([mesh.shape[a] for a in (axis if isinstance(axis, tuple) else (axis,))]))
    if dim % size:
      return False
  return True


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _get(cfg: Any, key: str, default: Any) -> Any:
  if cfg is None:
    return default
  try:
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
  except (AttributeError, KeyError):
    return default
  return default if value is None else value
