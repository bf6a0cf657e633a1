"""Official PyTorch generator state_dict (`StyleGANGeneratorNet`) <-> our `Generator` variables.

Key table (l = layer index 0..L-1, b = block index, res(l) = 4 * 2 ** (l // 2)):
  mapping.dense{i}.fc.weight [out, in]                        params/mapping/dense{i}/kernel [in, out]
  mapping.dense{i}.wscale.bias                                params/mapping/dense{i}/bias
  truncation.w_avg                                            buffers/w_avg
  synthesis.layer0.const [1, C, 4, 4]                         params/synthesis/layer0/const [1, 4, 4, C]
  synthesis.layer{l}.conv.weight [O, I, 3, 3]                 params/synthesis/layer{l}/kernel (HWIO)
  synthesis.layer{l}.weight [3, 3, I, O] (fused up-conv)      params/synthesis/layer{l}/kernel (as is)
  synthesis.layer{l}.epilogue.apply_noise.weight              params/synthesis/layer{l}/epilogue/noise_weight
  synthesis.layer{l}.epilogue.apply_noise.noise [1, 1, r, r]  buffers/synthesis/layer{l}/epilogue/noise [1, r, r, 1]
  synthesis.layer{l}.epilogue.bias                            params/synthesis/layer{l}/epilogue/bias
  synthesis.layer{l}.epilogue.style_mod.dense.fc.weight       params/synthesis/layer{l}/epilogue/style/kernel (T)
  synthesis.layer{l}.epilogue.style_mod.dense.wscale.bias     params/synthesis/layer{l}/epilogue/style/bias
  synthesis.output{b}.conv.weight [3, C, 1, 1] / .bias        params/synthesis/output{b}/kernel (HWIO) / bias
Derived, not stored (checked on import, recomputed on export):
  synthesis.lod                 must be 0 (no progressive growing at inference)
  synthesis.layer{l}.blur.kernel  the fixed normalised [1, 2, 1] x [1, 2, 1] blur, [C, 1, 3, 3]
  truncation.truncation [1, L, 1] the per-layer psi of the config (shape checked; the values come from
                                  config.model.generator.truncation_psi / truncation_layers)
Whether layer{l} is fused follows the config (fused_scale, fused_scale_min_res), as in the official network.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import numpy as np

from idinvert_jax.convert import common
from idinvert_jax.models import generator as generator_lib

_EPILOGUE_KEYS = {
    ("params", "noise_weight"): "apply_noise.weight",
    ("params", "bias"): "bias",
    ("buffers", "noise"): "apply_noise.noise",
}


def _is_fused(G: generator_lib.Generator, layer: int) -> bool:
  res = generator_lib.INIT_RES * 2 ** (layer // 2)
  return layer % 2 == 0 and layer > 0 and generator_lib.use_fused_scale(G.fused_scale, res,
                                                                        G.fused_scale_min_res)


def _dense_entry(prefix: str, leaf: str, path: common.Path) -> common.Entry:
  """An official equalised dense layer: `<prefix>.fc.weight` (transposed) and `<prefix>.wscale.bias`."""
  if leaf == "kernel":
    return common.Entry(f"{prefix}.fc.weight", path, common.DENSE_OI)
  return common.Entry(f"{prefix}.wscale.bias", path)


def _entry(G: generator_lib.Generator, path: common.Path, shape: tuple[int, ...]) -> common.Entry:
  collection, names = path[0], path[1:]
  joined = "/".join(names)
  if joined == "w_avg":
    return common.Entry("truncation.w_avg", path)
  m = re.fullmatch(r"mapping/dense(\d+)/(kernel|bias)", joined)
  if m:
    return _dense_entry(f"mapping.dense{m.group(1)}", m.group(2), path)
  if joined == "synthesis/layer0/const":
    return common.Entry("synthesis.layer0.const", path, common.MAP_NCHW)
  m = re.fullmatch(r"synthesis/layer(\d+)/kernel", joined)
  if m:
    layer = int(m.group(1))
    if _is_fused(G, layer):
      return common.Entry(f"synthesis.layer{layer}.weight", path)
    return common.Entry(f"synthesis.layer{layer}.conv.weight", path, common.CONV_OIHW)
  m = re.fullmatch(r"synthesis/layer(\d+)/epilogue/(noise_weight|bias|noise)", joined)
  if m:
    layer, leaf = m.groups()
    layout = common.MAP_NCHW if leaf == "noise" else common.IDENTITY
    return common.Entry(f"synthesis.layer{layer}.epilogue.{_EPILOGUE_KEYS[(collection, leaf)]}", path, layout)
  m = re.fullmatch(r"synthesis/layer(\d+)/epilogue/style/(kernel|bias)", joined)
  if m:
    return _dense_entry(f"synthesis.layer{m.group(1)}.epilogue.style_mod.dense", m.group(2), path)
  m = re.fullmatch(r"synthesis/output(\d+)/(kernel|bias)", joined)
  if m:
    block, leaf = m.groups()
    if leaf == "kernel":
      return common.Entry(f"synthesis.output{block}.conv.weight", path, common.CONV_OIHW)
    return common.Entry(f"synthesis.output{block}.bias", path)
  raise AssertionError(f"unmapped generator variable {'/'.join(path)} {shape}")


def blur_kernel_official(channels: int) -> np.ndarray:
  """The official BlurLayer buffer: normalised [1, 2, 1] outer product, one copy per channel, [C, 1, 3, 3]."""
  taps = np.array([1.0, 2.0, 1.0], np.float32)
  kernel = np.outer(taps, taps)
  kernel /= kernel.sum()
  return np.tile(kernel[None, None], (channels, 1, 1, 1)).astype(np.float32)


def truncation_coefficients(G: generator_lib.Generator) -> np.ndarray:
  """The official `truncation.truncation` buffer [1, L, 1]: psi for the first truncation_layers layers, else 1."""
  coefs = np.ones((1, G.num_layers, 1), np.float32)
  if G.truncation_psi is not None and G.truncation_layers is not None:
    coefs[:, :G.truncation_layers] = G.truncation_psi
  return coefs


def generator_shapes(G: generator_lib.Generator) -> dict[common.Path, tuple[int, ...]]:
  """{path: shape} of G's params and buffers (abstract init: nothing is computed)."""

  def init():
    rng = jax.random.key(0)
    variables = G.init({"params": rng, "noise": rng}, jax.numpy.zeros((1, G.z_dim), jax.numpy.float32))
    return {"params": variables["params"], "buffers": variables["buffers"]}

  return common.shapes_of(jax.eval_shape(init))


def generator_table(G: generator_lib.Generator) -> common.Table:
  shapes = generator_shapes(G)
  entries = tuple(_entry(G, path, shape) for path, shape in sorted(shapes.items()))
  extra = {"synthesis.lod": lambda v: np.zeros((), np.float32),
           "truncation.truncation": lambda v: truncation_coefficients(G)}
  for path, shape in shapes.items():
    m = re.fullmatch(r"synthesis/layer(\d+)/kernel", "/".join(path[1:]))
    if m and int(m.group(1)) % 2 == 0:
      channels = shape[-1]
      extra[f"synthesis.layer{m.group(1)}.blur.kernel"] = lambda v, c=channels: blur_kernel_official(c)
  check_values = frozenset(k for k in extra if k != "truncation.truncation")
  return common.Table(entries, extra, check_values)


def official_generator_to_variables(state_dict: Mapping[str, np.ndarray],
                                    G: generator_lib.Generator) -> dict[str, Any]:
  """Official generator state_dict -> {'params', 'buffers'} for G (errors name unknown/missing/mis-shaped keys)."""
  return common.to_variables(state_dict, generator_table(G), generator_shapes(G), "generator")


def variables_to_official_generator(variables: Mapping[str, Any], G: generator_lib.Generator) -> dict[str, np.ndarray]:
  """Our generator variables -> official `StyleGANGeneratorNet` state_dict (repeat_w as in G)."""
  return common.to_state_dict(variables, generator_table(G))
