"""VGG16 perceptual features (the official `PerceptualModel`: conv4_3 after ReLU by default).

Input: NHWC RGB images in [-1, 1]. Preprocessing is Keras' "caffe" mode, exactly as the official model:
x -> (x + 1) * 127.5 in [0, 255], RGB -> BGR, minus the BGR means (103.939, 116.779, 123.68); no std division.
Then the 13 VGG16 3x3 convs (+ ReLU) with 2x2 max-pools between stages; the net stops at the deepest requested
layer. Feature names: conv1_1 conv1_2 | conv2_1 conv2_2 | conv3_1..3 | conv4_1..3 | conv5_1..3 (each after ReLU).

Weights. ImageNet weights cannot be downloaded by this project: they come only from a file the user names in
`config.model.perceptual.weights` - the official `vgg16.pth` or Keras'
`vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5` (read with h5py) - or from a project checkpoint that holds
`perceptual` variables (see `python -m idinvert_jax.convert --perceptual`). Random VGG weights are never used
silently: when no weights are given, `convert.vgg16.load_perceptual` warns (naming config.model.perceptual.weights)
and returns None, and callers must then set the perceptual loss weight to 0.

Variables: `params` {conv<stage>_<i>: {kernel HWIO, bias}}.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from idinvert_jax.models import init as init_lib
from idinvert_jax.models import layers as ops

# (stage, number of convs, channels) of VGG16's convolutional part.
_STAGES = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
LAYER_NAMES = tuple(f"conv{stage}_{i}" for stage, n, _ in _STAGES for i in range(1, n + 1))
CHANNELS = {f"conv{stage}_{i}": c for stage, n, c in _STAGES for i in range(1, n + 1)}

# Keras "caffe" means, in BGR order.
BGR_MEANS = (103.939, 116.779, 123.68)


def preprocess(x: jax.Array) -> jax.Array:
  """[-1, 1] RGB -> [0, 255] BGR minus the ImageNet means (Keras 'caffe' mode)."""
  x = (x + 1.0) * 127.5
  return x[..., ::-1] - jnp.asarray(BGR_MEANS, x.dtype)


class VGG16Features(nn.Module):
  """`__call__(x [N, H, W, 3] in [-1, 1])` -> features of `layers` (one array, or a tuple for several)."""
  layers: Sequence[str] = ("conv4_3",)

  def _check_layers(self) -> tuple[str, ...]:
    layers = (self.layers,) if isinstance(self.layers, str) else tuple(self.layers)
    unknown = [name for name in layers if name not in LAYER_NAMES]
    if not layers or unknown:
      raise ValueError(f"unknown VGG16 feature layer(s) {unknown or layers} in config.model.perceptual.layers; "
                       f"use names from {LAYER_NAMES}")
    return layers

  @nn.compact
  def __call__(self, x: jax.Array):
    layers = self._check_layers()
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"VGG16 input has shape {tuple(x.shape)}; expected NHWC RGB images [N, H, W, 3]")
    last = max(LAYER_NAMES.index(name) for name in layers)
    x = preprocess(x)
    outputs = {}
    for index, name in enumerate(LAYER_NAMES[:last + 1]):
      if index > 0 and name.endswith("_1"):
        x = ops.max_pool_2x2(x)
      x = nn.Conv(CHANNELS[name], (3, 3), padding=((1, 1), (1, 1)), name=name,
                  conv_general_dilated=ops.conv_general_dilated)(x)
      x = nn.relu(x)
      outputs[name] = x
    features = tuple(outputs[name] for name in layers)
    return features[0] if len(features) == 1 else features


def build_perceptual(model_cfg) -> VGG16Features:
  """VGG16Features from `config.model.perceptual.layers` (default ('conv4_3',))."""
  layers = model_cfg.perceptual.get("layers", ("conv4_3",)) if "perceptual" in model_cfg else ("conv4_3",)
  return VGG16Features(layers=tuple(layers))


def _init_impl(F: VGG16Features, rng: jax.Array) -> dict[str, Any]:
  # The variables do not depend on the image size; 16 px is the smallest that survives the three max-pools.
  return dict(F.init(init_lib.fast_init_key(rng), jnp.zeros((1, 16, 16, 3), jnp.float32)))


_init = init_lib.jit_init(_init_impl)


def init_perceptual(F: VGG16Features, rng: jax.Array) -> dict[str, Any]:
  """Random variables for F: for shapes and tests only; never use them as a loss (see module docstring)."""
  return _init(F, rng)


def perceptual_features(F: VGG16Features, variables: dict[str, Any], x: jax.Array):
  """Features of images x [N, H, W, 3] in [-1, 1]: an array for one layer, a tuple for several."""
  return F.apply(variables, x)
