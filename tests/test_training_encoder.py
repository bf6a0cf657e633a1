"""Stage 2 (domain-guided encoder) training on the tiny config at 8 px: BatchNorm statistics of the global batch
under sharding, 1 vs 8 devices, and the reconstruction error falling within a short run."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import tiny
from idinvert_jax import models
from idinvert_jax import training
from idinvert_jax.training import arrays
from idinvert_jax.training import encoder as encoder_training
from idinvert_jax.training import logging as train_logging
from idinvert_jax.training import loop
from idinvert_jax.training import mesh as mesh_lib

NUM_STEPS = 200


def encoder_config():
  config = tiny.get_config()
  config.model.resolution = 8
  t = config.train.encoder
  t.num_steps = NUM_STEPS
  t.learning_rate = 1e-3  # 10x the paper's: a 200-step run shows learning (1.3 -> ~0.4 MSE); x0.8 every 50 steps
  t.checkpoint_every = NUM_STEPS
  # The conv biases in front of BatchNorm have gradients that are 0 up to round-off; Adam's first steps
  # (sign(g) * lr) would turn that noise into +-lr moves that differ between device counts. eps 1e-3 keeps
  # such updates proportional to their (tiny) gradients without slowing the real ones much.
  t.adam_eps = 1e-3
  t.log_every = 1
  return training.stage_config(config, "encoder")


@pytest.fixture(scope="module")
def frozen():
  return training.random_frozen_models(encoder_config(), seed=3)


@pytest.fixture(scope="module")
def in_domain_images(frozen):
  """Images the (random) generator can produce exactly: the encoder can learn to reconstruct them."""
  config = encoder_config()
  G = models.build_generator(config.model)
  wp = models.mapping(G, frozen["generator_vars"], jax.random.normal(jax.random.PRNGKey(7), (32, G.z_dim)))
  return np.asarray(models.synthesize(G, frozen["generator_vars"], wp))


@pytest.fixture(scope="module")
def trainer8(frozen):
  return encoder_training.EncoderTrainer(encoder_config(), mesh_lib.make_mesh(None), **frozen)


def test_batchnorm_statistics_are_those_of_the_global_batch(trainer8, in_domain_images):
  images = jnp.asarray(in_domain_images[:8])
  state = trainer8.init_state()
  params, stats = state["encoder"]["params"], state["encoder"]["batch_stats"]
  sharded = jax.device_put(images, trainer8.images_sharding)
  wp, new_stats = jax.jit(trainer8._encode_train)(params, stats, sharded)  # pylint: disable=protected-access
  # Reference: one device, the whole batch, no axis name.
  host = lambda t: jax.tree.map(lambda x: np.asarray(jax.device_get(x)), t)
  wp_ref, updates = trainer8.encoder.apply(host({"params": params, "batch_stats": stats}), images, train=True,
                                           mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(wp), wp_ref, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(host(new_stats)), jax.tree.leaves(updates["batch_stats"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # Control: per-device statistics (no axis name) give different codes, so the check above has teeth.
  unsynced = jax.shard_map(
      lambda p, s, x: trainer8.encoder.apply({"params": p, "batch_stats": s}, x, train=True,
                                             mutable=["batch_stats"])[0],
      mesh=trainer8.mesh, in_specs=(P(), P(), P("data")), out_specs=P("data"))
  wp_local = np.asarray(jax.jit(unsynced)(params, stats, sharded))
  assert np.max(np.abs(wp_local - wp_ref)) > 1e-2


def test_one_device_and_eight_devices_give_the_same_parameters(trainer8, frozen, in_domain_images):
  # Same tolerance as the GAN test: reordered float32 batch sums (and BN pmeans), 3 Adam steps (eps 1e-3).
  trainer1 = encoder_training.EncoderTrainer(encoder_config(), mesh_lib.make_mesh(None, jax.devices()[:1]),
                                             **frozen)
  results = []
  for trainer in (trainer1, trainer8):
    state = trainer.init_state()
    batches = arrays.ArrayBatches(in_domain_images, 8, trainer.mesh)
    for _ in range(3):
      state, _ = trainer.run_step(state, next(batches))
    results.append(jax.tree.map(lambda x: np.asarray(jax.device_get(x)), state))
  one, eight = results
  for key in ("encoder", "discriminator"):
    for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(one[key]),
                                 jax.tree_util.tree_leaves_with_path(eight[key])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=f"{key}{jax.tree_util.keystr(path)}")
  # BN running statistics moved (a vacuous comparison would pass on untouched values too).
  assert np.max(np.abs(one["encoder"]["batch_stats"]["block0_bn"]["mean"])) > 1e-4


def test_reconstruction_error_falls_well_below_its_initial_value(trainer8, in_domain_images, tmp_path):
  batches = arrays.ArrayBatches(in_domain_images, 8, trainer8.mesh)
  result = loop.run(trainer8.stage(), config=trainer8.config, workdir=str(tmp_path), data_iterator=batches,
                    num_steps=NUM_STEPS, batch_size=8, checkpoint_every=NUM_STEPS, log_every=1, sample_every=0,
                    show_progress=False)
  assert result.step == NUM_STEPS
  pixel = [r["e_pixel"] for r in train_logging.read_metrics(tmp_path)]
  first, last = pixel[0], float(np.mean(pixel[-5:]))
  assert last < 0.5 * first, (first, last)
  # The export holds the frozen G, the trained E and D, and inference (BN running stats) reconstructs too.
  from idinvert_jax import export  # pylint: disable=import-outside-toplevel
  exported = export.load_models(tmp_path)
  assert exported.names() == ("generator", "encoder", "discriminator")
  G, E = exported.generator, exported.encoder
  x = in_domain_images[:8]
  recon = models.synthesize(G, exported.generator_vars, E.apply(exported.encoder_vars, x, train=False))
  initial_recon_error = first
  assert float(np.mean((np.asarray(recon) - x) ** 2)) < 0.75 * initial_recon_error
