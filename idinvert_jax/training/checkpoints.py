"""Training checkpoints: an Orbax CheckpointManager in WORKDIR/checkpoints, corrupt-step fallback, preemption.

One checkpoint step holds three items:
  state: the whole train state pytree (params, EMA, optimiser states, step, RNG key), restored with the
         shardings of a freshly built state so it lands directly on the mesh;
  data:  every process's data-iterator JSON state (get_state()/set_state()) keyed by process index, so each
         process of a resumed run sees the same batches it would have (processes skip bad files independently,
         so their positions differ); older checkpoints hold process 0's state alone;
  meta:  JSON facts for humans (stage, step, images seen).
Orbax writes each step to a temporary folder and renames it when complete, so a killed save leaves nothing that
looks finished; a step that still fails to read back (truncated or deleted files) is moved to
WORKDIR/checkpoints_corrupt/ with a warning and the previous step is used instead. A step that reads fine but
does not fit the run (another model config: other shapes or entries) is not corruption: restore stops with a
CheckpointMismatchError before anything is moved.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


class CheckpointMismatchError(ValueError):
  """The checkpoint was written for another model config than the run's (one line: entries and the fix)."""


class TrainCheckpointer:
  """Saves and restores the train state + data-iterator state of one stage in `directory`."""

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(os.fspath(directory))
    self.corrupt_directory = self.directory + "_corrupt"
    self._max_to_keep = max_to_keep
    self._async_save = async_save
    self._manager = self._make_manager()

  def _make_manager(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True,
                                           enable_async_checkpointing=self._async_save)
    # Handlers named up front (not just item names) so item_metadata() can read a step before any restore.
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, data_state: Any, meta: dict | None = None, *, force: bool = True) -> None:
    """Writes `step` (asynchronously by default: call wait() before reading it back or exiting).

    `data_state` is this process's iterator state; every process calls save (it is collective) and the states
    of all processes are stored together.
    """
    meta = dict(meta or {}, step=int(step), time=time.time())
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(gather_data_states(data_state)),
        meta=ocp.args.JsonSave(meta)), force=force)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def restore_latest(self, target_state: Any) -> tuple[int, Any, Any] | None:
    """Restores the newest step that reads back whole; returns (step, state, data_state) or None if none.

    data_state is this process's own iterator state (see `own_data_state`).

    `target_state` is a pytree of arrays (or jax.ShapeDtypeStruct with .sharding) that fixes the structure,
    dtypes and shardings of the restored state.
    """
    self.wait()
    abstract = jax.tree.map(_abstract_like, target_state)
    for step in reversed(self.all_steps()):
      try:
        stored = self._manager.item_metadata(step)["state"]
      except Exception:  # pylint: disable=broad-except
        stored = None  # unreadable metadata: the restore below fails too and says why
      differences = state_differences(stored, abstract) if stored is not None else []
      if differences:
        raise CheckpointMismatchError(
            f"checkpoint step {step} in {self.directory} does not match this run's config "
            f"({len(differences)} entries differ: {_examples(differences)}); nothing was changed: resume with the "
            "same config that wrote it, or train the new config in a new --workdir")
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
        state = restored["state"]
        _check_finite_restore(state)
      except Exception as e:  # pylint: disable=broad-except
        # Any failure (missing file, truncated array, bad metadata) makes this step unusable.
        logging.warning("checkpoint step %d in %s is corrupt or partial (%s: %s); falling back to the previous "
                        "step", step, self.directory, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        self._quarantine(step)
        continue
      return step, state, own_data_state(restored["data"], jax.process_index(), jax.process_count(), step)
    return None

  def _quarantine(self, step: int) -> None:
    """Moves a bad step out of the way so a later save of the same step number can succeed."""
    if jax.process_index() == 0:
      source = os.path.join(self.directory, str(step))
      if os.path.exists(source):
        os.makedirs(self.corrupt_directory, exist_ok=True)
        target = os.path.join(self.corrupt_directory, f"{step}.{int(time.time() * 1000)}")
        shutil.move(source, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"quarantine_{step}")
    self._manager.close()
    self._manager = self._make_manager()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


DATA_STATES_FORMAT = "per_process_v1"


def gather_data_states(local_state: Any) -> dict[str, Any]:
  """Every process's iterator state as one JSON item (collective: all processes call it with their own state)."""
  states = _allgather_json(_jsonable(local_state))
  return {"format": DATA_STATES_FORMAT, "process_count": len(states),
          "states": {str(index): state for index, state in enumerate(states)}}


def own_data_state(saved: Any, process_index: int, process_count: int, step: int | None = None) -> Any:
  """This process's iterator state from a checkpoint's data item, or None to start its stream afresh.

  Older checkpoints hold process 0's state only: process 0 resumes it, the others warn and start afresh (that
  state belongs to another slice of the stream). A checkpoint of another process count cannot be split between
  this run's processes: all of them warn and start afresh, so the global stream stays consistent.
  """
  where = f"checkpoint step {step}" if step is not None else "checkpoint"
  if not (isinstance(saved, dict) and saved.get("format") == DATA_STATES_FORMAT):
    if process_index == 0 or saved is None:
      return saved
    logging.warning("%s holds the data-iterator state of process 0 only (an older checkpoint); process %d starts "
                    "its data stream from the beginning", where, process_index)
    return None
  if int(saved["process_count"]) != process_count:
    logging.warning("%s holds the data-iterator states of %d processes but this run has %d; every process starts "
                    "its data stream from the beginning (resume with %d processes to continue the stream exactly)",
                    where, int(saved["process_count"]), process_count, int(saved["process_count"]))
    return None
  return saved["states"][str(process_index)]


def _allgather_json(obj: Any) -> list[Any]:
  """[process 0's obj, process 1's obj, ...] on every process (JSON bytes padded to the longest, then gathered)."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int32))).reshape(-1)
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[:data.size] = data
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return [json.loads(bytes(row[:length]).decode("utf-8")) for row, length in zip(gathered, lengths)]


def _path_name(path: tuple) -> str:
  """'params/mapping/dense0/kernel' for a key path (dict keys, attribute names and indices alike)."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def _shapes_by_name(tree: Any) -> dict[str, tuple | None]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
  return {_path_name(path): (tuple(leaf.shape) if hasattr(leaf, "shape") else None) for path, leaf in leaves}


def state_differences(stored_metadata: Any, abstract: Any) -> list[str]:
  """What differs between a checkpoint's stored state (Orbax tree metadata) and the state this run builds:
  'name: shape (a) in the checkpoint, (b) in this run', 'name: not in the checkpoint', 'name: only in the
  checkpoint'. Empty when they fit."""
  stored = _shapes_by_name(getattr(stored_metadata, "tree", stored_metadata))
  wanted = _shapes_by_name(abstract)
  lines = [f"{name}: not in the checkpoint" for name in wanted if name not in stored]
  lines += [f"{name}: only in the checkpoint" for name in stored if name not in wanted]
  lines += [f"{name}: shape {stored[name]} in the checkpoint, {wanted[name]} in this run" for name in wanted
            if name in stored and None not in (stored[name], wanted[name]) and stored[name] != wanted[name]]
  return lines


def _examples(differences: list[str], per_kind: int = 2) -> str:
  """A few differences of each kind ('not in the checkpoint', 'only in the checkpoint', shapes), '; '-joined."""
  kinds: dict[str, list[str]] = {}
  for line in differences:
    kinds.setdefault("shape" if ": shape " in line else line.rsplit(": ", 1)[-1], []).append(line)
  shown = [line for lines in kinds.values() for line in lines[:per_kind]]
  return "; ".join(shown) + ("; ..." if len(shown) < len(differences) else "")


def _abstract_like(x: Any) -> Any:
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  x = np.asarray(x)
  return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _check_finite_restore(state: Any) -> None:
  """A step whose floats are not all finite is treated as corrupt (it would fail at once anyway)."""
  for leaf in jax.tree.leaves(state):
    if not np.issubdtype(np.dtype(leaf.dtype), np.floating):
      continue
    # Host-side check of this process' shards: no compile per leaf shape, works on multi-host arrays.
    shards = leaf.addressable_shards if isinstance(leaf, jax.Array) else ()
    values = [np.asarray(s.data) for s in shards] if shards else [np.asarray(leaf)]
    if not all(np.isfinite(v).all() for v in values):
      raise ValueError("restored state contains NaN/Inf")


def _jsonable(obj: Any) -> Any:
  """numpy scalars/arrays inside the iterator state -> plain JSON types."""
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, bytes):
    return obj.decode("latin-1")
  return obj


class PreemptionGuard:
  """Turns SIGTERM/SIGINT into a flag the training loop polls: it saves, then exits cleanly.

  A second signal restores the previous handler's behaviour (e.g. Ctrl-C twice kills at once). With several
  processes the flag is agreed on collectively so every host saves the same step.
  """

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self._signals = signals
    self._previous = {}
    self._event = threading.Event()

  def __enter__(self) -> "PreemptionGuard":
    if threading.current_thread() is threading.main_thread():
      for sig in self._signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def _handle(self, signum, frame) -> None:
    if self._event.is_set():
      previous = self._previous.get(signum)
      signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    logging.warning("received signal %d: saving a checkpoint and stopping", signum)
    self._event.set()

  def request(self) -> None:
    """Asks for a stop as a signal would (tests, and callers that detect preemption otherwise)."""
    self._event.set()

  def should_stop(self) -> bool:
    local = self._event.is_set()
    if jax.process_count() == 1:
      return local
    flags = multihost_utils.process_allgather(np.asarray(int(local), np.int32))
    return bool(np.max(flags))
