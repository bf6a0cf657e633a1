"""The model bundle: ONE model-checkpoint format for the whole project (what `train.py` exports).

Not to be confused with `training/checkpoints.py`, the train-state checkpoints a run resumes from. A model
checkpoint is a directory holding

  config.json   the full experiment ConfigDict (architecture in `config.model`)
  models/       Orbax-saved `{name: variables}` for the models it has, names among
                `generator`, `encoder`, `discriminator`, `perceptual`

The converter, the trainers (`WORKDIR/export`), the inverter, the editor and the demo all read and write it.
`load_models` also accepts a training workdir and then reads its `export/` folder.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from idinvert_jax import files

MODEL_NAMES = ("generator", "encoder", "discriminator", "perceptual")
CONFIG_FILE = "config.json"
MODELS_DIR = "models"


class CheckpointError(FileNotFoundError):
  """A checkpoint directory that is missing, incomplete or does not fit the request."""


@dataclasses.dataclass
class Models:
  """The modules built from `config.model` and their variables; a model that is absent is None."""
  config: ml_collections.ConfigDict
  generator: Any = None
  generator_vars: Any = None
  encoder: Any = None
  encoder_vars: Any = None
  discriminator: Any = None
  discriminator_vars: Any = None
  perceptual: Any = None
  perceptual_vars: Any = None

  def names(self) -> tuple[str, ...]:
    """Names of the models this bundle holds variables for."""
    return tuple(n for n in MODEL_NAMES if getattr(self, f"{n}_vars") is not None)

  def variables(self) -> dict[str, Any]:
    return {n: getattr(self, f"{n}_vars") for n in self.names()}


def build_module(name: str, model_cfg: ml_collections.ConfigDict):
  """The flax module called `name`, built from `config.model` (imports lazily: converters need no trainer)."""
  from idinvert_jax import models  # pylint: disable=import-outside-toplevel
  builders = {"generator": models.build_generator, "discriminator": models.build_discriminator,
              "encoder": models.build_encoder, "perceptual": models.build_perceptual}
  if name in builders:
    return builders[name](model_cfg)
  raise ValueError(f"unknown model name {name!r}; expected one of {MODEL_NAMES}")


def init_variables(name: str, module, rng: jax.Array):
  """Random initial variables of `module` (for tests, benchmarks and the start of training)."""
  if name == "generator":
    from idinvert_jax.models.generator import init_generator
    return init_generator(module, rng)
  if name == "discriminator":
    from idinvert_jax.models.discriminator import init_discriminator
    return init_discriminator(module, rng)
  if name == "encoder":
    from idinvert_jax.models.encoder import init_encoder
    return init_encoder(module, rng)
  if name == "perceptual":
    from idinvert_jax.models.vgg16 import init_perceptual
    return init_perceptual(module, rng)
  raise ValueError(f"unknown model name {name!r}; expected one of {MODEL_NAMES}")


def create_models(config: ml_collections.ConfigDict, rng: jax.Array,
                  names: Iterable[str] = ("generator", "encoder")) -> Models:
  """A Models bundle with randomly initialised variables for `names` (tests, benchmarks, training start).

  Random VGG16 weights are only ever made when 'perceptual' is asked for by name: they are fine for timing,
  meaningless as a perceptual metric.
  """
  models = Models(config=config)
  names = tuple(names)
  for name, key in zip(names, jax.random.split(rng, max(len(names), 1))):
    module = build_module(name, config.model)
    setattr(models, name, module)
    setattr(models, f"{name}_vars", init_variables(name, module, key))
  return models


def abstract_models(config: ml_collections.ConfigDict,
                    names: Iterable[str] = ("generator", "encoder", "perceptual")) -> Models:
  """A Models bundle for `names` whose variables are shapes only (jax.ShapeDtypeStruct; nothing is computed or
  allocated): what compile checks need (`invert.py --compile_only --config ...`, train.py's encoder stage)."""
  models = Models(config=config)
  for name in names:
    module = build_module(name, config.model)
    setattr(models, name, module)
    # pylint: disable-next=cell-var-from-loop  (called at once)
    setattr(models, f"{name}_vars", jax.eval_shape(lambda: init_variables(name, module, jax.random.PRNGKey(0))))
  return models


def _to_numpy_tree(tree):
  return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)


def save_models(directory: str | Path, config: ml_collections.ConfigDict,
                variables: Mapping[str, Any], overwrite: bool = True) -> Path:
  """Writes `config.json` and the Orbax-saved `{name: variables}` into `directory`.

  The variables are written first and config.json last (atomically), so a directory with a config.json is
  complete; a half-written one is rejected by `load_models` with a clear message.
  """
  directory = Path(directory).absolute()
  unknown = set(variables) - set(MODEL_NAMES)
  if unknown:
    raise ValueError(f"save_models: unknown model names {sorted(unknown)}; expected some of {MODEL_NAMES}")
  if not variables:
    raise ValueError("save_models: nothing to save (no variables given)")
  directory.mkdir(parents=True, exist_ok=True)
  config_path = directory / CONFIG_FILE
  models_path = directory / MODELS_DIR
  if config_path.exists() or models_path.exists():
    if not overwrite:
      raise FileExistsError(f"{directory} already holds a checkpoint; pass overwrite=True or choose another folder")
    config_path.unlink(missing_ok=True)
    shutil.rmtree(models_path, ignore_errors=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(models_path, {k: _to_numpy_tree(v) for k, v in variables.items()})
  checkpointer.wait_until_finished()
  files.atomic_write_text(config_path, config.to_json_best_effort(indent=2) + "\n")
  return directory


def find_checkpoint_dir(path: str | Path) -> Path:
  """The model-checkpoint directory at `path`: itself, or `path/export` for a training workdir."""
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f"checkpoint {path} does not exist; pass a folder written by "
                          "`python -m idinvert_jax.convert` or `train.py` (its --workdir)")
  for candidate in (path, path / "export"):
    if (candidate / CONFIG_FILE).is_file() and (candidate / MODELS_DIR).is_dir():
      return candidate
  if (path / MODELS_DIR).is_dir() or (path / "export").is_dir():
    raise CheckpointError(f"checkpoint {path} is incomplete (no {CONFIG_FILE}: the writer was interrupted); "
                          "re-run the conversion or let training write its next export")
  raise CheckpointError(f"{path} is not a checkpoint (expected {CONFIG_FILE} and {MODELS_DIR}/ inside, or a "
                        "training workdir with export/); convert official weights with `python -m "
                        "idinvert_jax.convert` or train with `train.py`")


def load_config(path: str | Path) -> ml_collections.ConfigDict:
  """The ConfigDict stored with a checkpoint (or a training workdir's export)."""
  directory = find_checkpoint_dir(path)
  with open(directory / CONFIG_FILE) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_models(path: str | Path, names: Iterable[str] | None = None,
                config: ml_collections.ConfigDict | None = None, if_present: bool = False) -> Models:
  """Loads a checkpoint written by `save_models` (or a training workdir) into a `Models` bundle.

  Args:
    path: checkpoint directory or training workdir.
    names: models to load; None loads every model the checkpoint has. Asking for a model the checkpoint lacks
      is an error that names it.
    config: optional config to use instead of the stored one (its `model` section must match the stored one for
      the models loaded: an encoder trained on a stored generator may have another architecture).
    if_present: models of `names` that the checkpoint lacks are left None instead of being an error.
  """
  directory = find_checkpoint_dir(path)
  stored_config = load_config(directory)
  # Orbax refuses relative paths; `--checkpoint ckpt_ffhq256` from the README is one.
  restored = dict(ocp.StandardCheckpointer().restore((directory / MODELS_DIR).absolute()))
  if config is None:
    config = stored_config
  else:
    loaded = [n for n in MODEL_NAMES if n in restored and (names is None or n in names)]
    _check_same_architecture(stored_config.model, config.model, directory, loaded)
  if "perceptual" not in restored and config.model.perceptual.get("weights", ""):
    # VGG16 weights named by the config (a file the user provides) rather than stored in the checkpoint.
    from idinvert_jax.convert.vgg16 import load_perceptual  # pylint: disable=import-outside-toplevel
    restored["perceptual"] = load_perceptual(config.model)[1]
  available = tuple(n for n in MODEL_NAMES if n in restored)
  wanted = available if names is None else tuple(n for n in names if n in available or not if_present)
  missing = [n for n in wanted if n not in available]
  if missing:
    raise CheckpointError(f"checkpoint {directory} has no {', '.join(missing)} (it has: "
                          f"{', '.join(available) or 'nothing'}); convert or train the missing model first")
  models = Models(config=config)
  for name in wanted:
    setattr(models, name, build_module(name, config.model))
    setattr(models, f"{name}_vars", jax.tree_util.tree_map(np.asarray, restored[name]))
  return models


# Architecture settings added after checkpoints were first written, with the value an older checkpoint means.
_LATER_MODEL_KEYS = {("encoder", "normalization"): "batch"}


def with_later_model_keys(model: dict) -> dict:
  """A stored config.model dict (from JSON) with the keys added since it was written set to what they mean."""
  for (section, key), value in _LATER_MODEL_KEYS.items():
    if isinstance(model.get(section), dict):
      model[section].setdefault(key, value)
  return model


def _check_same_architecture(stored: ml_collections.ConfigDict, given: ml_collections.ConfigDict,
                             directory: Path, names: Iterable[str] = MODEL_NAMES) -> None:
  """Refuses a config whose architecture differs from the checkpoint's for the models `names` being loaded."""
  stored_d, given_d = json.loads(stored.to_json_best_effort()), json.loads(given.to_json_best_effort())
  for d in (stored_d, given_d):
    # The perceptual weights path may legitimately differ (the weights are stored in the checkpoint).
    d.get("perceptual", {}).pop("weights", None)
    with_later_model_keys(d)
  # Sections of models that are not loaded do not matter (the encoder stage trains a new encoder on a stored G).
  ignored = set(MODEL_NAMES) - set(names)
  diffs = sorted(k for k in set(stored_d) | set(given_d)
                 if k not in ignored and stored_d.get(k) != given_d.get(k))
  if diffs:
    raise CheckpointError(f"--config does not match checkpoint {directory}: config.model differs in "
                          f"{', '.join(diffs)}; drop --config (the checkpoint carries its own) or fix those fields")
