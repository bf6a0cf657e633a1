"""Stage 2: the domain-guided encoder (paper Sec. 3.1; official training/loss_encoder.py + training_loop_encoder.py).

The generator is frozen (EMA weights from stage 1 or a converted checkpoint); the encoder E learns
  E: mean((G(E(x)) - x)^2) + lambda_vgg * mean((F(G(E(x))) - F(x))^2) + lambda_adv * mean(softplus(-D(G(E(x)))))
against a discriminator D (initialised from stage 1's D) trained with
  D: mean(softplus(D(G(E(x))))) + mean(softplus(-D(x))) + gamma/2 * R1(x),
on real images only. As in the official loop, E is updated first and D then sees the updated encoder's output.
Adam(0.9, 0.99) for both with lr 1e-4 decayed x0.8 every quarter of training.

BatchNorm statistics are those of the GLOBAL batch: the encoder's training forward pass runs under shard_map over
the `data` mesh axis with BN's axis_name set to it, so means/variances are pmean-ed across devices (and hosts),
exactly what one device would compute on the whole batch. Everything else is plain jit + NamedSharding.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util
from jax.sharding import PartitionSpec as P

from idinvert_jax import export
from idinvert_jax import losses
from idinvert_jax import precision
from idinvert_jax.models import generator as generator_lib
from idinvert_jax.training import loop
from idinvert_jax.training import mesh as mesh_lib


LR_SCHEDULES = ("staircase", "constant", "cosine")


def learning_rate_schedule(tcfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """The encoder stage's learning rate per step (config.train.lr_schedule).

  staircase  lr * decay_rate ** floor(step / (num_steps * decay_every_fraction)) (official).
  constant   lr.
  cosine     linear warm-up from 0 over warmup_steps, then cosine decay to 0 at num_steps.
  `warmup_steps` > 0 puts the same linear warm-up in front of the staircase and constant schedules too.
  """
  kind = str(tcfg.get("lr_schedule", "staircase"))
  warmup = int(tcfg.get("warmup_steps", 0))
  lr = float(tcfg.learning_rate)
  if kind not in LR_SCHEDULES:
    raise ValueError(f"config.train.lr_schedule={kind!r} is unknown; use one of {LR_SCHEDULES}")
  if not 0 <= warmup < max(num_steps, 1):
    raise ValueError(f"config.train.warmup_steps={warmup} must be in [0, num_steps={num_steps})")
  if kind == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=warmup, decay_steps=max(num_steps, 1),
                                              end_value=0.0)
  if kind == "constant":
    main = optax.constant_schedule(lr)
  else:
    every = max(1, int(round(num_steps * tcfg.lr_decay_every_fraction)))
    main = optax.exponential_decay(lr, transition_steps=every, decay_rate=tcfg.lr_decay_rate, staircase=True)
  if not warmup:
    return main
  # The staircase keeps counting from step 0, so its decays fall where they would without the warm-up.
  return lambda step: jnp.minimum(1.0, (step + 1) / warmup) * main(step)


def make_optimizer(tcfg: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  return optax.adam(learning_rate_schedule(tcfg, num_steps), b1=tcfg.adam_b1, b2=tcfg.adam_b2, eps=tcfg.adam_eps)


def discriminator_features(discriminator, variables, images: jax.Array) -> list[jax.Array]:
  """The outputs of D's down blocks (resolution/2 .. 4 px), each unit-normalised over channels per pixel.

  A learned perceptual space that needs no downloaded weights: the stage-1 discriminator was trained on the
  same images, and its block features respond to the structures it uses to tell real from fake. The per-pixel
  channel normalisation (as LPIPS does for VGG features) makes every block count alike whatever its scale.
  """
  from idinvert_jax.models.discriminator import DownBlock  # pylint: disable=import-outside-toplevel
  _, state = discriminator.apply(variables, images, capture_intermediates=lambda m, _: isinstance(m, DownBlock),
                                 mutable=["intermediates"])
  blocks = state["intermediates"]
  features = []
  for name in sorted(blocks, key=lambda n: -int(n.split("x")[0])):  # '64x64' first: fine to coarse
    x = blocks[name]["__call__"][0]
    features.append(x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + 1e-8))
  return features


def feature_distance(real: list[jax.Array], recon: list[jax.Array]) -> jax.Array:
  """Mean over blocks of the mean squared difference of unit-normalised features (0 for identical images)."""
  return sum(jnp.mean(jnp.square(a - b)) for a, b in zip(real, recon)) / len(real)


def resolve_generator_source(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The checkpoint the frozen generator comes from: config.train.generator_checkpoint, else WORKDIR's export."""
  path = config.train.get("generator_checkpoint", "") or ""
  if path:
    return path
  if os.path.isdir(os.path.join(workdir, "export")):
    return workdir
  raise FileNotFoundError(f"no generator for encoder training: {workdir}/export does not exist; train stage 1 "
                          "in this workdir first (--stage gan) or pass --config.train.generator_checkpoint=DIR")


def trained_variables(encoder_vars: dict, train_bn_scale: bool) -> dict:
  """What the encoder's optimiser updates: its params, or with train_bn_scale {'params', 'bn_scale'} where
  bn_scale holds every BatchNorm scale (gamma), which the model keeps next to the running statistics in
  `batch_stats` (models/encoder.py). Without it the tree is the params alone, the state layout of runs
  checkpointed before the option existed."""
  if not train_bn_scale:
    return encoder_vars["params"]
  flat = traverse_util.flatten_dict(dict(encoder_vars.get("batch_stats", {})), sep="/")
  return {"params": encoder_vars["params"], "bn_scale": {k: v for k, v in flat.items() if k.endswith("/scale")}}


def split_trained(trained: dict, train_bn_scale: bool) -> tuple[dict, dict | None]:
  """(params, bn scales or None) of a `trained_variables` tree."""
  return (trained["params"], trained["bn_scale"]) if train_bn_scale else (trained, None)


def with_bn_scales(batch_stats: dict, scales: dict | None) -> dict:
  """batch_stats with the trained BatchNorm scales written in (unchanged for None)."""
  if scales is None:
    return batch_stats
  flat = traverse_util.flatten_dict(dict(batch_stats), sep="/")
  flat.update(scales)
  return traverse_util.unflatten_dict(flat, sep="/")


class EncoderHealth:
  """Reads the logged encoder losses and says, once per episode, when training goes wrong.

  - The adversarial term dominates: lambda_adv * e_adv is over `adv_share_limit` of the weighted loss at
    `patience` log points in a row (without a perceptual term the reconstruction then stops improving and
    codes drift out of the generator's domain; the official repository's "adversarial loss dominates" reports).
  - The reconstruction stalls: the pixel loss (mean of the last `smooth` logged values, to see past batch noise)
    has not improved by 1 % over the last `stall_fraction` of the run.
  Warnings re-arm once the condition clears. Called by the loop with every logged metrics record.
  """

  def __init__(self, num_steps: int, adv_share_limit: float = 0.5, stall_fraction: float = 0.2,
               patience: int = 3, smooth: int = 5):
    self.adv_share_limit = float(adv_share_limit)
    self.stall_steps = max(1, int(round(stall_fraction * num_steps))) if stall_fraction > 0 else 0
    self.patience = patience
    self.smooth = smooth
    self._adv_run = 0
    self._adv_warned = False
    self._pixels: list[float] = []
    self._best = (float("inf"), 0)  # (smoothed pixel loss, step)
    self._stall_warned = False

  def __call__(self, step: int, metrics: dict) -> list[str]:
    warnings = []
    share, adv, pixel = metrics.get("e_adv_share"), metrics.get("e_adv"), metrics.get("e_pixel")
    if share is not None and self.adv_share_limit > 0:
      self._adv_run = self._adv_run + 1 if share > self.adv_share_limit else 0
      if self._adv_run >= self.patience and not self._adv_warned:
        self._adv_warned = True
        warnings.append(f"encoder training, step {step}: the adversarial term is {share:.0%} of the loss "
                        f"(e_adv {adv:.3g}, e_pixel {pixel:.3g}) for {self._adv_run} log points; reconstructions "
                        "stop improving when it dominates: lower config.train.lambda_adv (the study in "
                        "bench/results/encoder_study.md) or add a perceptual term (lambda_vgg / lambda_dfeat)")
      elif self._adv_run == 0:
        self._adv_warned = False
    if pixel is not None and self.stall_steps:
      self._pixels = (self._pixels + [float(pixel)])[-self.smooth:]
      smoothed = sum(self._pixels) / len(self._pixels)
      if smoothed < self._best[0] * 0.99:
        self._best = (smoothed, step)
        self._stall_warned = False
      elif step - self._best[1] >= self.stall_steps and not self._stall_warned:
        self._stall_warned = True
        warnings.append(f"encoder training, step {step}: the pixel loss has not improved for "
                        f"{step - self._best[1]} steps (best {self._best[0]:.4g} at step {self._best[1]}, now "
                        f"{smoothed:.4g}); a higher learning rate, a longer warm-up or a smaller lambda_adv may "
                        "help, or training has converged for this encoder size")
    return warnings


class EncoderTrainer(loop.StateShapesMixin):
  """Builds the modules, the frozen inputs, the initial state and the sharded train step of stage 2."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *,
               generator_vars: Any, discriminator_vars: Any | None = None, perceptual: tuple | None = None,
               generator_origin: dict | None = None):
    self.config = config
    # Where the frozen generator came from (export/training.json): recorded with the encoder in each export so a
    # later GAN export can tell that the encoder it keeps was trained on an older generator.
    self.generator_origin = generator_origin
    self.tcfg = config.train
    self.mesh = mesh
    self.num_steps = int(self.tcfg.num_steps)
    # The official encoder training synthesises with the fixed noise maps (randomize_noise=False).
    self.generator = generator_lib.with_const_noise(export.build_module("generator", config.model))
    self.discriminator = export.build_module("discriminator", config.model)
    self.encoder = export.build_module("encoder", config.model)
    # The same encoder with BN averaged over the data axis, for the training forward pass under shard_map.
    self.synced_encoder = self.encoder.clone(bn_axis_name=mesh_lib.DATA_AXIS)
    self.perceptual_module, perceptual_vars = perceptual if perceptual is not None else (None, None)
    self.lambda_vgg = float(self.tcfg.lambda_vgg) if self.perceptual_module is not None else 0.0
    if self.perceptual_module is None and float(self.tcfg.lambda_vgg) > 0:
      logging.warning("encoder training without VGG16 weights: lambda_vgg=%g is replaced by 0 (pixel + adversarial "
                      "loss only); set config.model.perceptual.weights to enable it", float(self.tcfg.lambda_vgg))
    self._initial_discriminator_vars = discriminator_vars
    self.lambda_dfeat = float(self.tcfg.get("lambda_dfeat", 0.0))
    if self.lambda_dfeat > 0 and discriminator_vars is None:
      raise ValueError("config.train.lambda_dfeat > 0 measures reconstructions in the stage-1 discriminator's "
                       "feature space, but the generator checkpoint has no discriminator; train stage 1 in this "
                       "workdir (it exports D) or set --config.train.lambda_dfeat=0")
    # Not in the paper: the in-domain regulariser ||w - E(G(w))||^2 assumes E inverts G on its own samples, which
    # training on real photos alone leaves loose (std of E(G(w)) 1.5-5x that of w, bench/encoder_code_scale.py).
    # lambda_code > 0 adds mean((E(G(w)) - w)^2) over code_batch_size codes sampled from G per step (0 = the
    # real batch's size); G runs forward only, so the term costs one extra encoder pass and a G forward.
    self.lambda_code = float(self.tcfg.get("lambda_code", 0.0))
    self.code_batch_size = int(self.tcfg.get("code_batch_size", 0))
    if self.lambda_code < 0 or self.code_batch_size < 0:
      raise ValueError(f"config.train.lambda_code={self.lambda_code} and code_batch_size={self.code_batch_size} "
                       "must be >= 0 (lambda_code 0 turns the code term off; code_batch_size 0 = the batch size)")
    if self.lambda_code > 0 and self.code_batch_size % mesh.shape[mesh_lib.DATA_AXIS]:
      raise ValueError(f"config.train.code_batch_size={self.code_batch_size} must be a multiple of the "
                       f"{mesh.shape[mesh_lib.DATA_AXIS]} devices on the data axis (or 0 = the batch size)")
    # The official TF encoder trains every BatchNorm's gamma (sync_batch_norm, scale=True); the PyTorch port,
    # inference only, marks it frozen. Without it the last BN forces each W+ entry to unit variance over the
    # batch, while the generator's w has a spread of about 0.55 (measured on the demo and CelebA generators).
    self.train_bn_scale = bool(self.tcfg.get("train_bn_scale", False))
    self.e_tx = make_optimizer(self.tcfg, self.num_steps)
    # Compute dtype of E, G, D and VGG16 inside the step; parameters, BN statistics and Adam state stay float32.
    self.dtype = precision.compute_dtype(self.tcfg.get("precision", "float32"), "config.train.encoder.precision")
    self.d_tx = make_optimizer(self.tcfg, self.num_steps)
    replicate = mesh_lib.replicated(mesh)
    # Frozen inputs travel as jit arguments (not constants baked into the program). They are put on the mesh at
    # first use: a compile check for devices this host does not have passes only their shapes (ShapeDtypeStructs).
    frozen = {"generator": generator_vars, "perceptual": perceptual_vars}
    if self.lambda_dfeat > 0:
      # A frozen copy of stage 1's D: a fixed feature space, unlike the D trained alongside (adversary).
      frozen["feature_discriminator"] = {"params": discriminator_vars["params"]}
    self._frozen_host = frozen
    self._frozen = None
    rules = tuple(self.config.mesh.get("param_rules", ())) if "mesh" in self.config else ()
    self._state_shapes = jax.eval_shape(self._init_state_unsharded)
    self.state_shardings = mesh_lib.param_shardings(self._state_shapes, mesh, rules)
    self.frozen_shardings = jax.tree.map(lambda _: replicate, self._frozen_host)
    self.images_sharding = mesh_lib.batch_sharding(mesh)
    self.train_step = jax.jit(self._train_step, in_shardings=(self.state_shardings, self.frozen_shardings,
                                                              self.images_sharding),
                              out_shardings=(self.state_shardings, replicate), donate_argnums=(0,))
    self._compiled = None
    self._jitted_init = None
    self._abstract_state = None
    self._reconstruct = jax.jit(self._reconstruct_fn)

  # ----- state -----
  def _init_state_unsharded(self) -> dict[str, Any]:
    rng = jax.random.PRNGKey(int(self.tcfg.seed))
    e_rng, d_rng, base_rng = jax.random.split(rng, 3)
    encoder_vars = export.init_variables("encoder", self.encoder, e_rng)
    if self._initial_discriminator_vars is not None:
      d_params = jax.tree.map(jnp.asarray, self._initial_discriminator_vars["params"])
    else:
      d_params = export.init_variables("discriminator", self.discriminator, d_rng)["params"]
    return {
        "step": jnp.zeros((), jnp.int32),
        "rng": base_rng,
        # normalization='none' has no batch statistics: an empty collection keeps one state layout.
        "encoder": {"params": encoder_vars["params"], "batch_stats": encoder_vars.get("batch_stats", {})},
        "discriminator": {"params": d_params},
        "e_opt": self.e_tx.init(trained_variables(encoder_vars, self.train_bn_scale)),
        "d_opt": self.d_tx.init(d_params),
    }

  @property
  def frozen(self):
    """The frozen variables on the mesh (replicated), placed once."""
    if self._frozen is None:
      self._frozen = jax.device_put(self._frozen_host, self.frozen_shardings)
    return self._frozen

  def lower(self):
    """The train step lowered for abstract inputs (nothing runs): .compile() for the AOT check."""
    frozen = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), self._frozen_host,
                          self.frozen_shardings)
    return self.train_step.lower(self.abstract_state(), frozen, self.abstract_images())

  def compiled_step(self):
    """The train step compiled ahead of time once per trainer (its cost_analysis() gives FLOPs per step)."""
    if self._compiled is None:
      self._compiled = self.lower().compile()
    return self._compiled

  def run_step(self, state, images):
    """One training step with the AOT-compiled executable (batches are moved onto the batch sharding)."""
    return self.compiled_step()(state, self.frozen, mesh_lib.shard_batch(images, self.images_sharding))

  # ----- the step -----
  def _for_compute(self, tree):
    """Variables in the compute dtype, whole on every device (the FSDP all-gather when parameters are sharded)."""
    return loop.replicate_for_compute(precision.cast_floating(tree, self.dtype), self.mesh)

  def _encode_train(self, params, batch_stats, images):
    """Training-mode encoder on the global batch with BN statistics synchronised over the data axis."""
    params, images = self._for_compute(params), images.astype(self.dtype)

    def local(params, batch_stats, images):
      wp, updates = self.synced_encoder.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                                              mutable=["batch_stats"])
      return wp, updates.get("batch_stats", {})

    return jax.shard_map(local, mesh=self.mesh, in_specs=(P(), P(), P(mesh_lib.DATA_AXIS)),
                         out_specs=(P(mesh_lib.DATA_AXIS), P()))(params, batch_stats, images)

  def _features(self, frozen, images):
    """float32 VGG16 features, computed in the compute dtype."""
    from idinvert_jax.models.vgg16 import perceptual_features  # pylint: disable=import-outside-toplevel
    variables = precision.cast_floating(frozen["perceptual"], self.dtype)
    return perceptual_features(self.perceptual_module, variables, images.astype(self.dtype)).astype(jnp.float32)

  def _synthesize(self, frozen, wp):
    """float32 images G(wp), computed in the compute dtype."""
    # Fixed noise maps, as the official encoder training (randomize_noise=False).
    variables = precision.cast_floating(frozen["generator"], self.dtype)
    return generator_lib.synthesize(self.generator, variables, wp.astype(self.dtype)).astype(jnp.float32)

  def _sample_codes_and_images(self, frozen, rng, num):
    """`num` untruncated codes wp ~ G's mapping and their images G(wp) (no gradient), split over the data axis."""
    z = jax.random.normal(rng, (num, self.generator.z_dim), jnp.float32)
    z = jax.lax.with_sharding_constraint(z, self.images_sharding)
    wp = generator_lib.mapping(self.generator, frozen["generator"], z)
    return jax.lax.stop_gradient(wp), jax.lax.stop_gradient(self._synthesize(frozen, wp))

  def _logits_fn(self, d_params):
    """D's float32 logits as a function of float32 images, computed in the compute dtype."""
    d_vars = {"params": self._for_compute(d_params)}
    return lambda x: self.discriminator.apply(d_vars, x.astype(self.dtype)).astype(jnp.float32)

  def _train_step(self, state, frozen, images):
    tcfg = self.tcfg
    d_vars = state["discriminator"]
    real_features = self._features(frozen, images) if self.lambda_vgg > 0 else None
    real_dfeat = (discriminator_features(self.discriminator, frozen["feature_discriminator"], images)
                  if self.lambda_dfeat > 0 else None)
    if self.lambda_code > 0:
      code_rng = loop.step_rng(state["rng"], state["step"])  # a new draw every step, the same after a resume
      sampled_wp, sampled_images = self._sample_codes_and_images(frozen, code_rng,
                                                                 self.code_batch_size or images.shape[0])

    def encoder_objective(trained):
      params, scales = split_trained(trained, self.train_bn_scale)
      stats = with_bn_scales(state["encoder"]["batch_stats"], scales)
      wp, new_stats = self._encode_train(params, stats, images)
      recons = self._synthesize(frozen, wp)
      fake_logits = self._logits_fn(d_vars["params"])(recons)
      recon_features = self._features(frozen, recons) if self.lambda_vgg > 0 else None
      dfeat = None
      if self.lambda_dfeat > 0:
        recon_dfeat = discriminator_features(self.discriminator, frozen["feature_discriminator"], recons)
        dfeat = feature_distance(real_dfeat, recon_dfeat)
      code = None
      if self.lambda_code > 0:
        # Its own training-mode pass (BN statistics of the sampled batch; the running averages follow real images).
        wp_of_samples, _ = self._encode_train(params, stats, sampled_images)
        code = jnp.mean(jnp.square(wp_of_samples.astype(jnp.float32) - sampled_wp))
      total, metrics = losses.encoder_loss(images, recons, fake_logits, real_features=real_features,
                                           recon_features=recon_features, lambda_vgg=self.lambda_vgg,
                                           lambda_adv=float(tcfg.lambda_adv), dfeat_distance=dfeat,
                                           lambda_dfeat=self.lambda_dfeat, code_distance=code,
                                           lambda_code=self.lambda_code)
      return total, (metrics, new_stats)

    trained = trained_variables(state["encoder"], self.train_bn_scale)
    (_, (e_metrics, new_stats)), e_grads = jax.value_and_grad(encoder_objective, has_aux=True)(trained)
    e_updates, e_opt = self.e_tx.update(e_grads, state["e_opt"], trained)
    trained = optax.apply_updates(trained, e_updates)
    e_params, scales = split_trained(trained, self.train_bn_scale)
    new_stats = with_bn_scales(new_stats, scales)

    # D sees the updated encoder (the official loop runs the E op, then the D op, on the same batch).
    wp, _ = self._encode_train(e_params, new_stats, images)
    recons = jax.lax.stop_gradient(self._synthesize(frozen, wp))

    def discriminator_objective(d_params):
      logits_fn = self._logits_fn(d_params)
      r1, real_logits = losses.r1_penalty(logits_fn, images)
      loss_real, loss_fake = losses.discriminator_logistic_loss(real_logits, logits_fn(recons))
      total = loss_real + loss_fake + 0.5 * float(tcfg.r1_gamma) * r1
      return total, {"d_loss": total, "d_real": loss_real, "d_fake": loss_fake, "d_r1": r1}

    d_params = d_vars["params"]
    (_, d_metrics), d_grads = jax.value_and_grad(discriminator_objective, has_aux=True)(d_params)
    d_updates, d_opt = self.d_tx.update(d_grads, state["d_opt"], d_params)
    d_params = optax.apply_updates(d_params, d_updates)

    new_state = {
        "step": state["step"] + 1,
        "rng": state["rng"],
        "encoder": {"params": e_params, "batch_stats": new_stats},
        "discriminator": {"params": d_params},
        "e_opt": e_opt,
        "d_opt": d_opt,
    }
    metrics = dict(e_metrics, **d_metrics, lr=learning_rate_schedule(tcfg, self.num_steps)(state["step"]))
    return new_state, metrics

  # ----- outputs -----
  def _reconstruct_fn(self, state, frozen, images):
    """Inference-mode reconstruction G(E(x)) (BN running statistics), for the sample grids."""
    wp = self.encoder.apply(state["encoder"], images, train=False)
    return self._synthesize(frozen, wp)

  def sample_rows(self, state, images) -> list:
    n = min(int(self.tcfg.num_samples), images.shape[0])
    # Gather the (small) sample slice to every host so process 0 can draw it.
    inputs = loop.to_host(images)[:n]
    recons = loop.to_host(self._reconstruct(state, self.frozen, images))[:n]
    return [list(inputs), list(recons)]

  def export_variables(self, state) -> dict[str, Any]:
    return {"generator": self.frozen["generator"], "encoder": state["encoder"],
            "discriminator": state["discriminator"]}

  def export_origins(self, step: int) -> dict[str, Any]:
    trained = {"stage": "encoder", "step": int(step)}
    return {"generator": self.generator_origin, "encoder": dict(trained, generator=self.generator_origin),
            "discriminator": trained}

  def stage(self) -> loop.Stage:
    return loop.Stage(name="encoder", init_state=self.init_state, abstract_state=self.abstract_state,
                      train_step=self.run_step,
                      export_variables=self.export_variables, sample_rows=self.sample_rows,
                      sample_row_labels=("input", "recon"), export_origins=self.export_origins,
                      check_metrics=EncoderHealth(self.num_steps, float(self.tcfg.get("health_adv_share", 0.5)),
                                                  float(self.tcfg.get("health_stall_fraction", 0.2))))


def load_frozen_models(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Generator (+ discriminator when stored) variables from the generator checkpoint, and VGG16 if configured."""
  source = resolve_generator_source(config, workdir)
  # Only G and D are read: the encoder being trained may differ from one stored with them.
  models = export.load_models(source, names=("generator", "discriminator"), config=config, if_present=True)
  if models.generator_vars is None:
    raise FileNotFoundError(f"checkpoint {source} has no generator; pass --config.train.generator_checkpoint=DIR "
                            "of a converted or stage-1 checkpoint")
  if models.discriminator_vars is None:
    logging.warning("checkpoint %s has no discriminator: encoder training starts D from random weights", source)
  from idinvert_jax.convert.vgg16 import load_perceptual  # pylint: disable=import-outside-toplevel
  source_dir = str(export.find_checkpoint_dir(source))
  generator_origin = loop.read_export_origins(source_dir).get("generator") or {"checkpoint": source_dir}
  return {"generator_vars": models.generator_vars, "discriminator_vars": models.discriminator_vars,
          "perceptual": load_perceptual(config.model), "generator_origin": generator_origin}


def train_encoder(config: ml_collections.ConfigDict, workdir: str, *, mesh: jax.sharding.Mesh | None = None,
                  data_iterator: Iterator[jax.Array] | None = None, frozen_models: dict | None = None,
                  show_progress: bool = True) -> loop.RunResult:
  """Runs (or resumes) stage 2 in `workdir` up to config.train.num_steps."""
  mesh = mesh if mesh is not None else mesh_lib.make_mesh(config.get("mesh"))
  tcfg = config.train
  mesh_lib.check_batch_size(int(tcfg.batch_size), mesh)
  loop.check_mirror_owner(config, "encoder")  # before any model is built or loaded
  frozen_models = frozen_models if frozen_models is not None else load_frozen_models(config, workdir)
  trainer = EncoderTrainer(config, mesh, **frozen_models)
  own_iterator = data_iterator is None
  if own_iterator:
    data_iterator = loop.make_data_iterator(config, mesh, "encoder")
  try:
    return loop.run(trainer.stage(), config=config, workdir=workdir, data_iterator=data_iterator,
                    num_steps=trainer.num_steps, batch_size=int(tcfg.batch_size),
                    checkpoint_every=int(tcfg.checkpoint_every), keep_checkpoints=int(tcfg.keep_checkpoints),
                    log_every=int(tcfg.log_every), sample_every=int(tcfg.sample_every), show_progress=show_progress)
  finally:
    if own_iterator and hasattr(data_iterator, "close"):
      data_iterator.close()  # stops the pipeline's reader threads
