"""In-domain GAN inversion (paper section 3.2): encoder initialisation + domain-regularised optimisation.

Per image, a W+ code `w` starts at E(x) and Adam minimises

  loss = w_pix * mean(((x - G(w)) * m)^2)                     # pixel term
       + w_feat * mean((F(x * m) - F(G(w) * m))^2)            # perceptual term (VGG16 conv4_3)
       + w_enc * mean((w - E(G(w)))^2)                        # encoder (domain) regulariser

with the mask `m` = 1 unless a per-image mask is given (semantic diffusion). G, E and F are constants; the
gradient flows into `w` through both G(w) and E(G(w)). Defaults follow the official `utils/inverter.py`
(Adam lr 0.01, 100 steps, w_feat 5e-5, w_enc 2.0).

Methods:
  indomain  the paper's method (default).
  encoder   E(x) only, no optimisation.
  optimize  Image2StyleGAN-style: pixel + perceptual terms only (w_enc ignored), from E(x) or from the
            average w tiled over the layers (`init='mean'`); typical settings 1000 steps, lr 0.01
            (`InvertSettings.defaults('optimize')`).

Settings: one frozen `InvertSettings`, resolved once at the edge (`InvertSettings.from_config(config, **flags)`:
the checkpoint's or --config's `config.invert`, then the flags that were given) and validated there.

Engine: an `Inverter` holds the models (as `ModelFns`) and their compiled programs, one `_Engine` per
(`_Program`, devices): one compiled step over a batch of images; every image has its own loss (means over its own
elements) and its own Adam state (vmapped optax), so its code does not depend on which other images share the
batch. Target features F(x * m) are computed once. The learning rate and the loss weights are per-image runtime
inputs (`_Hyper`), so sweeping them (evaluate's lambda_enc ablation) reuses one compiled program of the same
Inverter; only switching a term on or off (a weight of exactly 0: no VGG16 / encoder pass) compiles another. The
optimisation loop runs on device in chunks of `chunk_size` steps (one compiled step dispatched asynchronously: no
host sync inside a chunk; a lax.fori_loop was ~3x slower on XLA:CPU, measured at 64 and 256 px, see
`_Engine.run_chunk`); progress is shown between chunks. The batch axis is sharded over the 'data' axis of a mesh
from `training.mesh`; batches are padded to a multiple of the device count and the padding is dropped from the
results. `lower_step` lowers the same step from shapes alone (no weights, no devices needed: a TPU topology's
devices from `compile_check.topology_devices` will do), for `invert.py --compile_only`.

Snapshots: `snapshots[k] = (step, G(w_step))` where `w_step` is the code after `step` Adam updates, at the
official `--num_results` steps (every `num_iterations // num_results` steps and the last one). The official
loop records G(w) *before* each update, so its "step k" image is our step k-1; the final reconstruction here
is G of the returned code.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from idinvert_jax import losses
from idinvert_jax.training import mesh as mesh_lib

METHODS = ("indomain", "encoder", "optimize")
INITS = ("encoder", "mean")
PRECISIONS = ("float32", "bfloat16")
LOSS_NAMES = ("pix", "feat", "enc", "total")
# Compiled engines one Inverter keeps (evaluate's comparison needs four: encoder, optimize, lambda 0, lambda > 0).
MAX_ENGINES = 4


class InversionError(ValueError):
  """A user-fixable problem with the inputs, models or settings of an inversion."""


# ----------------------------------------------------------------------------------------------------------
# Settings: resolved once, validated once, frozen.

_FIELD_TYPES = {"str": (str, "text"), "int": (int, "whole number"), "float": (float, "number")}


@dataclasses.dataclass(frozen=True)
class InvertSettings:
  """Everything an inversion depends on (the official flag names); the defaults are the official 'indomain' ones.

  Fields:
    method: 'indomain' | 'encoder' | 'optimize'.
    num_iterations: Adam steps per image (100 official; 1000 for 'optimize').
    learning_rate: Adam step size (b1 0.9, b2 0.999, eps 1e-8 as torch.optim.Adam).
    loss_weight_pix / loss_weight_feat / loss_weight_enc: weights of the three terms (1.0, 5e-5, 2.0); 'optimize'
      has no encoder term (loss_weight_enc is always 0 for it).
    init: start point, 'encoder' (E(x)) or 'mean' (average w tiled over the W+ layers).
    batch_size: images optimised together (each with its own Adam state); rounded up to the device count.
    num_results: intermediate snapshots per image, as the official --num_results (0 = none).
    precision: compute dtype of G/E/VGG; codes, losses and the optimiser stay float32.
    chunk_size: optimisation steps per on-device loop between progress updates.

  Values are converted to the field types and checked on construction (InversionError names the bad one).
  """
  method: str = "indomain"
  num_iterations: int = 100
  learning_rate: float = 0.01
  loss_weight_pix: float = 1.0
  loss_weight_feat: float = 5e-5
  loss_weight_enc: float = 2.0
  init: str = "encoder"
  batch_size: int = 8
  num_results: int = 5
  precision: str = "float32"
  chunk_size: int = 10

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value, (kind, what) = getattr(self, field.name), _FIELD_TYPES[field.type]
      try:
        object.__setattr__(self, field.name, kind(value))
      except (TypeError, ValueError):
        raise InversionError(f"invert: {field.name}={value!r} is not a {what}; fix the flag or "
                             f"config.invert.{field.name}.") from None
    if self.method not in METHODS:
      raise InversionError(f"invert: method {self.method!r} is unknown; set --method to one of {METHODS}.")
    if self.init not in INITS:
      raise InversionError(f"invert: init {self.init!r} is unknown; use one of {INITS}.")
    if self.precision not in PRECISIONS:
      raise InversionError(f"invert: precision {self.precision!r} is unknown; use one of {PRECISIONS}.")
    if self.num_iterations < 0:
      raise InversionError(f"invert: num_iterations={self.num_iterations}; use a value >= 0.")
    for name in ("learning_rate", "loss_weight_pix", "loss_weight_feat", "loss_weight_enc"):
      value = getattr(self, name)
      if not math.isfinite(value) or value < 0:
        raise InversionError(f"invert: {name}={value}; use a finite value >= 0 (the official one is "
                             f"{InvertSettings.__dataclass_fields__[name].default}).")
    if self.learning_rate <= 0 and self.optimises:
      raise InversionError(f"invert: learning_rate={self.learning_rate}; use a positive value such as 0.01.")
    for name, least in (("batch_size", 1), ("num_results", 0), ("chunk_size", 1)):
      if getattr(self, name) < least:
        raise InversionError(f"invert: {name}={getattr(self, name)}; use a value >= {least}.")
    if self.method == "optimize":
      object.__setattr__(self, "loss_weight_enc", 0.0)  # Image2StyleGAN has no encoder term.

  @classmethod
  def defaults(cls, method: str = "indomain") -> InvertSettings:
    """The official settings of `method` ('optimize': 1000 steps from the mean code, no encoder term)."""
    if method == "optimize":
      return cls(method=method, num_iterations=1000, loss_weight_enc=0.0, init="mean")
    return cls(method=method)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict | None = None, **overrides: Any) -> InvertSettings:
    """The settings of `config` with the non-None `overrides` (command-line flags) applied.

    Args:
      config: an experiment config (its `.invert` section is used), an invert section itself, or None.
        Fields it lacks take the defaults of its method.
      **overrides: field values; None means "not given". A method given here takes that method's defaults,
        not the values the config stores for another method.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    section = {} if config is None else (config.invert if "invert" in config else config)
    method = given.get("method", section.get("method", "indomain"))
    if method not in METHODS:
      raise InversionError(f"invert: method {method!r} is unknown; set --method to one of {METHODS}.")
    values = dataclasses.asdict(cls.defaults(method))
    if "method" not in given or section.get("method") == method:
      values.update({k: section[k] for k in values if k in section})
    unknown = sorted(set(given) - set(values))
    if unknown:
      raise InversionError(f"invert: unknown setting {unknown[0]!r}; use one of {sorted(values)}.")
    values.update(given)
    return cls(**values)

  def to_config(self) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dataclasses.asdict(self))

  def replace(self, **changes: Any) -> InvertSettings:
    return dataclasses.replace(self, **changes)

  @property
  def optimises(self) -> bool:
    return self.method != "encoder" and self.num_iterations > 0

  @property
  def uses_encoder(self) -> bool:
    """Whether E runs at all: E(x) as the result or the start, or E(G(w)) in the loss."""
    return self.method == "encoder" or self.init == "encoder" or self.loss_weight_enc > 0

  def snapshot_steps(self) -> list[int]:
    """Steps with an intermediate image (none without optimisation)."""
    return snapshot_steps(self.num_iterations, self.num_results) if self.optimises else []


def get_invert_config(method: str = "indomain") -> ml_collections.ConfigDict:
  """Default `config.invert` section for `method` (the fields of `InvertSettings`)."""
  if method not in METHODS:
    raise InversionError(f"get_invert_config: unknown method {method!r}; use one of {METHODS}.")
  return InvertSettings.defaults(method).to_config()


def as_settings(settings: InvertSettings | ml_collections.ConfigDict) -> InvertSettings:
  """`settings` itself, or the InvertSettings of a config / invert section (`InvertSettings.from_config`)."""
  return settings if isinstance(settings, InvertSettings) else InvertSettings.from_config(settings)


def snapshot_steps(num_iterations: int, num_results: int) -> list[int]:
  """Steps with an intermediate image, as the official invert.py (every iters // num_results, and the last)."""
  if num_results <= 0 or num_iterations <= 0:
    return []
  interval = max(1, num_iterations // num_results)
  return [s for s in range(1, num_iterations + 1) if s % interval == 0 or s == num_iterations]


# ----------------------------------------------------------------------------------------------------------
# Model functions: the engine only needs three pure functions of (variables, array).


class ModelFns(NamedTuple):
  """What the engine needs from the models, as pure functions of (variables, inputs).

  synthesize(variables['generator'], wp [N,L,D]) -> images [N,H,W,3] in [-1, 1]
  encode(variables['encoder'], images) -> wp [N,L,D]                   (None: no encoder)
  features(variables['perceptual'], images) -> features [N, ...]       (None: no perceptual term)
  w_avg: [D] average w of the generator (for init='mean'), or None.
  """
  synthesize: Callable[[Any, jax.Array], jax.Array]
  encode: Callable[[Any, jax.Array], jax.Array] | None
  features: Callable[[Any, jax.Array], jax.Array] | None
  variables: dict
  num_layers: int
  w_dim: int
  resolution: int
  w_avg: np.ndarray | None = None


def _find_leaf(tree, name: str):
  """The first leaf whose path ends in `name` (e.g. the generator's 'w_avg' buffer), or None."""
  if tree is None:
    return None
  for path, leaf in traverse_util.flatten_dict(dict(tree)).items():
    if path and path[-1] == name:
      return leaf
  return None


def model_fns(models) -> ModelFns:
  """Builds the engine's functions from an `export.Models` bundle."""
  from idinvert_jax.models import encoder as encoder_lib
  from idinvert_jax.models import generator as generator_lib

  model_cfg = models.config.model
  resolution = int(model_cfg.resolution)
  w_dim = int(model_cfg.generator.w_dim)
  E, F = models.encoder, models.perceptual
  if models.generator is None or models.generator_vars is None:
    raise InversionError("inversion: the checkpoint has no generator; pass a checkpoint written by the "
                         "converter or train.py.")
  G = generator_lib.with_const_noise(models.generator)  # Inversion fits one image, as the official inverter.

  def synthesize(variables, wp):
    return generator_lib.synthesize(G, variables, wp)

  encode = None
  if E is not None and models.encoder_vars is not None:
    def encode(variables, x):
      return encoder_lib.encode(E, variables, x)

  features = None
  if F is not None and models.perceptual_vars is not None:
    from idinvert_jax.models import vgg16 as vgg_lib

    def features(variables, x):
      out = vgg_lib.perceptual_features(F, variables, x)
      if isinstance(out, (tuple, list)):  # Several layers: one flat vector, every feature weighted alike.
        out = jnp.concatenate([o.reshape(o.shape[0], -1) for o in out], axis=1)
      return out

  variables = {"generator": models.generator_vars, "encoder": models.encoder_vars,
               "perceptual": models.perceptual_vars}
  w_avg = _find_leaf(models.generator_vars.get("buffers"), "w_avg")
  if w_avg is not None and not isinstance(w_avg, jax.ShapeDtypeStruct):  # shapes only: see lower_step
    w_avg = np.asarray(w_avg, np.float32)
  return ModelFns(synthesize, encode, features, variables, generator_lib.num_wp_layers(resolution), w_dim,
                  resolution, w_avg)


def check_models(fns: ModelFns, settings: InvertSettings | None = None) -> None:
  """Raises InversionError when G and E do not agree on the W+ shape or the resolution (cheap: shapes only)."""
  wp = jax.ShapeDtypeStruct((1, fns.num_layers, fns.w_dim), jnp.float32)
  try:
    image = jax.eval_shape(fns.synthesize, fns.variables["generator"], wp)
  except Exception as e:  # noqa: BLE001 -- re-raised with the fix named.
    raise InversionError(f"invert: the generator does not accept W+ codes of shape [N, {fns.num_layers}, "
                         f"{fns.w_dim}] ({type(e).__name__}: {str(e).splitlines()[0][:200]}); the "
                         f"checkpoint's config does not match its weights.") from e
  expected = (1, fns.resolution, fns.resolution, 3)
  if tuple(image.shape) != expected:
    raise InversionError(f"invert: the generator makes images of shape {tuple(image.shape)[1:]} but the "
                         f"config says resolution {fns.resolution}; the checkpoint's config does not match.")
  if fns.encode is not None and (settings is None or settings.uses_encoder):
    x = jax.ShapeDtypeStruct(expected, jnp.float32)
    try:
      code = jax.eval_shape(fns.encode, fns.variables["encoder"], x)
    except Exception as e:  # noqa: BLE001
      raise InversionError(f"invert: the encoder does not accept {fns.resolution}px images "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); use an encoder trained "
                           f"for this generator.") from e
    if tuple(code.shape) != (1, fns.num_layers, fns.w_dim):
      raise InversionError(f"invert: the encoder outputs W+ codes of shape {tuple(code.shape)[1:]} but the "
                           f"generator takes ({fns.num_layers}, {fns.w_dim}); use an encoder trained for "
                           f"this generator.")


def _for_models(s: InvertSettings, fns: ModelFns) -> InvertSettings:
  """`s` as these models can run it: no perceptual term without VGG16 weights (the models warned); raises when a
  model the settings need is missing."""
  if fns.features is None and s.loss_weight_feat:
    s = s.replace(loss_weight_feat=0.0)
  if s.uses_encoder and fns.encode is None:
    raise InversionError(f"invert: method {s.method!r} (init {s.init!r}, loss_weight_enc "
                         f"{s.loss_weight_enc}) needs an encoder but the checkpoint has none; use a "
                         f"checkpoint with an encoder or --method optimize with init 'mean'.")
  if s.init == "mean" and fns.w_avg is None and s.method != "encoder":
    raise InversionError("invert: init 'mean' needs the generator's w_avg buffer, which this checkpoint lacks.")
  return s


# ----------------------------------------------------------------------------------------------------------
# The losses and the compiled programs.


class _Program(NamedTuple):
  """What a compiled engine depends on: the method, the start, the precision and which terms exist.

  The step count, the learning rate and the loss weights are runtime inputs (`_Hyper`), so a sweep over them
  reuses one compilation; a weight of exactly 0 switches its term off at compile time (no VGG16 or encoder pass).
  """
  method: str
  init: str
  precision: str
  perceptual_term: bool
  encoder_term: bool

  @classmethod
  def of(cls, s: InvertSettings) -> _Program:
    return cls(s.method, s.init, s.precision, bool(s.loss_weight_feat), bool(s.loss_weight_enc))

  @property
  def runs_encoder(self) -> bool:
    return self.method == "encoder" or self.init == "encoder" or self.encoder_term

  @property
  def starts_at_mean(self) -> bool:
    return self.init == "mean" and self.method != "encoder"


class _Hyper(NamedTuple):
  """Per-image runtime inputs of the compiled step, [N] float32 each."""
  learning_rate: Any
  loss_weight_pix: Any
  loss_weight_feat: Any
  loss_weight_enc: Any

  @classmethod
  def of(cls, s: InvertSettings, n: int) -> _Hyper:
    return cls(*(np.full((n,), value, np.float32) for value in (s.learning_rate, s.loss_weight_pix,
                                                                 s.loss_weight_feat, s.loss_weight_enc)))


def _cast_floating(tree, dtype):
  return jax.tree_util.tree_map(
      lambda a: a.astype(dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, tree)


class _Losses(NamedTuple):
  pix: jax.Array
  feat: jax.Array
  enc: jax.Array
  total: jax.Array


def _batch_losses(fns: ModelFns, p: _Program, variables, w, targets, target_feats, masks, hyper: _Hyper):
  """Per-image losses of a batch (w [N,L,D], targets [N,H,W,3], masks [N,H,W,1], hyper of [N] weights).

  `p` says which terms exist (compile time); their weights are hyper's (runtime, per image).

  Returns (sum of the per-image totals, (_Losses of [N] arrays, reconstructions)). Every term is a mean over
  one image's own elements and the models have no cross-image operation at inference (BatchNorm uses running
  statistics), so the gradient of the sum w.r.t. w[i] is exactly the gradient of image i's loss: the models
  run natively batched instead of vmapped per image (measured faster on CPU), with identical results.
  """
  dtype = jnp.dtype(p.precision)
  rec = fns.synthesize(variables["generator"], w.astype(dtype)).astype(jnp.float32)
  rec_feat = code = None
  if p.perceptual_term:
    rec_feat = fns.features(variables["perceptual"], (rec * masks).astype(dtype)).astype(jnp.float32)
  if p.encoder_term:
    code = fns.encode(variables["encoder"], rec.astype(dtype)).astype(jnp.float32)
  total, terms = losses.in_domain_inversion_loss(
      targets, rec, w, code, target_features=target_feats if p.perceptual_term else None,
      recon_features=rec_feat, masks=masks, loss_weight_pix=hyper.loss_weight_pix,
      loss_weight_feat=hyper.loss_weight_feat, loss_weight_enc=hyper.loss_weight_enc)
  return jnp.sum(total), (_Losses(terms["pixel"], terms["feat"], terms["enc"], total), rec)


class _Engine:
  """Compiled programs for one (models, program, devices); reused across batches and calls of its Inverter."""

  def __init__(self, fns: ModelFns, program: _Program, devices: Sequence[jax.Device]):
    self.fns, self.program, self.devices = fns, program, list(devices)
    self.mesh = mesh_lib.make_mesh(None, self.devices)
    batch = self.batch_sharding = mesh_lib.batch_sharding(self.mesh)
    self.replicated = mesh_lib.replicated(self.mesh)
    # Adam without its learning rate (torch.optim.Adam's defaults); the per-image rate is applied in _step,
    # which is exactly optax.adam(lr) = chain(scale_by_adam, scale(-lr)).
    self.optimizer = optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)
    # The weights (and w_avg) are compile-time constants: XLA then folds the weight-only work (equalised-LR
    # scales, kernel flips and layouts for the backward convolutions) once instead of every step; measured 2.7x
    # faster per step at 256 px on CPU than passing them as arguments. An engine therefore serves one set of
    # weights, and its Inverter keeps it. Models given as shapes only (export.abstract_models) have nothing to
    # place: such an engine can only `lower_step` (also for a TPU topology's devices, which hold no arrays).
    shapes_only = any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(fns.variables))
    self.variables = None if shapes_only else self._device_variables()

    def baked(fn, in_shardings):
      return jax.jit(lambda *args: fn(self.variables, *args), in_shardings=in_shardings, out_shardings=batch)

    self.prepare = baked(self._prepare, (batch, batch))
    self.step = baked(self._state_step, (batch, batch))
    self.evaluate = baked(self._evaluate, (batch, batch))
    self.render = baked(self._render, (batch,))
    self.loss_and_grad = baked(self._loss_and_grad, (batch, batch))

  def _device_variables(self):
    """The models' variables in the compute dtype plus w_avg, replicated over the mesh."""
    w_avg = self.fns.w_avg if self.fns.w_avg is not None else np.zeros((self.fns.w_dim,), np.float32)
    return jax.device_put(self._for_compute(self.fns.variables, np.asarray(w_avg, np.float32)), self.replicated)

  def _for_compute(self, variables, w_avg):
    """The variables the programs use: the models' in the compute dtype, plus w_avg (float32)."""
    if self.program.precision != "float32":
      variables = _cast_floating(variables, jnp.dtype(self.program.precision))
    return {**variables, "w_avg": w_avg}

  def lower_step(self, batch_size: int) -> jax.stages.Lowered:
    """The optimisation step for `batch_size` images sharded over the mesh, lowered from shapes alone.

    The very function `step` runs (G, E, VGG16 and the per-image Adam update of the codes), with the same batch
    sharding; the models' variables are replicated arguments here instead of the constants `step` bakes in
    (their shapes are all a compile check has). `.compile()` gives the program's memory and FLOPs per device.
    """
    fns, n = self.fns, int(batch_size)
    variables = jax.eval_shape(self._for_compute, fns.variables, jax.ShapeDtypeStruct((fns.w_dim,), jnp.float32))
    images = jax.ShapeDtypeStruct((n, fns.resolution, fns.resolution, 3), jnp.float32)
    masks = jax.ShapeDtypeStruct(images.shape[:3] + (1,), jnp.float32)
    prepared = jax.eval_shape(self._prepare, variables, images, masks)
    hyper = _Hyper(*[jax.ShapeDtypeStruct((n,), jnp.float32)] * len(_Hyper._fields))
    batch = dict(targets=images, feats=prepared["feats"], masks=masks, hyper=hyper)
    state = dict(w=prepared["w"], opt_state=prepared["opt_state"])

    def placed(tree, sharding):
      return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)

    step = jax.jit(self._state_step, in_shardings=(self.replicated, self.batch_sharding, self.batch_sharding),
                   out_shardings=self.batch_sharding)
    return step.lower(placed(variables, self.replicated), placed(state, self.batch_sharding),
                      placed(batch, self.batch_sharding))

  def batch(self, s: InvertSettings, targets, feats, masks) -> dict:
    """The step's per-image inputs: device targets, target features and masks, plus s's runtime weights."""
    hyper = jax.device_put(_Hyper.of(s, targets.shape[0]), self.batch_sharding)
    return dict(targets=targets, feats=feats, masks=masks, hyper=hyper)

  def run_chunk(self, state, batch, num_steps):
    """`num_steps` Adam steps, dispatched asynchronously (no host sync inside a chunk); losses of the last.

    A Python loop of one compiled step rather than lax.fori_loop: XLA:CPU runs the same step ~3.3x slower inside
    a while loop (64 px official widths, batch 4: 1.34 vs 4.5 s/step; 256 px: 2.9x). Profiled cause: in the loop
    body four of the generator's backward 3x3 convolutions (256-512 channels, kernels in the transposed "01oi"
    layout) leave YNNPACK for XLA's generic convolution and take 3.4 of the 4.5 s. Dispatch overhead is
    negligible next to a step, and no host sync happens inside a chunk.
    """
    losses = None
    for _ in range(int(num_steps)):
      state, losses = self.step(state, batch)
    return state, losses

  # Everything below is traced under jit.

  def _render(self, variables, w):
    dtype = jnp.dtype(self.program.precision)
    return self.fns.synthesize(variables["generator"], w.astype(dtype)).astype(jnp.float32)

  def _prepare(self, variables, images, masks):
    """Initial codes, encoder codes/reconstructions, target features and per-image Adam states."""
    fns, p = self.fns, self.program
    dtype = jnp.dtype(p.precision)
    n = images.shape[0]
    if fns.encode is not None and p.runs_encoder:
      enc_codes = fns.encode(variables["encoder"], images.astype(dtype)).astype(jnp.float32)
      enc_recs = self._render(variables, enc_codes)
    else:
      enc_codes = jnp.full((n, fns.num_layers, fns.w_dim), jnp.nan, jnp.float32)
      enc_recs = jnp.full(images.shape, jnp.nan, jnp.float32)
    if p.starts_at_mean:
      init = jnp.broadcast_to(variables["w_avg"], (n, fns.num_layers, fns.w_dim))
    else:
      init = enc_codes
    if p.perceptual_term:
      feats = fns.features(variables["perceptual"], (images * masks).astype(dtype)).astype(jnp.float32)
    else:
      feats = jnp.zeros((n, 1), jnp.float32)
    opt_state = jax.vmap(self.optimizer.init)(init)
    return dict(w=init, opt_state=opt_state, enc_codes=enc_codes, enc_recs=enc_recs, feats=feats)

  def _loss_and_grad(self, variables, w, batch):
    grad_fn = jax.value_and_grad(lambda w: _batch_losses(self.fns, self.program, variables, w, batch["targets"],
                                                         batch["feats"], batch["masks"], batch["hyper"]),
                                 has_aux=True)
    (_, (losses, _)), grads = grad_fn(w)
    return losses, grads

  def _step(self, variables, w, opt_state, batch):
    losses, grads = self._loss_and_grad(variables, w, batch)
    # One Adam state per image (vmapped optax): an image's update never sees another image's moments.
    directions, opt_state = jax.vmap(self.optimizer.update)(grads, opt_state, w)
    learning_rate = batch["hyper"].learning_rate[:, None, None]
    return w - learning_rate * directions, opt_state, losses

  def _state_step(self, variables, state, batch):
    w, opt_state, losses = self._step(variables, state["w"], state["opt_state"], batch)
    return dict(w=w, opt_state=opt_state), losses

  def _evaluate(self, variables, w, batch):
    """Losses and reconstruction at the given codes (no update)."""
    return _batch_losses(self.fns, self.program, variables, w, batch["targets"], batch["feats"], batch["masks"],
                         batch["hyper"])[1]


# ----------------------------------------------------------------------------------------------------------
# Public API.


@dataclasses.dataclass
class InversionResult:
  """Results for N images (numpy, float32, input order).

  codes: [N, L, D] inverted W+ codes.            reconstructions: [N, H, W, 3] G(codes) in [-1, 1].
  encoder_codes: [N, L, D] E(x) (None without an encoder).  encoder_reconstructions: G(E(x)) or None.
  snapshots: [(step, images [N, H, W, 3])] after `step` Adam updates (official --num_results steps).
  losses: {'pix'|'feat'|'enc'|'total': [N]} at the final codes (unweighted terms; 'total' weighted).
  loss_history: [(step, {name: [N]})] per chunk: the losses of the chunk's last step (before its update).
  seconds_per_image: wall time of the whole call (compilation included) / N.
  """
  codes: np.ndarray
  encoder_codes: np.ndarray | None
  reconstructions: np.ndarray
  encoder_reconstructions: np.ndarray | None
  snapshots: list
  losses: dict
  loss_history: list
  seconds_per_image: float


def _pad_rows(array: np.ndarray, size: int) -> np.ndarray:
  """Pads the leading axis to `size` by repeating the last row (real data: no NaNs in padded rows)."""
  if array.shape[0] == size:
    return array
  return np.concatenate([array, np.repeat(array[-1:], size - array.shape[0], axis=0)], axis=0)


def _check_images(images: np.ndarray, mask: np.ndarray | None, resolution: int):
  if images.ndim != 4 or images.shape[1:] != (resolution, resolution, 3):
    raise InversionError(f"invert: images have shape {images.shape}; expected [N, {resolution}, {resolution}, 3] "
                         f"in [-1, 1] (load them with idinvert_jax.data.load_image).")
  if images.shape[0] == 0:
    raise InversionError("invert: no images given.")
  if mask is not None and mask.shape != images.shape[:3] + (1,):
    raise InversionError(f"invert: mask has shape {mask.shape}; expected {images.shape[:3] + (1,)}.")


class Inverter:
  """The models prepared for inversion, with the compiled programs made for them (reuse it across calls).

  Args:
    models: an `export.Models` bundle (generator; encoder and VGG16 when the settings use them) or a `ModelFns`
      (custom models).

  Every call with settings that differ only in step count, learning rate or loss weights reuses one compiled
  program (per device set); the Inverter keeps the last MAX_ENGINES programs.
  """

  def __init__(self, models):
    self.fns = models if isinstance(models, ModelFns) else model_fns(models)
    self.engines: dict[tuple, _Engine] = {}

  def engine(self, settings: InvertSettings, devices: Sequence[jax.Device]) -> _Engine:
    """The compiled programs for `settings` (as these models run them) on `devices`."""
    key = (_Program.of(_for_models(settings, self.fns)), tuple(d.id for d in devices))
    if key not in self.engines:
      if len(self.engines) >= MAX_ENGINES:
        self.engines.pop(next(iter(self.engines)))
      self.engines[key] = _Engine(self.fns, key[0], devices)
    return self.engines[key]

  def validate(self, settings: InvertSettings | ml_collections.ConfigDict) -> None:
    """Checks models and settings before any work: raises InversionError naming the problem and the fix."""
    s = _for_models(as_settings(settings), self.fns)
    check_models(self.fns, s)

  def invert(self, images, settings: InvertSettings | ml_collections.ConfigDict, mask=None, progress: bool = True,
             devices: Sequence[jax.Device] | None = None) -> InversionResult:
    """See the module function `invert`."""
    s = _for_models(as_settings(settings), self.fns)
    devices = list(devices) if devices is not None else jax.devices()
    images = np.asarray(images, np.float32)
    mask = None if mask is None else np.asarray(mask, np.float32)
    _check_images(images, mask, self.fns.resolution)
    engine = self.engine(s, devices)

    n = images.shape[0]
    ndev = len(devices)
    batch_size = min(max(1, s.batch_size), n)  # One batch shape for the whole call: one compilation.
    batch_size = -(-batch_size // ndev) * ndev  # Round up to a multiple of the device count.
    steps = s.snapshot_steps()
    start = time.perf_counter()
    parts = []
    bar = None
    if progress and s.optimises:
      from tqdm.auto import tqdm
      bar = tqdm(total=-(-n // batch_size) * s.num_iterations, desc=f"invert ({s.method})", leave=False)
    try:
      for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        padded = -(-(hi - lo) // ndev) * ndev
        x = _pad_rows(images[lo:hi], padded)
        m = np.ones(x.shape[:3] + (1,), np.float32) if mask is None else _pad_rows(mask[lo:hi], padded)
        parts.append(_invert_batch(engine, s, x, m, steps, bar, hi - lo))
    finally:
      if bar is not None:
        bar.close()
    seconds = (time.perf_counter() - start) / n

    def cat(key):
      return np.concatenate([p[key] for p in parts], axis=0)

    snapshots = [(step, np.concatenate([p["snapshots"][i][1] for p in parts], axis=0))
                 for i, step in enumerate(steps)]
    history = []
    for i, (step, _) in enumerate(parts[0]["history"]):
      history.append((step, {k: np.concatenate([p["history"][i][1][k] for p in parts]) for k in LOSS_NAMES}))
    has_encoder = self.fns.encode is not None and not np.isnan(parts[0]["enc_codes"]).all()
    return InversionResult(
        codes=cat("codes"), reconstructions=cat("recs"),
        encoder_codes=cat("enc_codes") if has_encoder else None,
        encoder_reconstructions=cat("enc_recs") if has_encoder else None,
        snapshots=snapshots, losses={k: np.concatenate([p["losses"][k] for p in parts]) for k in LOSS_NAMES},
        loss_history=history, seconds_per_image=seconds)

  def loss_and_grad(self, codes, images, settings: InvertSettings | ml_collections.ConfigDict, mask=None,
                    devices: Sequence[jax.Device] | None = None) -> tuple[dict, np.ndarray]:
    """See the module function `loss_and_grad`."""
    s = _for_models(as_settings(settings), self.fns)
    devices = list(devices) if devices is not None else jax.devices()[:1]
    images = np.asarray(images, np.float32)
    _check_images(images, None if mask is None else np.asarray(mask), self.fns.resolution)
    engine = self.engine(s, devices)
    n = images.shape[0]
    padded = -(-n // len(devices)) * len(devices)
    x = _pad_rows(images, padded)
    m = np.ones(x.shape[:3] + (1,), np.float32) if mask is None else _pad_rows(np.asarray(mask, np.float32), padded)
    x_dev = jax.device_put(x, engine.batch_sharding)
    m_dev = jax.device_put(m, engine.batch_sharding)
    feats = engine.prepare(x_dev, m_dev)["feats"]
    w = jax.device_put(_pad_rows(np.asarray(codes, np.float32), padded), engine.batch_sharding)
    losses, grads = engine.loss_and_grad(w, engine.batch(s, x_dev, feats, m_dev))
    return {k: np.asarray(v)[:n] for k, v in losses._asdict().items()}, np.asarray(grads)[:n]


def as_inverter(models) -> Inverter:
  """`models` itself when it is an Inverter, else a new Inverter of the bundle / ModelFns."""
  return models if isinstance(models, Inverter) else Inverter(models)


def invert(images, models, settings: InvertSettings | ml_collections.ConfigDict, mask=None, progress: bool = True,
           devices: Sequence[jax.Device] | None = None) -> InversionResult:
  """Inverts `images` [N,H,W,3] in [-1,1].

  Args:
    images: float array [N, H, W, 3], H = W = the generator's resolution.
    models: an `Inverter` (reuses its compiled programs: pass one when calling repeatedly), an
      `idinvert_jax.export.Models` bundle or a `ModelFns` (custom models).
    settings: `InvertSettings`, or a config / invert section (resolved with `InvertSettings.from_config`).
    mask: optional [N, H, W, 1] per-image mask for the pixel and perceptual terms (semantic diffusion).
    progress: show a tqdm bar over the optimisation steps.
    devices: devices of the 'data' mesh (default: all of jax.devices()).

  Returns:
    InversionResult (numpy arrays, input order).
  """
  return as_inverter(models).invert(images, settings, mask=mask, progress=progress, devices=devices)


def lower_step(models, settings: InvertSettings | ml_collections.ConfigDict, devices: Sequence[jax.Device],
               batch_size: int) -> jax.stages.Lowered:
  """The engine's optimisation step for `batch_size` images sharded over `devices`, lowered (nothing runs).

  `models` as for `invert`; its variables may be shapes only (`export.abstract_models`), and `devices` those of a
  TPU topology (`compile_check.topology_devices`). `batch_size` must be a multiple of len(devices).
  """
  devices = list(devices)
  if batch_size <= 0 or batch_size % len(devices):
    raise InversionError(f"invert: batch size {batch_size} does not split over {len(devices)} devices; use a "
                         f"multiple of {len(devices)}.")
  inverter = as_inverter(models)
  s = _for_models(as_settings(settings), inverter.fns)
  check_models(inverter.fns, s)
  return inverter.engine(s, devices).lower_step(batch_size)


def loss_and_grad(codes, images, models, settings: InvertSettings | ml_collections.ConfigDict, mask=None,
                  devices=None) -> tuple[dict, np.ndarray]:
  """The engine's per-image losses {name: [N]} and their gradient d total / d codes [N,L,D] at `codes`.

  Uses exactly the compiled step's loss (same precision, weights, target features); for checks and notebooks.
  `models` as for `invert`; devices default to one.
  """
  return as_inverter(models).loss_and_grad(codes, images, settings, mask=mask, devices=devices)


def validate(models, settings: InvertSettings | ml_collections.ConfigDict) -> None:
  """Checks models and settings before any work: raises InversionError naming the problem and the fix."""
  as_inverter(models).validate(settings)


def _invert_batch(engine: _Engine, s: InvertSettings, x: np.ndarray, m: np.ndarray, snap_steps: list[int], bar,
                  real: int) -> dict:
  """Runs one padded batch; returns numpy results with the padding removed."""
  x_dev = jax.device_put(x, engine.batch_sharding)
  m_dev = jax.device_put(m, engine.batch_sharding)
  prep = engine.prepare(x_dev, m_dev)
  state = dict(w=prep["w"], opt_state=prep["opt_state"])
  batch = engine.batch(s, x_dev, prep["feats"], m_dev)
  snapshots, history = [], []
  if s.optimises:
    # Chunk boundaries: every `chunk_size` steps, plus the snapshot steps, so snapshots fall between chunks.
    chunk = max(1, s.chunk_size)
    bounds = sorted(set(range(chunk, s.num_iterations, chunk)) | set(snap_steps) | {s.num_iterations})
    done = 0
    for bound in bounds:
      state, losses = engine.run_chunk(state, batch, bound - done)
      losses = {k: np.asarray(v)[:real] for k, v in losses._asdict().items()}
      history.append((bound, losses))
      if bound in snap_steps:
        snapshots.append((bound, np.asarray(engine.render(state["w"]))[:real]))
      if bar is not None:
        bar.update(bound - done)
        bar.set_postfix({k: f"{float(np.mean(v)):.4g}" for k, v in losses.items()})
      done = bound
  losses, recs = engine.evaluate(state["w"], batch)
  return dict(
      codes=np.asarray(state["w"])[:real], recs=np.asarray(recs)[:real],
      enc_codes=np.asarray(prep["enc_codes"])[:real], enc_recs=np.asarray(prep["enc_recs"])[:real],
      losses={k: np.asarray(v)[:real] for k, v in losses._asdict().items()},
      snapshots=snapshots, history=history)
