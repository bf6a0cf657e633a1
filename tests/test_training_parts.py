"""Training building blocks without models: losses, style mixing, EMA, mesh, config merging, checkpoints, signals."""
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import tiny
from idinvert_jax import losses
from idinvert_jax import training
from idinvert_jax.training import checkpoints
from idinvert_jax.training import encoder as encoder_training
from idinvert_jax.training import gan as gan_training
from idinvert_jax.training import loop
from idinvert_jax.training import mesh as mesh_lib


# ----- losses -----

def test_logistic_losses_match_numpy_formulas():
  real = np.array([-2.0, 0.5, 3.0], np.float32)
  fake = np.array([1.0, -0.25], np.float32)
  softplus = lambda x: np.log1p(np.exp(x))
  loss_real, loss_fake = losses.discriminator_logistic_loss(real, fake)
  np.testing.assert_allclose(loss_real, softplus(-real).mean(), rtol=1e-6)
  np.testing.assert_allclose(loss_fake, softplus(fake).mean(), rtol=1e-6)
  np.testing.assert_allclose(losses.generator_logistic_ns_loss(fake), softplus(-fake).mean(), rtol=1e-6)


def test_r1_penalty_of_linear_and_quadratic_critics():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 2))
  w = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 2))
  # Linear critic: gradient is w for every sample, so the penalty is |w|^2.
  penalty, logits = losses.r1_penalty(lambda v: jnp.sum(v * w, axis=(1, 2, 3)), x)
  np.testing.assert_allclose(penalty, np.sum(np.square(w)), rtol=1e-5)
  np.testing.assert_allclose(logits, np.sum(np.asarray(x) * np.asarray(w), axis=(1, 2, 3)), rtol=1e-5)
  # Quadratic critic sum(v^2)/2: gradient is x itself, penalty = mean over samples of |x_i|^2.
  penalty, _ = losses.r1_penalty(lambda v: 0.5 * jnp.sum(v * v, axis=(1, 2, 3)), x)
  np.testing.assert_allclose(penalty, np.mean(np.sum(np.square(np.asarray(x)), axis=(1, 2, 3))), rtol=1e-5)


def test_encoder_loss_weights_its_terms():
  reals = jnp.zeros((2, 4, 4, 3))
  recons = jnp.full((2, 4, 4, 3), 0.5)
  logits = jnp.array([0.0, 0.0])
  feats_real, feats_fake = jnp.zeros((2, 2, 2, 8)), jnp.full((2, 2, 2, 8), 2.0)
  total, parts = losses.encoder_loss(reals, recons, logits, real_features=feats_real, recon_features=feats_fake,
                                     lambda_vgg=0.1, lambda_adv=0.5)
  np.testing.assert_allclose(parts["e_pixel"], 0.25, rtol=1e-6)
  np.testing.assert_allclose(parts["e_perceptual"], 4.0, rtol=1e-6)
  np.testing.assert_allclose(parts["e_adv"], np.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(total, 0.25 + 0.4 + 0.5 * np.log(2.0), rtol=1e-6)
  total, parts = losses.encoder_loss(reals, recons, logits)  # no features: perceptual term is 0
  np.testing.assert_allclose(parts["e_perceptual"], 0.0)
  np.testing.assert_allclose(total, 0.25 + 0.08 * np.log(2.0), rtol=1e-6)


def test_in_domain_inversion_loss_is_per_image():
  targets = jnp.zeros((2, 2, 2, 3))
  recons = jnp.stack([jnp.zeros((2, 2, 3)), jnp.ones((2, 2, 3))])
  wp = jnp.zeros((2, 3, 4))
  total, parts = losses.in_domain_inversion_loss(targets, recons, wp, wp + 1.0, loss_weight_enc=2.0)
  np.testing.assert_allclose(parts["pixel"], [0.0, 1.0])
  np.testing.assert_allclose(total, [2.0, 3.0])


# ----- GAN / encoder schedule pieces -----

def test_style_mixing_takes_a_suffix_of_layers_from_the_second_code():
  wp, other = jnp.zeros((2, 6, 3)), jnp.ones((2, 6, 3))
  crossovers = set()
  for seed in range(40):
    mixed = np.asarray(gan_training.mix_styles(wp, other, jax.random.PRNGKey(seed), 0.9))
    from_other = mixed[0, :, 0] == 1.0
    cut = int(np.argmax(from_other)) if from_other.any() else 6
    # Layers before the crossover from wp, the rest from the other code, same for every sample.
    assert not from_other[:cut].any() and from_other[cut:].all() and (mixed[0] == mixed[1]).all()
    assert 1 <= cut <= 6
    crossovers.add(cut)
  assert len(crossovers) >= 4, crossovers  # random crossover points
  np.testing.assert_array_equal(gan_training.mix_styles(wp, other, jax.random.PRNGKey(0), 0.0), wp)


def test_ema_beta_has_the_configured_half_life():
  beta = gan_training.ema_beta(32, 10.0)
  steps_per_half_life = 10_000 / 32
  np.testing.assert_allclose(beta ** steps_per_half_life, 0.5, rtol=1e-9)
  assert gan_training.ema_beta(32, 0.0) == 0.0


def test_encoder_learning_rate_decays_by_0_8_every_quarter():
  tcfg = training.get_train_config("encoder")
  schedule = encoder_training.learning_rate_schedule(tcfg, num_steps=100)
  got = [float(schedule(s)) for s in (0, 24, 25, 49, 50, 75, 99)]
  want = [1e-4, 1e-4, 8e-5, 8e-5, 6.4e-5, 5.12e-5, 5.12e-5]
  np.testing.assert_allclose(got, want, rtol=1e-5)


# ----- config -----

def test_stage_config_merges_defaults_flat_and_per_stage_keys():
  config = ml_collections.ConfigDict({"model": {"resolution": 32}, "train": {
      "batch_size": 16, "gan": {"g_learning_rate": 0.002}, "encoder": {"lambda_adv": 0.1}}})
  gan = training.stage_config(config, "gan").train
  assert gan.batch_size == 16 and gan.g_learning_rate == 0.002 and gan.adam_b1 == 0.0 and gan.r1_gamma == 10.0
  enc = training.stage_config(config, "encoder").train
  assert enc.batch_size == 16 and enc.lambda_adv == 0.1 and enc.adam_b1 == 0.9 and enc.learning_rate == 1e-4
  assert config.train.gan.g_learning_rate == 0.002  # input untouched
  bad = ml_collections.ConfigDict({"train": {"gan": {"g_lr": 1.0}}})
  with pytest.raises(ValueError, match=r"config.train.gan.g_lr is not a gan training setting"):
    training.stage_config(bad, "gan")
  with pytest.raises(ValueError, match="unknown training stage"):
    training.get_train_config("vae")


def test_a_leftover_config_data_mirror_is_refused_naming_the_stage_key(tmp_path):
  loop.check_mirror_owner(training.stage_config(tiny.get_config(), "gan"), "gan")  # default configs pass
  config = tiny.get_config()
  config.data.mirror = True  # an old config file (ConfigDicts accept new fields); training never read it
  config.train.gan.mirror = False
  with pytest.raises(ValueError, match=r"config\.data\.mirror=True is not read by training.*"
                                       r"config\.train\.gan\.mirror \(now False\): use config\.train\.<stage>\.mirror"):
    training.train(config, str(tmp_path / "workdir"), "gan")
  assert not (tmp_path / "workdir").exists()  # refused before anything was written


def test_train_cli_explains_the_moved_mirror_flag(tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "train.py", "--config", "configs/tiny.py", "--workdir", str(tmp_path),
                         "--config.data.mirror=True"], cwd=repo, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "use --config.train.gan.mirror=... and/or --config.train.encoder.mirror" in proc.stderr, proc.stderr


# ----- mesh -----

def test_make_mesh_fills_the_data_axis_and_rejects_bad_shapes():
  mesh = mesh_lib.make_mesh(None)
  assert mesh.axis_names == ("data",) and mesh.shape["data"] == jax.device_count() == 8
  mesh = mesh_lib.make_mesh(ml_collections.ConfigDict({"axes": ("data", "model"), "shape": (-1, 2)}))
  assert dict(mesh.shape) == {"data": 4, "model": 2}
  assert mesh_lib.make_mesh(None, jax.devices()[:1]).shape["data"] == 1
  with pytest.raises(ValueError, match="needs 6 devices"):
    mesh_lib.make_mesh(ml_collections.ConfigDict({"axes": ("data",), "shape": (6,)}))
  with pytest.raises(ValueError, match="no 'data' axis"):
    mesh_lib.make_mesh(ml_collections.ConfigDict({"axes": ("model",), "shape": (-1,)}))
  with pytest.raises(ValueError, match="batch_size=12 is not divisible by the 8"):
    mesh_lib.check_batch_size(12, mesh_lib.make_mesh(None))


def test_param_rules_shard_matching_leaves_and_replicate_the_rest():
  mesh = mesh_lib.make_mesh(ml_collections.ConfigDict({"axes": ("data", "model"), "shape": (-1, 2)}))
  tree = {"g": {"conv": {"kernel": np.zeros((3, 3, 4, 8)), "bias": np.zeros(8)}, "odd": {"kernel": np.zeros(
      (3, 3, 4, 5))}}}
  rules = [(r"kernel$", (None, None, None, "model"))]
  shardings = mesh_lib.param_shardings(tree, mesh, rules)
  assert shardings["g"]["conv"]["kernel"].spec == jax.sharding.PartitionSpec(None, None, None, "model")
  assert shardings["g"]["conv"]["bias"].spec == jax.sharding.PartitionSpec()
  assert shardings["g"]["odd"]["kernel"].spec == jax.sharding.PartitionSpec()  # 5 is not divisible by 2


# ----- checkpoints -----

def _small_state(value):
  sharding = mesh_lib.replicated(mesh_lib.make_mesh(None))
  return {"step": jax.device_put(jnp.asarray(value, jnp.int32), sharding),
          "w": jax.device_put(jnp.full((4, 3), float(value)), sharding)}


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
  directory = tmp_path / "checkpoints"
  ckpt = checkpoints.TrainCheckpointer(directory, max_to_keep=3)
  for step in (1, 2, 3):
    ckpt.save(step, _small_state(step), {"index": step * 10})
  ckpt.wait()
  # Damage step 3: truncate every data file of its state item.
  damaged = 0
  for root, _, names in os.walk(directory / "3" / "state"):
    for name in names:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 0:
        with open(path, "r+b") as f:
          f.truncate(max(0, os.path.getsize(path) // 3))
        damaged += 1
  assert damaged
  step, state, data_state = ckpt.restore_latest(_small_state(0))
  assert step == 2 and int(state["step"]) == 2 and data_state == {"index": 20}
  np.testing.assert_array_equal(state["w"], np.full((4, 3), 2.0))
  assert "checkpoint step 3" in caplog.text and "corrupt or partial" in caplog.text
  # The bad step is moved aside, so the same step number can be written again.
  assert ckpt.all_steps() == [1, 2] and os.listdir(str(directory) + "_corrupt")
  ckpt.save(3, _small_state(33), {"index": 330})
  ckpt.wait()
  assert ckpt.restore_latest(_small_state(0))[0] == 3
  ckpt.close()


def test_a_checkpoint_of_other_shapes_is_a_mismatch_not_corruption(tmp_path, caplog):
  directory = tmp_path / "checkpoints"
  ckpt = checkpoints.TrainCheckpointer(directory)
  for step in (1, 2):
    ckpt.save(step, _small_state(step), {})
  ckpt.close()
  other = dict(_small_state(0), w=jnp.zeros((5, 3)), b=jnp.zeros(2))  # another model config
  ckpt = checkpoints.TrainCheckpointer(directory)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r"^checkpoint step 2 in .* does not match this run's config \(2 entries differ: b: not in "
                           r"the checkpoint; w: shape \(4, 3\) in the checkpoint, \(5, 3\) in this run\); nothing "
                           r"was changed: resume with the same config .* or train the new config in a new --workdir$"):
    ckpt.restore_latest(other)
  assert ckpt.all_steps() == [1, 2] and not os.path.exists(str(directory) + "_corrupt")
  assert "corrupt" not in caplog.text
  assert ckpt.restore_latest(_small_state(0))[0] == 2  # the matching config still resumes the newest step
  ckpt.close()


def test_no_checkpoint_restores_none_and_nan_state_is_rejected(tmp_path):
  ckpt = checkpoints.TrainCheckpointer(tmp_path / "c")
  assert ckpt.restore_latest(_small_state(0)) is None
  good, bad = _small_state(1), _small_state(2)
  bad["w"] = bad["w"] * jnp.nan
  ckpt.save(1, good, {})
  ckpt.save(2, bad, {})
  assert ckpt.restore_latest(_small_state(0))[0] == 1
  ckpt.close()


def test_each_process_restores_its_own_data_state_and_old_checkpoints_still_load(tmp_path, caplog):
  ckpt = checkpoints.TrainCheckpointer(tmp_path / "c")
  ckpt.save(1, _small_state(1), {"position": 7})
  assert ckpt.restore_latest(_small_state(0))[2] == {"position": 7}  # single process: its own state back
  # A step written the old way (the bare state of process 0) still resumes a single-process run.
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  ckpt._manager.save(2, args=ocp.args.Composite(  # pylint: disable=protected-access
      state=ocp.args.StandardSave(_small_state(2)), data=ocp.args.JsonSave({"position": 9}),
      meta=ocp.args.JsonSave({})))
  assert ckpt.restore_latest(_small_state(0))[::2] == (2, {"position": 9})
  ckpt.close()
  # What two processes write (gathered), and what each of them restores.
  two = {"format": checkpoints.DATA_STATES_FORMAT, "process_count": 2,
         "states": {"0": {"position": 7}, "1": {"position": 11}}}
  assert checkpoints.own_data_state(two, 0, 2) == {"position": 7}
  assert checkpoints.own_data_state(two, 1, 2) == {"position": 11}
  # A checkpoint from before per-process states: process 0 resumes it, the others start afresh and say so.
  old = {"position": 7}
  assert checkpoints.own_data_state(old, 0, 2, step=5) == old
  assert checkpoints.own_data_state(old, 1, 2, step=5) is None
  assert "checkpoint step 5 holds the data-iterator state of process 0 only" in caplog.text
  # Another process count: nobody can take a slice that is not theirs, everyone restarts the stream.
  assert checkpoints.own_data_state(two, 0, 4) is None
  assert "states of 2 processes but this run has 4" in caplog.text


def test_preemption_guard_turns_sigterm_into_a_stop_flag():
  with checkpoints.PreemptionGuard() as guard:
    assert not guard.should_stop()
    os.kill(os.getpid(), signal.SIGTERM)
    assert guard.should_stop()
  assert signal.getsignal(signal.SIGTERM) is not guard._handle  # pylint: disable=protected-access
