"""Stage 1: the StyleGAN-v1 generator and discriminator at full resolution (official training/loss.py + loop).

Per step (one minibatch of reals, as the official D_repeats=1 loop):
  D: mean(softplus(D(G(z1)))) + mean(softplus(-D(x))) + gamma/2 * R1(x)           (logistic + R1 on reals)
  G: mean(softplus(-D(G(z2))))  with the just-updated D                           (non-saturating logistic)
  style mixing: with prob 0.9 the codes of a second z replace layers >= a random crossover in [1, L)
  noise: random noise maps (randomize_noise=True in the official training)
  w_avg <- mean_N(wp[:, 0]) + 0.995 * (w_avg - mean_N(wp[:, 0]))                 (truncation centre)
  EMA:   G_ema <- G + beta * (G_ema - G), beta = 0.5 ** (batch / (ema_kimg * 1000)); buffers copied
Adam(b1 0, b2 0.99, eps 1e-8) for both; the mapping network's lr_mul lives inside its layers.
Everything runs in one jit with NamedSharding: the batch is split over the `data` mesh axis, parameters replicated
(or sharded by config.mesh.param_rules); minibatch-stddev groups follow the global batch so 1 and N devices agree.
"""
from __future__ import annotations

from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import optax

from idinvert_jax import export
from idinvert_jax import losses
from idinvert_jax import precision
from idinvert_jax.training import loop
from idinvert_jax.training import mesh as mesh_lib


def make_optimizer(learning_rate: float, tcfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return optax.adam(learning_rate, b1=tcfg.adam_b1, b2=tcfg.adam_b2, eps=tcfg.adam_eps)


def ema_beta(batch_size: int, ema_kimg: float) -> float:
  """Per-step EMA decay for a half-life of `ema_kimg` thousand images (StyleGAN's G_smoothing_kimg)."""
  return 0.5 ** (batch_size / (ema_kimg * 1000.0)) if ema_kimg > 0 else 0.0


def mix_styles(wp: jax.Array, wp_other: jax.Array, rng: jax.Array, prob: float) -> jax.Array:
  """Style-mixing regularisation: layers >= crossover come from wp_other (one crossover per minibatch).

  With probability `prob` the crossover is uniform in [1, L), otherwise L (no mixing), as in the official G_style.
  """
  num_layers = wp.shape[1]
  if prob <= 0 or num_layers < 2:
    return wp
  mix_rng, cut_rng = jax.random.split(rng)
  crossover = jnp.where(jax.random.uniform(mix_rng) < prob,
                        jax.random.randint(cut_rng, (), 1, num_layers), num_layers)
  use_first = (jnp.arange(num_layers) < crossover)[None, :, None]
  return jnp.where(use_first, wp, wp_other)


class GanTrainer(loop.StateShapesMixin):
  """Builds the modules, the initial state and the sharded train step of stage 1."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    from idinvert_jax.models import generator as generator_lib  # pylint: disable=import-outside-toplevel
    self._g = generator_lib
    self.config = config
    self.tcfg = config.train
    self.mesh = mesh
    self.num_steps = int(self.tcfg.num_steps)
    self.batch_size = int(self.tcfg.batch_size)
    self.generator = export.build_module("generator", config.model)
    # Training draws fresh noise maps every step (official randomize_noise=True); sampling uses the config's mode.
    self.train_generator = self.generator.clone(noise_mode="random")
    self.discriminator = export.build_module("discriminator", config.model)
    self.g_tx = make_optimizer(float(self.tcfg.g_learning_rate), self.tcfg)
    self.d_tx = make_optimizer(float(self.tcfg.d_learning_rate), self.tcfg)
    self.beta = ema_beta(self.batch_size, float(self.tcfg.ema_kimg))
    # Compute dtype of G and D inside the step; parameters, EMA, w_avg and Adam state stay float32.
    self.dtype = precision.compute_dtype(self.tcfg.get("precision", "float32"), "config.train.gan.precision")
    rules = tuple(config.mesh.get("param_rules", ())) if "mesh" in config else ()
    self._state_shapes = jax.eval_shape(self._init_state_unsharded)
    self.state_shardings = mesh_lib.param_shardings(self._state_shapes, mesh, rules)
    replicate = mesh_lib.replicated(mesh)
    self.images_sharding = mesh_lib.batch_sharding(mesh)
    self.train_step = jax.jit(self._train_step, in_shardings=(self.state_shardings, self.images_sharding),
                              out_shardings=(self.state_shardings, replicate), donate_argnums=(0,))
    self.sample_z = jax.random.normal(jax.random.PRNGKey(int(self.tcfg.seed) + 1),
                                      (int(self.tcfg.num_samples), self.generator.z_dim), jnp.float32)
    self._compiled = None
    self._jitted_init = None
    self._abstract_state = None
    self._sample = jax.jit(self._sample_fn)

  # ----- state -----
  def _init_state_unsharded(self) -> dict[str, Any]:
    g_rng, d_rng, base_rng = jax.random.split(jax.random.PRNGKey(int(self.tcfg.seed)), 3)
    g_vars = export.init_variables("generator", self.generator, g_rng)
    d_vars = export.init_variables("discriminator", self.discriminator, d_rng)
    g_vars = {"params": g_vars["params"], "buffers": g_vars["buffers"]}
    return {
        "step": jnp.zeros((), jnp.int32),
        "rng": base_rng,
        "generator": g_vars,
        "generator_ema": jax.tree.map(jnp.copy, g_vars),
        "discriminator": {"params": d_vars["params"]},
        "g_opt": self.g_tx.init(g_vars["params"]),
        "d_opt": self.d_tx.init(d_vars["params"]),
    }

  def lower(self):
    """The train step lowered for abstract inputs (nothing runs): .compile() for the AOT check."""
    return self.train_step.lower(self.abstract_state(), self.abstract_images())

  def compiled_step(self):
    """The train step compiled ahead of time once per trainer (its cost_analysis() gives FLOPs per step)."""
    if self._compiled is None:
      self._compiled = self.lower().compile()
    return self._compiled

  def run_step(self, state, images):
    """One training step with the AOT-compiled executable (batches are moved onto the batch sharding)."""
    return self.compiled_step()(state, mesh_lib.shard_batch(images, self.images_sharding))

  # ----- the step -----
  def _for_compute(self, tree):
    """Variables as the models use them: in the compute dtype and whole on every device (with parameters
    sharded by config.mesh.param_rules, this is the all-gather of FSDP; the gradient comes back sharded)."""
    return loop.replicate_for_compute(precision.cast_floating(tree, self.dtype), self.mesh)

  def _fake_codes(self, g_vars, rng):
    """Mixed W+ codes for a batch of fakes and the unmixed first-layer codes (for w_avg)."""
    z_rng, z2_rng, mix_rng = jax.random.split(rng, 3)
    z_shape = (self.batch_size, self.generator.z_dim)
    wp = self._g.mapping(self.generator, g_vars, jax.random.normal(z_rng, z_shape, self.dtype))
    wp_other = self._g.mapping(self.generator, g_vars, jax.random.normal(z2_rng, z_shape, self.dtype))
    mixed = mix_styles(wp, wp_other, mix_rng, float(self.tcfg.style_mixing_prob))
    return mixed, wp[:, 0].astype(jnp.float32)

  def _train_step(self, state, images):
    tcfg = self.tcfg
    d_rng, d_noise_rng, g_rng, g_noise_rng = jax.random.split(loop.step_rng(state["rng"], state["step"]), 4)
    g_vars = state["generator"]
    g_compute = self._for_compute(g_vars)

    def logits_of(d_params):
      """D's float32 logits of images (float32 or compute dtype) with parameters d_params (float32)."""
      d_vars = {"params": self._for_compute(d_params)}
      return lambda x: self.discriminator.apply(d_vars, x.astype(self.dtype)).astype(jnp.float32)

    # Discriminator step on reals + fakes from the current G.
    d_codes, _ = self._fake_codes(g_compute, d_rng)
    fakes = jax.lax.stop_gradient(self._g.synthesize(self.train_generator, g_compute, d_codes, d_noise_rng))

    def discriminator_objective(d_params):
      logits_fn = logits_of(d_params)
      r1, real_logits = losses.r1_penalty(logits_fn, images)
      loss_real, loss_fake = losses.discriminator_logistic_loss(real_logits, logits_fn(fakes))
      total = loss_real + loss_fake + 0.5 * float(tcfg.r1_gamma) * r1
      return total, {"d_loss": total, "d_real": loss_real, "d_fake": loss_fake, "d_r1": r1,
                     "real_logits": jnp.mean(real_logits)}

    d_params = state["discriminator"]["params"]
    (_, d_metrics), d_grads = jax.value_and_grad(discriminator_objective, has_aux=True)(d_params)
    d_updates, d_opt = self.d_tx.update(d_grads, state["d_opt"], d_params)
    d_params = optax.apply_updates(d_params, d_updates)

    # Generator step against the updated D (the official loop runs the D op, then the G op).
    def generator_objective(g_params):
      variables = self._for_compute({"params": g_params, "buffers": g_vars["buffers"]})
      codes, first_layer_codes = self._fake_codes(variables, g_rng)
      fake_images = self._g.synthesize(self.train_generator, variables, codes, g_noise_rng)
      fake_logits = logits_of(d_params)(fake_images)
      loss = losses.generator_logistic_ns_loss(fake_logits)
      return loss, (first_layer_codes, jnp.mean(fake_logits))

    g_params = g_vars["params"]
    (g_loss, (first_layer_codes, fake_logit_mean)), g_grads = jax.value_and_grad(
        generator_objective, has_aux=True)(g_params)
    g_updates, g_opt = self.g_tx.update(g_grads, state["g_opt"], g_params)
    g_params = optax.apply_updates(g_params, g_updates)

    # Truncation centre: running mean of the (unmixed) first-layer codes.
    buffers = dict(g_vars["buffers"])
    batch_mean = jnp.mean(jax.lax.stop_gradient(first_layer_codes), axis=0)
    buffers["w_avg"] = batch_mean + float(tcfg.w_avg_beta) * (buffers["w_avg"] - batch_mean)
    new_generator = {"params": g_params, "buffers": buffers}
    ema_params = jax.tree.map(lambda new, avg: new + self.beta * (avg - new), g_params,
                              state["generator_ema"]["params"])
    new_state = {
        "step": state["step"] + 1,
        "rng": state["rng"],
        "generator": new_generator,
        "generator_ema": {"params": ema_params, "buffers": buffers},
        "discriminator": {"params": d_params},
        "g_opt": g_opt,
        "d_opt": d_opt,
    }
    metrics = dict(d_metrics, g_loss=g_loss, fake_logits=fake_logit_mean)
    return new_state, metrics

  # ----- outputs -----
  def _sample_fn(self, ema_vars, z):
    wp = self._g.mapping(self.generator, ema_vars, z)
    noise_rng = jax.random.PRNGKey(0) if self.generator.noise_mode == "random" else None
    return self._g.synthesize(self.generator, ema_vars, wp, noise_rng)

  def sample_rows(self, state, images) -> list:
    """One row of EMA samples from the fixed z (untruncated), one row of reals."""
    samples = loop.to_host(self._sample(state["generator_ema"], self.sample_z))
    reals = loop.to_host(images)[:len(samples)]
    return [list(samples), list(reals)]

  def export_variables(self, state) -> dict[str, Any]:
    return {"generator": state["generator_ema"], "discriminator": state["discriminator"]}

  def stage(self) -> loop.Stage:
    return loop.Stage(name="gan", init_state=self.init_state, abstract_state=self.abstract_state,
                      train_step=self.run_step, export_variables=self.export_variables, sample_rows=self.sample_rows,
                      sample_row_labels=("G_ema", "real"))


def train_gan(config: ml_collections.ConfigDict, workdir: str, *, mesh: jax.sharding.Mesh | None = None,
              data_iterator: Iterator[jax.Array] | None = None, show_progress: bool = True) -> loop.RunResult:
  """Runs (or resumes) stage 1 in `workdir` up to config.train.num_steps."""
  mesh = mesh if mesh is not None else mesh_lib.make_mesh(config.get("mesh"))
  tcfg = config.train
  mesh_lib.check_batch_size(int(tcfg.batch_size), mesh)
  loop.check_mirror_owner(config, "gan")  # before any model is built or loaded
  trainer = GanTrainer(config, mesh)
  own_iterator = data_iterator is None
  if own_iterator:
    data_iterator = loop.make_data_iterator(config, mesh, "gan")
  try:
    return loop.run(trainer.stage(), config=config, workdir=workdir, data_iterator=data_iterator,
                    num_steps=trainer.num_steps, batch_size=trainer.batch_size,
                    checkpoint_every=int(tcfg.checkpoint_every), keep_checkpoints=int(tcfg.keep_checkpoints),
                    log_every=int(tcfg.log_every), sample_every=int(tcfg.sample_every), show_progress=show_progress)
  finally:
    if own_iterator and hasattr(data_iterator, "close"):
      data_iterator.close()  # stops the pipeline's reader threads
