"""Encoder-stage options of the encoder study (bench/encoder_study.py): learning-rate schedules, the frozen
discriminator's feature term, the BatchNorm-free encoder, training-health warnings and the NaN stop."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import tiny
from idinvert_jax import models
from idinvert_jax import training
from idinvert_jax.models.encoder import init_encoder
from idinvert_jax.training import arrays
from idinvert_jax.training import encoder as encoder_training
from idinvert_jax.training import logging as train_logging
from idinvert_jax.training import loop
from idinvert_jax.training import mesh as mesh_lib


def encoder_config(num_steps=40, **train_overrides):
  config = tiny.get_config()
  config.model.resolution = 8
  t = config.train.encoder
  t.num_steps = num_steps
  t.learning_rate = 1e-3
  t.checkpoint_every = num_steps
  t.adam_eps = 1e-3
  t.log_every = 1
  for key, value in train_overrides.items():
    t[key] = value
  return training.stage_config(config, "encoder")


@pytest.fixture(scope="module")
def frozen():
  return training.random_frozen_models(encoder_config(), seed=3)


@pytest.fixture(scope="module")
def images(frozen):
  config = encoder_config()
  G = models.build_generator(config.model)
  wp = models.mapping(G, frozen["generator_vars"], jax.random.normal(jax.random.PRNGKey(7), (16, G.z_dim)))
  return np.asarray(models.synthesize(G, frozen["generator_vars"], wp))


def schedule_values(num_steps, steps, **tcfg):
  base = dict(learning_rate=1.0, lr_decay_rate=0.8, lr_decay_every_fraction=0.25)
  schedule = encoder_training.learning_rate_schedule(ml_collections.ConfigDict(dict(base, **tcfg)), num_steps)
  return [float(schedule(jnp.asarray(s))) for s in steps]


def test_staircase_is_the_official_decay():
  # x0.8 every quarter of 100 steps.
  assert schedule_values(100, [0, 24, 25, 49, 50, 99]) == pytest.approx([1, 1, 0.8, 0.8, 0.64, 0.512])
  # The default schedule is the staircase (configs without the new keys behave as before).
  plain = encoder_training.learning_rate_schedule(
      ml_collections.ConfigDict(dict(learning_rate=1.0, lr_decay_rate=0.8, lr_decay_every_fraction=0.25)), 100)
  assert float(plain(jnp.asarray(60))) == pytest.approx(0.64)


def test_cosine_warms_up_then_decays_to_zero():
  values = schedule_values(100, [0, 5, 10, 55, 100], lr_schedule="cosine", warmup_steps=10)
  assert values[0] == pytest.approx(0.0)
  assert values[1] == pytest.approx(0.5)
  assert values[2] == pytest.approx(1.0)
  assert values[3] == pytest.approx(0.5, abs=1e-6)   # half-way through the decay
  assert values[4] == pytest.approx(0.0, abs=1e-7)


def test_constant_and_warmed_up_staircase():
  assert schedule_values(100, [0, 50, 99], lr_schedule="constant") == pytest.approx([1, 1, 1])
  # Warm-up multiplies the staircase: its decays stay where they were.
  assert schedule_values(100, [0, 3, 30], warmup_steps=4) == pytest.approx([0.25, 1.0, 0.8])


@pytest.mark.parametrize("bad, match", [({"lr_schedule": "linear"}, "lr_schedule"),
                                        ({"warmup_steps": 100}, "warmup_steps")])
def test_bad_schedule_settings_name_the_key(bad, match):
  with pytest.raises(ValueError, match=match):
    schedule_values(100, [0], **bad)


def test_discriminator_features_are_unit_normalised_blocks_and_measure_difference(frozen):
  config = encoder_config()
  config.model.resolution = 16
  D = models.build_discriminator(config.model)
  d_vars = models.init_discriminator(D, jax.random.PRNGKey(0))
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 16, 16, 3), minval=-1, maxval=1)
  feats = encoder_training.discriminator_features(D, d_vars, x)
  # Blocks 16x16 -> 8, 8x8 -> 4: fine to coarse.
  assert [f.shape[1] for f in feats] == [8, 4]
  for f in feats:
    np.testing.assert_allclose(np.mean(np.square(np.asarray(f)), axis=-1), 1.0, rtol=1e-4)
  same = encoder_training.feature_distance(feats, encoder_training.discriminator_features(D, d_vars, x))
  assert float(same) == 0.0
  other = encoder_training.discriminator_features(D, d_vars, -x)
  assert float(encoder_training.feature_distance(feats, other)) > 1e-2


def test_batchnorm_free_encoder_has_no_statistics():
  config = encoder_config()
  config.model.encoder.normalization = "none"
  E = models.build_encoder(config.model)
  variables = init_encoder(E, jax.random.PRNGKey(0))
  assert "batch_stats" not in variables
  x = jnp.zeros((2, 8, 8, 3))
  assert E.apply(variables, x, train=True).shape == (2, E.num_layers, E.w_dim)
  config.model.encoder.normalization = "group"
  with pytest.raises(ValueError, match="normalization"):
    models.build_encoder(config.model).apply(variables, x)


def test_study_options_train_resume_and_export(frozen, images, tmp_path):
  """Cosine schedule + D-feature term + no BatchNorm: the loss falls, the run resumes and exports."""
  config = encoder_config(num_steps=30, lr_schedule="cosine", warmup_steps=3, lambda_dfeat=0.1, lambda_adv=0.01)
  config.model.encoder.normalization = "none"
  config.train.checkpoint_every = 15
  mesh = mesh_lib.make_mesh(None)

  def run(steps):
    trainer = encoder_training.EncoderTrainer(config, mesh, **frozen)
    batches = arrays.ArrayBatches(images, 8, mesh)
    return loop.run(trainer.stage(), config=config, workdir=str(tmp_path), data_iterator=batches,
                    num_steps=steps, batch_size=8, checkpoint_every=15, log_every=1, show_progress=False)

  assert run(15).step == 15
  result = run(30)
  assert result.start_step == 15 and result.step == 30
  records = train_logging.read_metrics(tmp_path)
  assert all(r["e_dfeat"] > 0 for r in records)
  total = [r["e_loss"] for r in records]
  assert np.mean(total[-5:]) < 0.85 * np.mean(total[:3]), total  # ~0.74x measured in 30 steps
  from idinvert_jax import export  # pylint: disable=import-outside-toplevel
  exported = export.load_models(tmp_path)
  assert "batch_stats" not in exported.encoder_vars or not exported.encoder_vars["batch_stats"]
  codes = exported.encoder.apply(exported.encoder_vars, images[:2], train=False)
  assert np.isfinite(np.asarray(codes)).all()


def test_the_feature_term_needs_a_stage_one_discriminator(frozen):
  config = encoder_config(lambda_dfeat=0.1)
  with pytest.raises(ValueError, match="lambda_dfeat"):
    encoder_training.EncoderTrainer(config, mesh_lib.make_mesh(None), **dict(frozen, discriminator_vars=None))


def health_records(pixels, shares):
  return [{"e_pixel": p, "e_adv": 1.0, "e_adv_share": s} for p, s in zip(pixels, shares)]


def test_health_is_quiet_on_a_healthy_run():
  health = encoder_training.EncoderHealth(num_steps=100, adv_share_limit=0.5, stall_fraction=0.2)
  said = [w for step, m in enumerate(health_records(np.linspace(1, 0.1, 100), [0.2] * 100))
          for w in health(step + 1, m)]
  assert said == []


def test_health_warns_once_when_the_adversarial_term_dominates():
  health = encoder_training.EncoderHealth(num_steps=100, adv_share_limit=0.5, stall_fraction=0, patience=3)
  shares = [0.2, 0.6, 0.7, 0.8, 0.9, 0.9, 0.3, 0.6, 0.6, 0.6]
  said = [(step + 1, w) for step, m in enumerate(health_records(np.linspace(1, 0.5, 10), shares))
          for w in health(step + 1, m)]
  # Third dominated point in a row (step 4), not again while it lasts, again after it cleared (step 10).
  assert [s for s, _ in said] == [4, 10]
  assert "lambda_adv" in said[0][1] and "80%" in said[0][1]


def test_health_warns_when_the_reconstruction_stalls():
  health = encoder_training.EncoderHealth(num_steps=100, adv_share_limit=0, stall_fraction=0.2, smooth=1)
  pixels = list(np.linspace(1, 0.5, 30)) + [0.5] * 40
  said = [(step + 1, w) for step, m in enumerate(health_records(pixels, [0.1] * 70)) for w in health(step + 1, m)]
  assert [s for s, _ in said] == [50]  # best at step 30, 20 steps (0.2 x 100) without a 1 % gain
  assert "not improved for 20 steps" in said[0][1]


def test_warnings_reach_the_log_file(frozen, images, tmp_path):
  # A huge adversarial weight makes the adversarial term dominate from the first logged step.
  config = encoder_config(num_steps=6, lambda_adv=100.0)
  trainer = encoder_training.EncoderTrainer(config, mesh_lib.make_mesh(None), **frozen)
  loop.run(trainer.stage(), config=config, workdir=str(tmp_path), data_iterator=arrays.ArrayBatches(images, 8,
           trainer.mesh), num_steps=6, batch_size=8, checkpoint_every=6, log_every=1, show_progress=False)
  text = (tmp_path / "warnings.log").read_text()
  assert text.count("adversarial term is") == 1, text


def test_a_nan_stops_the_encoder_stage_at_the_last_good_checkpoint(frozen, images, tmp_path):
  config = encoder_config(num_steps=6)
  trainer = encoder_training.EncoderTrainer(config, mesh_lib.make_mesh(None), **frozen)
  stage = trainer.stage()
  good_steps = 2

  def poisoned_step(state, batch):
    state, metrics = trainer.run_step(state, batch)
    if int(jax.device_get(state["step"])) > good_steps:
      metrics = dict(metrics, e_pixel=jnp.asarray(math.nan))
    return state, metrics

  stage.train_step = poisoned_step
  with pytest.raises(loop.NonFiniteLossError, match=r"e_pixel=nan at step 3; stopped\. Last good checkpoint: "
                                                    r"step 2"):
    loop.run(stage, config=config, workdir=str(tmp_path), data_iterator=arrays.ArrayBatches(images, 8, trainer.mesh),
             num_steps=6, batch_size=8, checkpoint_every=2, log_every=1, show_progress=False)
  assert sorted(p.name for p in (tmp_path / "checkpoints" / "encoder").iterdir() if p.name.isdigit()) == ["2"]


def test_train_bn_scale_trains_every_batchnorm_gamma(frozen, images):
  """The official TF encoder trains gamma; with train_bn_scale the scales (kept in batch_stats) move."""
  results = {}
  for train_scale in (False, True):
    config = encoder_config(train_bn_scale=train_scale)
    trainer = encoder_training.EncoderTrainer(config, mesh_lib.make_mesh(None), **frozen)
    state = trainer.init_state()
    batches = arrays.ArrayBatches(images, 8, trainer.mesh)
    for _ in range(3):
      state, _ = trainer.run_step(state, next(batches))
    stats = jax.tree.map(np.asarray, jax.device_get(state["encoder"]["batch_stats"]))
    results[train_scale] = stats
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  frozen_scales = {k: v for k, v in traverse_util.flatten_dict(results[False], sep="/").items() if k.endswith("scale")}
  trained_scales = {k: v for k, v in traverse_util.flatten_dict(results[True], sep="/").items() if k.endswith("scale")}
  assert frozen_scales.keys() == trained_scales.keys() and len(trained_scales) >= 3
  assert all(np.all(v == 1.0) for v in frozen_scales.values())
  moved = [k for k, v in trained_scales.items() if np.max(np.abs(v - 1.0)) > 1e-4]
  assert sorted(moved) == sorted(trained_scales), moved  # every gamma, the last BN's included
  # Running statistics are still updated (the scale is written back next to them, not instead of them).
  assert np.max(np.abs(results[True]["block0_bn"]["mean"])) > 1e-4


def test_code_term_teaches_the_encoder_to_invert_sampled_codes(frozen, images):
  """lambda_code: mean((E(G(w)) - w)^2) on codes sampled each step. Against the same run without it, the trained
  encoder inverts G's samples better (the pixel term alone also helps here: the fixture's images are G's), the
  draw depends on the step, and the term is off (reported as 0) by default."""
  mesh = mesh_lib.make_mesh(None)

  def train(lambda_code):
    config = encoder_config(num_steps=40, learning_rate=2e-2, adam_eps=1e-8, train_bn_scale=True,
                            lambda_adv=0.0, lambda_code=lambda_code, code_batch_size=8)
    trainer = encoder_training.EncoderTrainer(config, mesh, **frozen)
    state, batches, logged = trainer.init_state(), arrays.ArrayBatches(images, 8, mesh), []
    for _ in range(40):
      state, metrics = trainer.run_step(state, next(batches))
      logged.append(float(metrics["e_code"]))
    return trainer, state, logged

  trainer, state, logged = train(1.0)
  _, plain_state, plain_logged = train(0.0)
  assert plain_logged == [0.0] * 40
  held_wp, held_x = trainer._sample_codes_and_images(  # pylint: disable=protected-access
      trainer.frozen, jax.random.PRNGKey(123), 16)
  wp1, _ = trainer._sample_codes_and_images(  # pylint: disable=protected-access
      trainer.frozen, loop.step_rng(jax.random.PRNGKey(0), 1), 16)
  assert float(jnp.max(jnp.abs(held_wp - wp1))) > 1e-3
  code_mse = lambda s: float(jnp.mean(jnp.square(trainer.encoder.apply(s["encoder"], held_x) - held_wp)))
  assert code_mse(state) < 0.8 * code_mse(plain_state), (code_mse(state), code_mse(plain_state))
  assert np.mean(logged[-5:]) < 0.7 * np.mean(logged[:3]), logged  # ~0.55x measured


@pytest.mark.parametrize("bad", [{"lambda_code": -1.0}, {"lambda_code": 1.0, "code_batch_size": -2}])
def test_bad_code_term_settings_name_the_key(frozen, bad):
  with pytest.raises(ValueError, match="lambda_code"):
    encoder_training.EncoderTrainer(encoder_config(**bad), mesh_lib.make_mesh(None), **frozen)


def test_code_term_gives_the_same_parameters_on_one_and_eight_devices(frozen, images):
  """The sampled codes are drawn for the global batch and split over the data axis: the same draw on any mesh."""
  config = encoder_config(lambda_code=0.5, code_batch_size=8)
  results = []
  for devices in (jax.devices()[:1], jax.devices()[:8]):
    trainer = encoder_training.EncoderTrainer(config, mesh_lib.make_mesh(None, devices), **frozen)
    state, batches = trainer.init_state(), arrays.ArrayBatches(images, 8, trainer.mesh)
    for _ in range(3):
      state, metrics = trainer.run_step(state, next(batches))
    assert float(metrics["e_code"]) > 0
    results.append(jax.tree.map(lambda x: np.asarray(jax.device_get(x)), state["encoder"]))
  for (path, a), (_, b) in zip(*(jax.tree_util.tree_leaves_with_path(r) for r in results)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))
  with pytest.raises(ValueError, match="code_batch_size=4 must be a multiple"):
    encoder_training.EncoderTrainer(encoder_config(lambda_code=0.5, code_batch_size=4), mesh_lib.make_mesh(None),
                                    **frozen)


def test_a_constant_rate_run_extended_on_resume_equals_one_longer_run(frozen, images, tmp_path):
  """bench/encoder_study.py's length curve trains one run and raises num_steps at each length: with the constant
  schedule that must give the same parameters as one run planned at the longer length from the start."""
  from idinvert_jax import export  # pylint: disable=import-outside-toplevel
  mesh = mesh_lib.make_mesh(None)

  def trainer_for(planned):
    config = encoder_config(num_steps=planned, lr_schedule="constant")
    return config, encoder_training.EncoderTrainer(config, mesh, **frozen)

  def run(trainer_and_config, workdir, steps):
    config, trainer = trainer_and_config
    loop.run(trainer.stage(), config=config, workdir=str(workdir), data_iterator=arrays.ArrayBatches(images, 8, mesh),
             num_steps=steps, batch_size=8, checkpoint_every=4, log_every=1, show_progress=False)
    return jax.tree_util.tree_leaves(export.load_models(workdir).encoder_vars)

  planned_at_8 = trainer_for(8)
  shorter = run(trainer_for(4), tmp_path / "extended", 4)
  extended = run(planned_at_8, tmp_path / "extended", 8)
  straight = run(planned_at_8, tmp_path / "straight", 8)
  for a, b in zip(extended, straight):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # ... and the resume did train on past the first length.
  assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(extended, shorter))
