"""The step loop both stages share: resume, train, log, sample, checkpoint + export, NaN stop, preemption.

A stage supplies a `Stage` (how to build its state, its jitted step, what to export and what to draw); this loop
does everything that does not depend on the model. Resuming is exact: the state holds the step and the base
RNG key (each step folds the step number into it) and the data iterator's state is stored with every checkpoint,
so training 2N steps equals training N, stopping, and resuming for N more.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from idinvert_jax.training import checkpoints
from idinvert_jax.training import logging as train_logging


class NonFiniteLossError(FloatingPointError):
  """A loss became NaN/Inf; the run stopped without saving the bad state."""


@dataclasses.dataclass
class Stage:
  """What a training stage gives the loop.

  name: 'gan' or 'encoder' (checkpoint sub-folder, log tag).
  init_state: () -> sharded train state pytree (a dict with at least 'step'), used when nothing to resume.
  abstract_state: () -> the same tree as jax.ShapeDtypeStruct with shardings (restore target; nothing runs).
  train_step: (state, images) -> (state, metrics dict of scalars); compiled with shardings.
  export_variables: state -> {model name: variables} for export.save_models.
  sample_rows: (state, images) -> rows of [-1, 1] HWC images for the PNG grid (or None).
  export_origins: step -> {model name: origin} written to export/training.json (None: every exported model is
    {"stage": name, "step": step}); an origin may name the "generator" origin a model was trained against.
  check_metrics: (step, logged metrics) -> warnings about the run's health, logged as they come (or None).
  """
  name: str
  init_state: Callable[[], Any]
  abstract_state: Callable[[], Any]
  train_step: Callable[[Any, jax.Array], tuple[Any, Mapping[str, jax.Array]]]
  export_variables: Callable[[Any], dict[str, Any]]
  sample_rows: Callable[[Any, jax.Array], list] | None = None
  sample_row_labels: tuple[str, ...] | None = None
  export_origins: Callable[[int], dict[str, Any]] | None = None
  check_metrics: Callable[[int, dict], list[str]] | None = None


@dataclasses.dataclass
class RunResult:
  state: Any
  step: int            # steps completed (== the state's step)
  start_step: int      # step this run resumed from (0 for a fresh start)
  preempted: bool      # stopped early by SIGTERM/SIGINT after saving
  metrics: dict        # last step's metrics


def run(stage: Stage, *, config: Any, workdir: str, data_iterator: Iterator[jax.Array], num_steps: int,
        batch_size: int, checkpoint_every: int, keep_checkpoints: int = 3, log_every: int = 10,
        sample_every: int = 0, show_progress: bool = True) -> RunResult:
  """Trains `stage` up to `num_steps` in `workdir`, resuming from its latest good checkpoint."""
  workdir = os.path.abspath(workdir)
  checkpointer = checkpoints.TrainCheckpointer(os.path.join(workdir, "checkpoints", stage.name),
                                                 max_to_keep=keep_checkpoints)
  restored = checkpointer.restore_latest(stage.abstract_state())
  start_step = 0
  if restored is None:
    state = stage.init_state()
  else:
    start_step, state, data_state = restored
    if data_state is not None and hasattr(data_iterator, "set_state"):
      data_iterator.set_state(data_state)
    logging.info("resumed %s training from step %d in %s", stage.name, start_step, checkpointer.directory)
  if int(to_host(state["step"])) != start_step:
    raise RuntimeError(f"checkpoint step {start_step} holds state step {int(state['step'])}; the checkpoint folder "
                       f"{checkpointer.directory} is inconsistent, move it away to restart")

  logger = train_logging.TrainLogger(workdir, total_steps=num_steps, start_step=start_step, batch_size=batch_size,
                                     stage=stage.name, show_progress=show_progress)
  last_saved = start_step if restored is not None else None
  metrics: dict = {}
  step = start_step
  preempted = False

  def save(at_step: int) -> None:
    data_state = data_iterator.get_state() if hasattr(data_iterator, "get_state") else None
    checkpointer.save(at_step, state, data_state, {"stage": stage.name, "kimg": at_step * batch_size / 1000})
    variables = stage.export_variables(state)
    origins = (stage.export_origins(at_step) if stage.export_origins is not None
               else {name: {"stage": stage.name, "step": at_step} for name in variables})
    export_models(workdir, config, variables, at_step, origins)

  try:
    with checkpoints.PreemptionGuard() as guard:
      while step < num_steps:
        images = next(data_iterator)
        state, step_metrics = stage.train_step(state, images)
        # Fetching the scalars syncs once per step; it is what lets a NaN stop the run before it is saved.
        metrics = {k: float(to_host(v)) for k, v in step_metrics.items()}
        step += 1
        bad = sorted(k for k, v in metrics.items() if not np.isfinite(v))
        if bad:
          raise NonFiniteLossError(
              f"{stage.name} training: {', '.join(f'{k}={metrics[k]}' for k in bad)} at step {step}; stopped. "
              f"Last good checkpoint: step {last_saved} in {checkpointer.directory} (lower the learning rate "
              "or check the data)")
        logger.step_done(step, metrics)
        if step % log_every == 0 or step == num_steps:
          logger.write_metrics(step, metrics)
          for warning in stage.check_metrics(step, metrics) if stage.check_metrics is not None else ():
            logger.warn(warning)
        if sample_every and stage.sample_rows is not None and (step % sample_every == 0 or step == num_steps):
          logger.save_grid(step, stage.sample_rows(state, images), row_labels=stage.sample_row_labels)
        stop = guard.should_stop()
        if step % checkpoint_every == 0 or step == num_steps or stop:
          save(step)
          last_saved = step
        if stop:
          preempted = True
          logging.warning("stopped at step %d after saving (preemption)", step)
          break
  finally:
    checkpointer.close()
    logger.close()
  return RunResult(state=state, step=step, start_step=start_step, preempted=preempted, metrics=metrics)


def check_mirror_owner(config: Any, stage: str) -> None:
  """config.train.<stage>.mirror is the only mirror setting; a leftover config.data.mirror is refused.

  It used to exist with a different default (False vs True) and training silently ignored it, so a config that
  still sets it expects something this code does not do.
  """
  data_cfg = config.get("data") if hasattr(config, "get") else None
  if data_cfg is not None and "mirror" in data_cfg:
    raise ValueError(f"config.data.mirror={data_cfg['mirror']} is not read by training; horizontal flips are set "
                     f"per stage by config.train.{stage}.mirror (now {config.train.mirror}): use "
                     f"config.train.<stage>.mirror (e.g. --config.train.{stage}.mirror=False) and remove "
                     "config.data.mirror from the config")


def make_data_iterator(config: Any, mesh: jax.sharding.Mesh, stage: str):
  """The grain training iterator of a stage-merged config: config.data for the images, config.train for the
  batch size, seed and mirror."""
  from idinvert_jax.data.pipeline import make_train_iterator  # pylint: disable=import-outside-toplevel
  check_mirror_owner(config, stage)
  tcfg = config.train
  return make_train_iterator(config.data, int(config.model.resolution), int(tcfg.batch_size), mesh,
                             int(tcfg.seed), mirror=bool(tcfg.mirror))


EXPORT_ORIGINS_FILE = "training.json"  # in export/: where each model came from (not read by load_models)
_KEPT_MODEL_NAMES = ("generator", "encoder", "discriminator")  # perceptual weights come from the config instead


def read_export_origins(checkpoint_dir: str) -> dict[str, Any]:
  """{model name: origin} of a checkpoint written by training ({} for converted or older checkpoints)."""
  try:
    with open(os.path.join(checkpoint_dir, EXPORT_ORIGINS_FILE)) as f:
      return dict(json.load(f).get("models", {}))
  except FileNotFoundError:
    return {}


def describe_origin(origin: Any) -> str:
  """'gan step 400', 'checkpoint /path' or 'an unrecorded source' (exports written before training.json)."""
  if not origin:
    return "an unrecorded source"
  if "stage" in origin:
    return f"{origin['stage']} step {origin['step']}"
  return f"checkpoint {origin.get('checkpoint', '?')}"


def stale_model_warnings(kept_origins: Mapping[str, Any], new_origins: Mapping[str, Any]) -> list[str]:
  """One line per kept model that was trained against another generator than the one being exported now."""
  if "generator" not in new_origins:
    return []
  generator_now = new_origins["generator"]
  lines = []
  for name, origin in kept_origins.items():
    if name == "generator":
      continue
    trained_with = (origin or {}).get("generator")
    if trained_with is not None and trained_with == generator_now:
      continue
    lines.append(f"export/ keeps the {name} of the previous export ({describe_origin(origin)}), trained on the "
                 f"generator of {describe_origin(trained_with)}; the generator is now {describe_origin(generator_now)}"
                 f", so the {name} does not match it: run train.py --stage encoder again to retrain it")
  return lines


def _models_to_keep(export_dir: str, config: Any, exported: Mapping[str, Any]) -> tuple[dict, dict]:
  """Variables and origins of the models in export/ that this export does not write (e.g. the encoder when the
  GAN stage exports), so re-running one stage never deletes the other stage's result."""
  from idinvert_jax import export  # pylint: disable=import-outside-toplevel
  if not os.path.isfile(os.path.join(export_dir, export.CONFIG_FILE)):
    return {}, {}
  try:
    stored = export.load_models(export_dir, config=config)  # refuses a different architecture
  except export.CheckpointError as e:
    logging.warning("the models in %s are not kept in the new export: %s", export_dir, e)
    return {}, {}
  names = [n for n in stored.names() if n in _KEPT_MODEL_NAMES and n not in exported]
  old_origins = read_export_origins(export_dir)
  return {n: stored.variables()[n] for n in names}, {n: old_origins.get(n) for n in names}


def export_models(workdir: str, config: Any, variables: Mapping[str, Any], step: int,
                  origins: Mapping[str, Any] | None = None) -> str:
  """Writes WORKDIR/export in the project checkpoint format, swapping the folder in only once complete.

  Models already in export/ that `variables` does not hold are kept (with a warning when they were trained
  against another generator); export/training.json records each model's origin.
  """
  from idinvert_jax import export  # pylint: disable=import-outside-toplevel
  from idinvert_jax import files  # pylint: disable=import-outside-toplevel
  final = os.path.join(workdir, "export")
  origins = dict(origins or {name: {"step": step} for name in variables})
  kept_variables, kept_origins = _models_to_keep(final, config, variables)
  for line in stale_model_warnings(kept_origins, origins):
    logging.warning("%s", line)
  if kept_variables:
    logging.info("export at step %d keeps %s from the previous export/", step, ", ".join(sorted(kept_variables)))
  host_variables = jax.tree.map(to_host, dict(variables, **kept_variables))
  staging = os.path.join(workdir, f".export-{step}")
  if jax.process_index() == 0 and os.path.exists(staging):
    shutil.rmtree(staging)
  _sync(f"export_clean_{step}")
  export.save_models(staging, config, host_variables)
  _sync(f"export_written_{step}")
  if jax.process_index() == 0:
    files.atomic_write_json(os.path.join(staging, EXPORT_ORIGINS_FILE),
                            {"models": dict(origins, **kept_origins)})
    old = os.path.join(workdir, f".export-old-{step}")
    if os.path.exists(final):
      os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)
  _sync(f"export_done_{step}")
  return final


def to_host(x: Any) -> np.ndarray:
  """A global jax.Array -> numpy on every process (replicated arrays are read locally, sharded ones gathered)."""
  if not isinstance(x, jax.Array):
    return np.asarray(x)
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  if x.sharding.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def replicate_for_compute(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """`tree` constrained to be whole on every device of `mesh` (inside a jitted step).

  A no-op for replicated parameters. With parameters sharded over the data axis (FSDP, config.mesh.param_rules)
  it is where they are all-gathered for the forward pass; the gradients' transpose is a reduce-scatter back to
  the shards. Without it XLA's sharding propagation may instead move the batch (activations) to the weights.
  """
  return jax.lax.with_sharding_constraint(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def step_rng(base_rng: jax.Array, step: jax.Array) -> jax.Array:
  """The RNG key of one step: a pure function of the stored base key and the step (exact resume)."""
  return jax.random.fold_in(base_rng, step)


class StateShapesMixin:
  """Initial, abstract and input shapes shared by the stage trainers.

  Needs `_init_state_unsharded()`, `_state_shapes`, `state_shardings`, `images_sharding`, `config`, `tcfg`, and
  `_jitted_init = _abstract_state = None` set in `__init__`.
  """

  def init_state(self) -> dict[str, Any]:
    if self._jitted_init is None:  # one compile per trainer, however often a run starts fresh
      self._jitted_init = jax.jit(self._init_state_unsharded, out_shardings=self.state_shardings)
    return self._jitted_init()

  def abstract_state(self) -> Any:
    if self._abstract_state is None:
      self._abstract_state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                          self._state_shapes, self.state_shardings)
    return self._abstract_state

  def abstract_images(self) -> jax.ShapeDtypeStruct:
    res = int(self.config.model.resolution)
    channels = int(self.config.model.get("image_channels", 3))
    return jax.ShapeDtypeStruct((int(self.tcfg.batch_size), res, res, channels), jnp.float32,
                                sharding=self.images_sharding)
