"""Official PyTorch encoder state_dict (`StyleGANEncoderNet`, use_bn=True) <-> our `Encoder` variables.

Key table (k = block index, n = number of blocks = log2(res)):
  block0.conv.weight [O,I,3,3]            params/block0_conv/kernel (HWIO)
  blockk.conv.weight [O,I,1,1]            params/blockk/shortcut_conv/kernel   (only when channels change)
  blockk.conv{1,2}.weight                 params/blockk/conv{1,2}/kernel
  blockk.wscale{1,2}.bias                 params/blockk/conv{1,2}/bias
  block{n-1}.fc.weight [L*w, 16*C]        params/block{n-1}_dense/kernel [16*C, L*w] (transposed; the input
                                          order stays NCHW because the model flattens in that order)
  <bn>.bn.bias / .weight                  params/<bn>/bias, batch_stats/<bn>/scale (frozen; ones if absent)
  <bn>.bn.running_mean / .running_var     batch_stats/<bn>/mean, var
  <bn>.bn.num_batches_tracked             accepted and dropped (unused at inference); exported as 0
where <bn> is block0.bn, blockk.bn (shortcut), blockk.bn1, blockk.bn2 or block{n-1}.bn.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import numpy as np

from idinvert_jax.convert import common
from idinvert_jax.models import encoder as encoder_lib

_BN_LEAVES = {("params", "bias"): "bias", ("batch_stats", "scale"): "weight",
              ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


def _official_module(module_path: tuple[str, ...]) -> str:
  """Our module path (without collection and leaf) -> the official module prefix."""
  first = module_path[0]
  flat = re.fullmatch(r"block(\d+)_(conv|bn|dense)", first)
  if flat:
    block, kind = flat.groups()
    return {"conv": f"block{block}.conv", "bn": f"block{block}.bn.bn", "dense": f"block{block}.fc"}[kind]
  name = module_path[1]
  if name == "shortcut_conv":
    return f"{first}.conv"
  if name == "shortcut_bn":
    return f"{first}.bn.bn"
  if re.fullmatch(r"bn\d", name):
    return f"{first}.{name}.bn"
  return f"{first}.{name}"


def _entry(path: common.Path, shape: tuple[int, ...]) -> common.Entry:
  collection, module, leaf = path[0], path[1:-1], path[-1]
  prefix = _official_module(module)
  if re.search(r"(^|_)bn\d?$", module[-1]):
    key = f"{prefix}.{_BN_LEAVES[(collection, leaf)]}"
    default = (lambda s: np.ones(s, np.float32)) if leaf == "scale" else None
    return common.Entry(key, path, common.IDENTITY, default)
  if leaf == "kernel":
    layout = common.CONV_OIHW if len(shape) == 4 else common.DENSE_OI
    return common.Entry(f"{prefix}.weight", path, layout)
  if leaf == "bias":  # conv1/conv2 bias: the official WScaleLayer adds it.
    block, conv = prefix.split(".")
    return common.Entry(f"{block}.wscale{conv[-1]}.bias", path)
  raise AssertionError(f"unmapped encoder variable {'/'.join(path)}")


def encoder_shapes(E: encoder_lib.Encoder) -> dict[common.Path, tuple[int, ...]]:
  return common.shapes_of(jax.eval_shape(lambda: encoder_lib.init_encoder(E, jax.random.key(0))))


def encoder_table(E: encoder_lib.Encoder) -> common.Table:
  shapes = encoder_shapes(E)
  entries = tuple(_entry(path, shape) for path, shape in sorted(shapes.items()))
  bn_prefixes = sorted({e.key.rsplit(".", 1)[0] for e in entries if ".bn" in e.key})
  extra = {f"{p}.num_batches_tracked": (lambda v: np.zeros((), np.int64)) for p in bn_prefixes}
  return common.Table(entries, extra)


def official_encoder_to_variables(state_dict: Mapping[str, np.ndarray], E: encoder_lib.Encoder) -> dict[str, Any]:
  """Official encoder state_dict -> {'params', 'batch_stats'} for E (errors name bad keys)."""
  return common.to_variables(state_dict, encoder_table(E), encoder_shapes(E), "encoder")


def variables_to_official_encoder(variables: Mapping[str, Any], E: encoder_lib.Encoder) -> dict[str, np.ndarray]:
  """Our encoder variables -> official `StyleGANEncoderNet(use_bn=True)` state_dict."""
  return common.to_state_dict(variables, encoder_table(E))
