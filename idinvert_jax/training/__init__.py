"""Training of the two stages the paper needs: the StyleGAN-v1 GAN, then the domain-guided encoder.

  get_train_config(stage)          config.train defaults of a stage ('gan' | 'encoder')
  train(config, workdir, stage)    runs or resumes one stage in workdir (gan.train_gan / encoder.train_encoder)
  compile_report(config, stage, mesh)  ahead-of-time compile of the train step for local devices or a TPU topology:
                                   memory per device vs HBM, FLOPs, estimate (compile_check.CompileReport)

Workdir layout: checkpoints/<stage>/<step>/ (Orbax), export/ (project checkpoint format: load_models(workdir);
each stage's export keeps the other stage's models already there, and export/training.json records which stage
and step each model comes from), metrics.jsonl, samples/<stage>_<step>.png.
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections

from idinvert_jax.training import mesh as mesh_lib

STAGES = ("gan", "encoder")


def _common_defaults() -> dict[str, Any]:
  return dict(
      batch_size=32,           # global batch, split over hosts and the `data` mesh axis
      num_steps=10000,
      seed=0,
      mirror=True,             # random horizontal flips (official mirror_augment)
      adam_eps=1e-8,
      r1_gamma=10.0,
      precision="float32",     # compute dtype of the models in the step ('float32' | 'bfloat16'); parameters and
                               # optimiser state stay float32 (idinvert_jax/precision.py)
      checkpoint_every=1000,   # steps between Orbax checkpoints + export/ (and always at the end or on SIGTERM)
      keep_checkpoints=3,
      log_every=50,            # steps between metrics.jsonl lines
      sample_every=1000,       # steps between sample grids in samples/ (0 = never)
      num_samples=8,
  )


def get_train_config(stage: str) -> ml_collections.ConfigDict:
  """Official defaults for config.train of `stage`.

  gan:     Adam(0, 0.99, 1e-8), lr 0.001 for G and D (the official 256-px FFHQ run used 0.002), R1 gamma 10,
           style mixing 0.9, EMA half-life 10 kimg, w_avg decay 0.995.
  encoder: Adam(0.9, 0.99, 1e-8) for E and D, lr 1e-4 x0.8 every quarter of training (lr_schedule
           'staircase'; also 'constant' and 'cosine', with warmup_steps), lambda_vgg 5e-5 (0 without VGG16
           weights), lambda_adv 0.08, R1 gamma 10; generator from generator_checkpoint ('' = this workdir's
           export/ of stage 1). train_bn_scale: also train every BatchNorm scale (gamma), as the official TF
           code does (the PyTorch port, inference only, freezes it). Not in the paper (0 = off): lambda_dfeat, a
           perceptual term in the frozen stage-1 discriminator's feature space
           (training/encoder.discriminator_features);
           lambda_code, mean((E(G(w)) - w)^2) on code_batch_size codes sampled from G per step (0 = batch size),
           which makes E invert G on its own samples, as the in-domain regulariser assumes. Training health
           (training/encoder.EncoderHealth): warn when the weighted adversarial term is over health_adv_share of
           the loss, or when the pixel loss has not improved over the last health_stall_fraction of the run.
  """
  if stage == "gan":
    values = dict(_common_defaults(), g_learning_rate=0.001, d_learning_rate=0.001, adam_b1=0.0, adam_b2=0.99,
                  style_mixing_prob=0.9, ema_kimg=10.0, w_avg_beta=0.995)
  elif stage == "encoder":
    values = dict(_common_defaults(), learning_rate=1e-4, lr_schedule="staircase", warmup_steps=0,
                  lr_decay_rate=0.8, lr_decay_every_fraction=0.25, adam_b1=0.9, adam_b2=0.99, lambda_vgg=5e-5,
                  lambda_adv=0.08, lambda_dfeat=0.0, lambda_code=0.0, code_batch_size=0, train_bn_scale=False,
                  generator_checkpoint="", health_adv_share=0.5, health_stall_fraction=0.2)
  else:
    raise ValueError(f"unknown training stage {stage!r}; use one of {STAGES}")
  return ml_collections.ConfigDict(values)


def stage_config(config: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
  """A copy of `config` whose config.train holds `stage`'s settings.

  config.train may be flat (one stage's keys, used for both) or have per-stage sub-dicts config.train.gan /
  config.train.encoder; missing keys take get_train_config(stage) defaults.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  train = config.get("train", ml_collections.ConfigDict())
  merged = get_train_config(stage)
  flat = {k: v for k, v in train.items() if k not in STAGES}
  specific = train.get(stage, ml_collections.ConfigDict())
  known_anywhere = set(get_train_config("gan")) | set(get_train_config("encoder"))
  specific = specific.to_dict() if isinstance(specific, ml_collections.ConfigDict) else dict(specific)
  for key, value in flat.items():
    if key not in known_anywhere:
      raise ValueError(f"config.train.{key} is not a training setting; valid keys: {sorted(known_anywhere)}")
    if key in merged:
      merged[key] = value
  for key, value in specific.items():
    if key not in merged:
      raise ValueError(f"config.train.{stage}.{key} is not a {stage} training setting; valid keys: "
                       f"{sorted(merged.keys())}")
    merged[key] = value
  with config.ignore_type():
    config.train = merged
  return config


def train(config: ml_collections.ConfigDict, workdir: str, stage: str, **kwargs):
  """Runs or resumes `stage` in `workdir`; kwargs go to gan.train_gan / encoder.train_encoder."""
  config = stage_config(config, stage)
  if stage == "gan":
    from idinvert_jax.training import gan  # pylint: disable=import-outside-toplevel
    return gan.train_gan(config, workdir, **kwargs)
  from idinvert_jax.training import encoder  # pylint: disable=import-outside-toplevel
  return encoder.train_encoder(config, workdir, **kwargs)


def build_trainer(config: ml_collections.ConfigDict, stage: str, mesh: jax.sharding.Mesh, workdir: str = "",
                  frozen_models: dict | None = None):
  """The stage's trainer object (GanTrainer / EncoderTrainer) for an already stage-merged config."""
  if stage == "gan":
    from idinvert_jax.training import gan  # pylint: disable=import-outside-toplevel
    return gan.GanTrainer(config, mesh)
  from idinvert_jax.training import encoder  # pylint: disable=import-outside-toplevel
  if frozen_models is None:
    frozen_models = encoder.load_frozen_models(config, workdir)
  return encoder.EncoderTrainer(config, mesh, **frozen_models)


def compile_report(config: ml_collections.ConfigDict, stage: str, mesh: jax.sharding.Mesh, *,
                   topology: str = ""):
  """Compiles `stage`'s train step for `mesh` (local devices, or a TPU topology's) without running anything.

  Returns a compile_check.CompileReport: memory per device against the chip's HBM, FLOPs, a roofline estimate and
  the collectives. The frozen models of the encoder stage are shapes from the config; VGG16 is included (as in a
  run with perceptual weights) so the step compiled is the official one.
  """
  from idinvert_jax import compile_check  # pylint: disable=import-outside-toplevel
  config = stage_config(config, stage)
  mesh_lib.check_batch_size(int(config.train.batch_size), mesh)
  frozen = abstract_frozen_models(config) if stage == "encoder" else None
  trainer = build_trainer(config, stage, mesh, frozen_models=frozen)
  devices = list(mesh.devices.flat)
  return compile_check.compile_and_report(
      trainer.lower, devices, topology=topology or f"host:{devices[0].platform}", stage=stage,
      global_batch=int(config.train.batch_size), precision=str(config.train.get("precision", "float32")))


def compiled_stats(compiled) -> dict[str, Any]:
  """FLOPs and bytes from cost_analysis() and the memory_analysis() sizes of a compiled executable."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  cost = cost or {}
  stats = {"flops": float(cost.get("flops", 0.0)), "bytes_accessed": float(cost.get("bytes accessed", 0.0))}
  memory = compiled.memory_analysis()
  for name in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
               "generated_code_size_in_bytes", "alias_size_in_bytes"):
    value = getattr(memory, name, None)
    if value is not None:
      stats[name] = int(value)
  return stats


def abstract_frozen_models(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Shapes (jax.ShapeDtypeStruct) of the encoder stage's frozen generator and of VGG16, for compile checks."""
  from idinvert_jax import export  # pylint: disable=import-outside-toplevel
  models = export.abstract_models(config, ("generator", "perceptual"))
  return {"generator_vars": models.generator_vars, "discriminator_vars": None,
          "perceptual": (models.perceptual, models.perceptual_vars)}


def random_frozen_models(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, Any]:
  """Random generator/discriminator variables for the encoder stage (compile checks, benchmarks, tests)."""
  from idinvert_jax import export  # pylint: disable=import-outside-toplevel
  models = export.create_models(config, jax.random.PRNGKey(seed), names=("generator", "discriminator"))
  return {"generator_vars": models.generator_vars, "discriminator_vars": models.discriminator_vars,
          "perceptual": None}
