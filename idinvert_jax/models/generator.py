"""StyleGAN-v1 generator, the exact variant of the official `styleganinv_*256` models.

z [N, z_dim] --mapping--> wp [N, L, w_dim] --truncation--> wp --synthesis--> images [N, res, res, C] in NHWC.
L = num_layers = 2 * (log2(resolution) - 1): two style inputs per resolution from 4x4 up.

Variables (`init_generator`):
  params
    mapping/dense{i}/{kernel [in, out], bias [out]}         i < mapping_layers; lr_mul 0.01, gain sqrt(2)
    synthesis/layer0/const [1, 4, 4, C]                     learned constant input (ones at init)
    synthesis/layer{2b}/kernel [3, 3, in, out]              up-conv of block b >= 1 (fused or not, same layout)
    synthesis/layer{2b+1}/kernel [3, 3, C, C]               second conv of block b
    synthesis/layer{l}/epilogue/{noise_weight, bias, style/{kernel, bias}}
    synthesis/output{b}/{kernel [1, 1, C, image_channels], bias}   ToRGB of every block b
  buffers
    w_avg [w_dim]                                           truncation centre (tracked by training)
    synthesis/layer{l}/epilogue/noise [1, res, res, 1]      fixed noise maps ('const' noise mode)

ToRGB (`output{b}`) parameters exist for every resolution, as in the official file, so a converted .pth keeps
all of its trainable values (29,500,757 for ffhq256) and converts back losslessly; only the last one is used
(no progressive growing: the official `lod` is 0 for the released models and is not stored here).

Mapping from the official PyTorch state_dict (converter reference; W.T = transpose of a Linear weight, C.T =
Conv2d weight permuted (2, 3, 1, 0)):
  mapping.dense{i}.fc.weight (W.T) / .wscale.bias            -> mapping/dense{i}/kernel / bias
  truncation.w_avg                                           -> buffers w_avg
  synthesis.layer0.const [1, C, 4, 4] (permute 0, 2, 3, 1)   -> synthesis/layer0/const
  synthesis.layer{l}.weight (fused, as is) | .conv.weight (C.T) -> synthesis/layer{l}/kernel
  synthesis.layer{l}.epilogue.apply_noise.weight / .noise [1, 1, r, r] (permute 0, 2, 3, 1)
                                                             -> .../epilogue/noise_weight / buffers .../noise
  synthesis.layer{l}.epilogue.bias                           -> .../epilogue/bias
  synthesis.layer{l}.epilogue.style_mod.dense.fc.weight (W.T) / .wscale.bias -> .../epilogue/style/kernel / bias
  synthesis.output{b}.conv.weight (C.T) / .bias              -> synthesis/output{b}/kernel / bias
  ignored: synthesis.lod (must be 0), truncation.truncation (derived from psi/layers), *.blur.kernel (constant)
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from idinvert_jax.models import init as init_lib
from idinvert_jax.models import layers as ops

INIT_RES = 4
RESOLUTIONS = (8, 16, 32, 64, 128, 256, 512, 1024)
FUSED_SCALE_OPTIONS = ("auto", True, False)


def num_channels(res: int, fmaps_base: int, fmaps_max: int) -> int:
  """Feature maps at a resolution: min(fmaps_base // res, fmaps_max) (official `get_nf`)."""
  return min(fmaps_base // res, fmaps_max)


def num_wp_layers(resolution: int) -> int:
  """Number of W+ layers L (style inputs): 2 per resolution from 4x4 up to `resolution` (14 at 256 px).

  The one definition of L: the encoder's output and the inversion engine use it too.
  """
  return 2 * (int(math.log2(resolution)) - 1)


def check_sizes(model: str, resolution: int, fused_scale: Union[str, bool]) -> None:
  """Raises ValueError naming `model` unless the resolution and the fused_scale option are supported."""
  if resolution not in RESOLUTIONS:
    raise ValueError(f"{model} resolution={resolution} is not supported; use one of {RESOLUTIONS}.")
  if fused_scale not in FUSED_SCALE_OPTIONS:
    raise ValueError(f"{model} fused_scale={fused_scale!r} is invalid; use 'auto', True or False.")


def use_fused_scale(fused_scale: Union[str, bool], res: int, min_res: int) -> bool:
  """Whether the layer producing `res` uses the fused (transposed-conv) resampling."""
  return res >= min_res if fused_scale == "auto" else bool(fused_scale)


class MappingNetwork(nn.Module):
  """PixelNorm(z) then `num_layers` equalised dense layers, each followed by leaky ReLU (the last one too).

  The last layer is `out_dim` wide; the generator reshapes it to W+ (repeat_w=False) or tiles it.
  """
  num_layers: int
  hidden_dim: int
  out_dim: int
  lr_mul: float = 0.01

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    x = ops.pixel_norm(z)
    for i in range(self.num_layers):
      width = self.out_dim if i == self.num_layers - 1 else self.hidden_dim
      x = ops.leaky_relu(ops.EqualizedDense(width, lr_mul=self.lr_mul, name=f"dense{i}")(x))
    return x


class ConstBlock(nn.Module):
  """First layer: learned 4x4 constant (ones at init) + epilogue."""
  channels: int

  @nn.compact
  def __call__(self, w: jax.Array, noise_mode: str) -> jax.Array:
    const = self.param("const", nn.initializers.ones, (1, INIT_RES, INIT_RES, self.channels))
    x = jnp.broadcast_to(const, (w.shape[0],) + const.shape[1:])
    return ops.Epilogue(INIT_RES, name="epilogue")(x, w, noise_mode)


class SynthesisLayer(nn.Module):
  """A 3x3 conv (no bias) + epilogue; the first layer of a resolution (`up`) is a 2x up-conv (fused or not)
  followed by blur. Param `kernel` [3, 3, in, out]."""
  resolution: int
  channels: int
  up: bool = False
  fused: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, w: jax.Array, noise_mode: str) -> jax.Array:
    fan_in = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.normal(1.0), (3, 3, fan_in, self.channels))
    kernel = kernel * ops.he_scale(9 * fan_in)
    x = ops.blur(ops.upconv2d(x, kernel, self.fused)) if self.up else ops.conv2d(x, kernel)
    return ops.Epilogue(self.resolution, name="epilogue")(x, w, noise_mode)


class ToRGB(nn.Module):
  """1x1 conv to image channels, weight scale 1 / sqrt(in) (gain 1), plus bias."""
  channels: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.normal(1.0), (1, 1, fan_in, self.channels))
    bias = self.param("bias", nn.initializers.zeros, (self.channels,))
    return ops.conv2d(x, kernel * ops.he_scale(fan_in, gain=1.0)) + bias


class SynthesisNetwork(nn.Module):
  """wp [N, L, w_dim] -> images [N, res, res, image_channels]; see the module docstring for the layout."""
  resolution: int
  fmaps_base: int
  fmaps_max: int
  fused_scale: Union[str, bool] = "auto"
  fused_scale_min_res: int = 128
  image_channels: int = 3
  final_tanh: bool = True

  @nn.compact
  def __call__(self, wp: jax.Array, noise_mode: str = "const") -> jax.Array:
    nf = lambda r: num_channels(r, self.fmaps_base, self.fmaps_max)
    num_blocks = int(math.log2(self.resolution)) - 1
    image = None
    for b in range(num_blocks):
      res = INIT_RES * 2 ** b
      if b == 0:
        x = ConstBlock(nf(res), name="layer0")(wp[:, 0], noise_mode)
      else:
        fused = use_fused_scale(self.fused_scale, res, self.fused_scale_min_res)
        x = SynthesisLayer(res, nf(res), up=True, fused=fused, name=f"layer{2 * b}")(x, wp[:, 2 * b], noise_mode)
      x = SynthesisLayer(res, nf(res), name=f"layer{2 * b + 1}")(x, wp[:, 2 * b + 1], noise_mode)
      # Lower-res ToRGB layers only need to exist (official parameters); they are run at init only.
      if b == num_blocks - 1 or self.is_initializing():
        image = ToRGB(self.image_channels, name=f"output{b}")(x)
    return jnp.tanh(image) if self.final_tanh else image


class Generator(nn.Module):
  """StyleGAN-v1 generator; the defaults are the official `styleganinv_ffhq256` architecture.

  Methods (use through the module-level functions below): `map_latents(z) -> wp` (untruncated),
  `truncate(wp, psi, layers)`, `synthesize(wp, noise_mode)`, `__call__(z, psi, layers, noise_mode)`.
  """
  resolution: int = 256
  z_dim: int = 512
  w_dim: int = 512
  mapping_layers: int = 8
  mapping_fmaps: int = 512   # hidden width; the official network uses fmaps_max here
  mapping_lr_mul: float = 0.01
  fmaps_base: int = 16384
  fmaps_max: int = 512
  fused_scale: Union[str, bool] = "auto"
  fused_scale_min_res: int = 128
  final_tanh: bool = True
  repeat_w: bool = False
  noise_mode: str = "const"
  truncation_psi: Optional[float] = 0.7
  truncation_layers: Optional[int] = 8
  image_channels: int = 3

  def __post_init__(self):
    check_sizes("Generator", self.resolution, self.fused_scale)
    if self.noise_mode not in ops.NOISE_MODES:
      raise ValueError(f"Generator noise_mode={self.noise_mode!r} is invalid; use one of {ops.NOISE_MODES}.")
    if self.mapping_layers < 1:
      raise ValueError(f"Generator mapping_layers={self.mapping_layers} must be >= 1.")
    super().__post_init__()

  @property
  def num_layers(self) -> int:
    """Number of W+ layers L (14 at 256 px)."""
    return num_wp_layers(self.resolution)

  def setup(self):
    width = self.w_dim * (1 if self.repeat_w else self.num_layers)
    self.mapping = MappingNetwork(self.mapping_layers, self.mapping_fmaps, width, self.mapping_lr_mul)
    self.synthesis = SynthesisNetwork(
        self.resolution, self.fmaps_base, self.fmaps_max, self.fused_scale, self.fused_scale_min_res,
        self.image_channels, self.final_tanh)
    self.w_avg = self.variable("buffers", "w_avg", jnp.zeros, (self.w_dim,), jnp.float32)

  def map_latents(self, z: jax.Array) -> jax.Array:
    """z [N, z_dim] -> untruncated W+ codes [N, L, w_dim]."""
    w = self.mapping(z)
    if self.repeat_w:
      return jnp.broadcast_to(w[:, None, :], (w.shape[0], self.num_layers, self.w_dim))
    return w.reshape(w.shape[0], self.num_layers, self.w_dim)

  def truncate(self, wp: jax.Array, psi=None, layers=None) -> jax.Array:
    return truncate_codes(wp, self.w_avg.value, *self._truncation_args(psi, layers))

  def synthesize(self, wp: jax.Array, noise_mode: Optional[str] = None) -> jax.Array:
    """wp [N, L, w_dim] -> images [N, res, res, image_channels]."""
    return self.synthesis(wp, noise_mode or self.noise_mode)

  def __call__(self, z: jax.Array, psi=None, layers=None, noise_mode: Optional[str] = None) -> jax.Array:
    """z -> mapping -> truncation -> synthesis (the official `easy_synthesize` z path)."""
    return self.synthesize(self.truncate(self.map_latents(z), psi, layers), noise_mode)

  def _truncation_args(self, psi, layers):
    psi = self.truncation_psi if psi is None else psi
    layers = self.truncation_layers if layers is None else layers
    return (1.0, 0) if psi is None or layers is None else (psi, layers)


def truncate_codes(wp: jax.Array, w_avg: jax.Array, psi: Any, layers: int) -> jax.Array:
  """Moves the first `layers` W+ layers towards w_avg by psi; later layers are returned untouched.

  Written as the lerp wp * psi + w_avg * (1 - psi) (the official w_avg + (wp - w_avg) * psi up to rounding),
  which is exactly wp at psi == 1 even when psi is traced. `layers` must be a Python int.
  """
  if layers <= 0:
    return wp
  moved = wp * psi + w_avg * (1.0 - psi)
  keep = jnp.arange(wp.shape[1])[None, :, None] >= layers
  return jnp.where(keep, wp, moved)


def _check_latents(G: Generator, x: jax.Array, expected: tuple[int, ...], name: str):
  if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
    raise ValueError(f"{name} has shape {tuple(x.shape)}; this generator expects [N, "
                     f"{', '.join(map(str, expected))}] (resolution {G.resolution}). Pass codes of that shape.")


def _noise_rngs(G: Generator, noise_rng: Optional[jax.Array]) -> dict:
  if noise_rng is not None:
    return {"noise": noise_rng}
  if G.noise_mode == "random":
    raise ValueError("Generator noise_mode='random' needs noise_rng=<PRNG key>; pass one or use 'const'.")
  return {}


def _init_impl(G: Generator, rng: jax.Array) -> dict:
  params_rng, noise_rng = jax.random.split(init_lib.fast_init_key(rng))
  z = jnp.zeros((1, G.z_dim), jnp.float32)
  variables = G.init({"params": params_rng, "noise": noise_rng}, z)
  return {"params": variables["params"], "buffers": variables["buffers"]}


_init = init_lib.jit_init(_init_impl)


# jit with the module static: repeated eager calls with the same config compile once; inside a caller's
# jit / grad / vmap this inlines.
@functools.partial(jax.jit, static_argnums=(0, 1))
def _apply(G: Generator, method: str, variables: dict, x: jax.Array, rngs: dict) -> jax.Array:
  return G.apply(variables, x, method=method, rngs=rngs)


def init_generator(G: Generator, rng: jax.Array) -> dict:
  """Fresh variables {'params', 'buffers'}: TF-style N(0, 1/lr_mul) weights, zero biases and noise strengths,
  ones const, zero w_avg, N(0, 1) noise maps.

  Deterministic in `rng` (drawn through an 'unsafe_rbg' key, see `init.fast_init_key`); a call nested in a jit /
  eval_shape compiles without `init.INIT_COMPILER_OPTIONS` and may differ from a top-level call by float rounding of
  the normal transform (measured <= 2.4e-7 on values of size ~4).
  """
  return _init(G, rng)


def mapping(G: Generator, variables: dict, z: jax.Array) -> jax.Array:
  """z [N, z_dim] -> untruncated W+ codes wp [N, L, w_dim]."""
  _check_latents(G, z, (G.z_dim,), "z")
  return _apply(G, "map_latents", variables, z, {})


def truncate(G: Generator, variables: dict, wp: jax.Array, psi=None, layers=None) -> jax.Array:
  """Truncation trick towards buffers['w_avg']; psi / layers default to G.truncation_psi / _layers."""
  psi, layers = G._truncation_args(psi, layers)
  return truncate_codes(wp, variables["buffers"]["w_avg"], psi, layers)


def synthesize(G: Generator, variables: dict, wp: jax.Array, noise_rng: Optional[jax.Array] = None) -> jax.Array:
  """W+ codes [N, L, w_dim] -> images [N, res, res, image_channels] (in (-1, 1) with final_tanh).

  The noise comes from G.noise_mode: 'const' uses the stored maps, 'random' draws from `noise_rng`, 'none'
  adds none. Only wp and the weights enter the computation, so jax.grad w.r.t. wp is one backward pass.
  """
  _check_latents(G, wp, (G.num_layers, G.w_dim), "wp")
  return _apply(G, "synthesize", variables, wp, _noise_rngs(G, noise_rng))


def generate(G: Generator, variables: dict, z: jax.Array, psi=None, layers=None,
             noise_rng: Optional[jax.Array] = None) -> jax.Array:
  """z [N, z_dim] -> images: mapping, truncation (defaults from G), synthesis."""
  return synthesize(G, variables, truncate(G, variables, mapping(G, variables, z), psi, layers), noise_rng)


# ----------------------------------------------------------------------------------------------------------
# Batched helpers for the jobs (editing, evaluation, inversion): constant noise, rendering, sampling codes.


def with_const_noise(G: Generator) -> Generator:
  """G with its fixed noise maps: inverting, editing and encoder training render one image per code (the
  official randomize_noise=False); a 'random' generator is switched to 'const', others are returned as they are."""
  return G.clone(noise_mode="const") if G.noise_mode == "random" else G


@functools.partial(jax.jit, static_argnums=0)
def _synthesize_batch(G: Generator, variables: dict, wp: jax.Array) -> jax.Array:
  return synthesize(G, variables, wp)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _map_and_truncate(G: Generator, variables: dict, z: jax.Array, psi, layers) -> jax.Array:
  return truncate(G, variables, mapping(G, variables, z), psi, layers)


def render(G: Generator, variables: dict, codes, batch_size: int = 8) -> np.ndarray:
  """W+ codes [..., L, D] (any leading axes) -> images [..., H, W, C] in [-1, 1] (numpy), `batch_size` at a time.

  Every batch is padded to `batch_size` codes, so one compiled synthesis serves any number of codes; the noise is
  the fixed maps (`with_const_noise`).
  """
  G = with_const_noise(G)
  codes = np.asarray(codes, np.float32)
  shape = codes.shape
  flat = codes.reshape((-1,) + shape[-2:])
  images = []
  for lo in range(0, flat.shape[0], batch_size):
    batch = flat[lo:lo + batch_size]
    real = batch.shape[0]
    if real < batch_size:
      batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - real, axis=0)])
    images.append(np.asarray(_synthesize_batch(G, variables, batch))[:real])
  images = np.concatenate(images, axis=0)
  return images.reshape(shape[:-2] + images.shape[1:])


def sample_codes(G: Generator, variables: dict, num: int, seed: int, truncation_psi: float | None = None,
                 truncation_layers: int | None = None, batch_size: int = 8) -> np.ndarray:
  """`num` W+ codes [num, L, D]: z ~ N(0, I) from numpy's generator seeded with `seed`, mapped and truncated
  (G.truncation_psi / G.truncation_layers unless given; psi 1 or layers 0 leave the codes untruncated)."""
  z = np.random.default_rng(seed).standard_normal((num, G.z_dim)).astype(np.float32)
  codes = []
  for lo in range(0, num, batch_size):
    batch = z[lo:lo + batch_size]
    real = batch.shape[0]
    batch = np.concatenate([batch, np.zeros((batch_size - real, G.z_dim), np.float32)])
    codes.append(np.asarray(_map_and_truncate(G, variables, batch, truncation_psi, truncation_layers))[:real])
  return np.concatenate(codes)
