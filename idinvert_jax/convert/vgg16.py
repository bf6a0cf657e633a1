"""VGG16 weights (official `vgg16.pth` or Keras `..._notop.h5`) <-> our `VGG16Features` variables.

All 13 convolutions are converted (so the feature layers can change later); a model that stops at conv4_3 simply
does not read conv5_*.

Official PyTorch `VGG16(nn.Sequential)` keys: layer{i}.weight [O,I,3,3] / layer{i}.bias with i the conv's index
in the sequence (conv1_1 -> 0, conv1_2 -> 2, conv2_1 -> 5, ..., conv4_3 -> 21, conv5_3 -> 28) -> params/conv<s>_<j>.
Keras h5 (`vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`): group block<s>_conv<j> holding one 4-d kernel
(already HWIO; Keras convs are cross-correlations like ours) and one 1-d bias, whatever the dataset names
(`block1_conv1_W_1:0` in old files, `block1_conv1/kernel:0` in newer ones).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import numpy as np

from idinvert_jax.convert import common
from idinvert_jax.convert import pth
from idinvert_jax.models import vgg16 as vgg16_lib


def _torch_indices() -> dict[str, int]:
  """Our layer name -> index in the official nn.Sequential (conv, relu per conv; one max-pool per stage)."""
  indices, index = {}, 0
  for name in vgg16_lib.LAYER_NAMES:
    if index > 0 and name.endswith("_1"):
      index += 1  # the max-pool closing the previous stage
    indices[name] = index
    index += 2
  return indices


def vgg16_shapes() -> dict[common.Path, tuple[int, ...]]:
  shapes, in_channels = {}, 3
  for name in vgg16_lib.LAYER_NAMES:
    out = vgg16_lib.CHANNELS[name]
    shapes[("params", name, "kernel")] = (3, 3, in_channels, out)
    shapes[("params", name, "bias")] = (out,)
    in_channels = out
  return shapes


def vgg16_table() -> common.Table:
  entries = []
  for name, index in _torch_indices().items():
    entries.append(common.Entry(f"layer{index}.weight", ("params", name, "kernel"), common.CONV_OIHW))
    entries.append(common.Entry(f"layer{index}.bias", ("params", name, "bias")))
  return common.Table(tuple(entries))


def official_vgg16_to_variables(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Official vgg16.pth state_dict -> {'params': {conv1_1: {kernel, bias}, ...}} (all 13 convs)."""
  return common.to_variables(state_dict, vgg16_table(), vgg16_shapes(), "VGG16")


def variables_to_official_vgg16(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Our VGG16 variables (all 13 convs) -> the official `VGG16` state_dict."""
  return common.to_state_dict(variables, vgg16_table())


def keras_h5_to_variables(path: str | os.PathLike) -> dict[str, Any]:
  """Reads Keras' VGG16 notop .h5 with h5py -> our variables (all 13 convs)."""
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("reading Keras .h5 VGG16 weights needs h5py: pip install 'idinvert_jax[convert]'") from e
  path = os.fspath(path)
  shapes = vgg16_shapes()
  params: dict[str, Any] = {}
  problems = []
  with h5py.File(path, "r") as f:
    root = f["model_weights"] if "model_weights" in f else f
    for name in vgg16_lib.LAYER_NAMES:
      group_name = "block{}_conv{}".format(*name[len("conv"):].split("_"))
      if group_name not in root:
        problems.append(f"missing group {group_name}")
        continue
      arrays = []
      root[group_name].visititems(lambda _, obj: arrays.append(np.asarray(obj)) if hasattr(obj, "shape") else None)
      kernels = [a for a in arrays if a.ndim == 4]
      biases = [a for a in arrays if a.ndim == 1]
      want_kernel, want_bias = shapes[("params", name, "kernel")], shapes[("params", name, "bias")]
      if len(kernels) != 1 or len(biases) != 1 or kernels[0].shape != want_kernel or biases[0].shape != want_bias:
        problems.append(f"{group_name} has {[a.shape for a in arrays]} (expected kernel {want_kernel} and bias "
                        f"{want_bias})")
        continue
      params[name] = {"kernel": kernels[0].astype(np.float32), "bias": biases[0].astype(np.float32)}
  if problems:
    raise common.StateDictMismatchError(f"{path}: not Keras VGG16 notop weights: {'; '.join(problems)}")
  return {"params": params}


def load_vgg16_weights(path: str | os.PathLike) -> dict[str, Any]:
  """Our VGG16 variables from an official vgg16.pth (safe reader) or a Keras .h5 file."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: VGG16 weights not found (config.model.perceptual.weights / --perceptual "
                            f"must name vgg16.pth or vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5)")
  if path.endswith((".h5", ".hdf5")):
    return keras_h5_to_variables(path)
  return official_vgg16_to_variables(pth.load_state_dict(path))


def load_perceptual(model_cfg) -> tuple[vgg16_lib.VGG16Features, dict[str, Any]] | None:
  """(F, variables) from the file in config.model.perceptual.weights, or None (with a warning) when it is empty.

  None means: disable the perceptual term (weight 0). Missing or malformed files raise an error naming them.
  """
  path = model_cfg.perceptual.get("weights", "") if "perceptual" in model_cfg else ""
  if not path:
    logging.warning("No VGG16 weights given (config.model.perceptual.weights is empty): the perceptual loss "
                    "is DISABLED (weight 0). Pass the official vgg16.pth or Keras "
                    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 to enable it.")
    return None
  return vgg16_lib.build_perceptual(model_cfg), load_vgg16_weights(path)


def synthetic_official_vgg16_state_dict(seed: int) -> dict[str, np.ndarray]:
  """Deterministic random weights in the official layout (He-normal kernels, N(0, 0.1) biases).

  Only for parity checks: real VGG16 weights are 58 MB, too big for test fixtures, so the fixture stores the seed
  and the PyTorch outputs, and both sides rebuild these same weights (numpy's PCG64 stream is stable).
  """
  rng = np.random.default_rng(seed)
  state_dict = {}
  for entry in vgg16_table().entries:
    ours_shape = vgg16_shapes()[entry.path]
    if entry.path[-1] == "kernel":
      kh, kw, cin, cout = ours_shape
      weight = rng.standard_normal((cout, cin, kh, kw), dtype=np.float32) * np.float32(np.sqrt(2.0 / (9 * cin)))
    else:
      weight = rng.standard_normal(ours_shape, dtype=np.float32) * np.float32(0.1)
    state_dict[entry.key] = weight
  return state_dict
