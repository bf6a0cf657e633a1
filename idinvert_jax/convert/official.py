"""Official weight files <-> the project checkpoint (what `python -m idinvert_jax.convert` runs).

`convert_official` reads the official PyTorch generator / encoder `.pth` and VGG16 (`vgg16.pth` or Keras `.h5`)
with the safe reader (no torch needed), maps every key explicitly (see convert/generator.py, encoder.py,
vgg16.py) and writes one checkpoint directory (config.json + Orbax variables) via `export.save_models`.
`export_official` goes back: a checkpoint -> `generator.pth`, `encoder.pth`, `vgg16.pth` in the official layout
(writing .pth needs torch: `pip install 'idinvert_jax[convert]'`).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import ml_collections

from idinvert_jax.convert import encoder as convert_encoder
from idinvert_jax.convert import generator as convert_generator
from idinvert_jax.convert import pth
from idinvert_jax.convert import vgg16 as convert_vgg16

EXPORT_NAMES = {"generator": "generator.pth", "encoder": "encoder.pth", "perceptual": "vgg16.pth"}


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """`get_config()` of an experiment config file (configs/*.py)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path} not found; pass --config configs/<experiment>.py")
  # Experiment configs import their siblings (`from configs import common`): make the repository root importable.
  package_dir = Path(path).resolve().parent
  if (package_dir / "__init__.py").is_file() and str(package_dir.parent) not in sys.path:
    sys.path.insert(0, str(package_dir.parent))
  spec = importlib.util.spec_from_file_location(f"_idinvert_config_{Path(path).stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path} defines no get_config(); use one of the files in configs/")
  return module.get_config()


def _build(name: str, model_cfg):
  if name == "generator":
    from idinvert_jax.models import build_generator  # pylint: disable=g-import-not-at-top
    return build_generator(model_cfg)
  if name == "encoder":
    from idinvert_jax.models.encoder import build_encoder  # pylint: disable=g-import-not-at-top
    return build_encoder(model_cfg)
  raise ValueError(name)


def official_to_variables(config: ml_collections.ConfigDict, generator: str | None = None,
                          encoder: str | None = None, perceptual: str | None = None) -> dict[str, Any]:
  """{name: variables} converted from the given official files (architecture from config.model)."""
  variables = {}
  if generator:
    G = _build("generator", config.model)
    variables["generator"] = _with_file(generator, lambda: convert_generator.official_generator_to_variables(
        pth.load_state_dict(generator), G))
  if encoder:
    E = _build("encoder", config.model)
    variables["encoder"] = _with_file(encoder, lambda: convert_encoder.official_encoder_to_variables(
        pth.load_state_dict(encoder), E))
  if perceptual:
    variables["perceptual"] = convert_vgg16.load_vgg16_weights(perceptual)
  return variables


def _with_file(path: str, convert):
  """Runs a conversion; a mismatch error also names the file."""
  try:
    return convert()
  except convert_generator.common.StateDictMismatchError as e:
    raise convert_generator.common.StateDictMismatchError(f"{path}: {e}") from None


def convert_official(output: str | os.PathLike, config: ml_collections.ConfigDict, generator: str | None = None,
                     encoder: str | None = None, perceptual: str | None = None) -> Path:
  """Converts the given official files into the checkpoint directory `output`; returns its path."""
  from idinvert_jax import export  # pylint: disable=g-import-not-at-top
  if not (generator or encoder or perceptual):
    raise ValueError("nothing to convert: pass at least one of --generator, --encoder, --perceptual")
  config = ml_collections.ConfigDict(config.to_dict())
  if perceptual:
    config.model.perceptual.weights = os.path.abspath(perceptual)
  variables = official_to_variables(config, generator, encoder, perceptual)
  return export.save_models(output, config, variables)


def export_official(checkpoint_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Path]:
  """Writes the checkpoint's generator / encoder / perceptual as official .pth files; returns {name: path}."""
  from idinvert_jax import export  # pylint: disable=g-import-not-at-top
  models = export.load_models(checkpoint_dir)
  to_official = {
      "generator": lambda: convert_generator.variables_to_official_generator(models.generator_vars,
                                                                              models.generator),
      "encoder": lambda: convert_encoder.variables_to_official_encoder(models.encoder_vars, models.encoder),
      "perceptual": lambda: convert_vgg16.variables_to_official_vgg16(models.perceptual_vars),
  }
  written = {}
  for name in models.names():
    if name not in to_official:
      continue  # the discriminator has no official PyTorch counterpart
    path = Path(out_dir) / EXPORT_NAMES[name]
    pth.save_state_dict(to_official[name](), path)
    written[name] = path
  if not written:
    raise ValueError(f"{checkpoint_dir} holds none of {sorted(EXPORT_NAMES)}; nothing to export")
  return written
