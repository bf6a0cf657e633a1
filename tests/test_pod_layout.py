"""Pod layout on 8 simulated CPU devices: the image batch stays split over the data axis (no all-gather of it in the
compiled step), FSDP shards parameters and Adam state and gives the replicated layout's numbers, collectives are
read from the compiled module, and bfloat16 compute keeps float32 parameters and optimiser state."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ffhq256_pod
from configs import tiny
from idinvert_jax import compile_check
from idinvert_jax import training
from idinvert_jax.training import arrays
from idinvert_jax.training import mesh as mesh_lib

RES = 8
BATCH = 16  # 2 images per simulated device


def gan_config(fsdp=False, precision="float32"):
  config = tiny.get_config()
  config.model.resolution = RES  # smallest StyleGAN: fastest to compile
  config.train.gan.batch_size = BATCH
  config.train.gan.precision = precision
  config.train.gan.adam_eps = 1e-2  # see test_training_gan.gan_config: compares layouts, not round-off
  if fsdp:
    config.mesh.param_rules = ffhq256_pod.FSDP_RULES
  return training.stage_config(config, "gan")


def image_batch_gathers(hlo_text, batch, resolution):
  """All-gathers whose result is a whole batch of images (or same-sized activations) at full resolution."""
  return [shapes for op, shapes in compile_check.collectives(hlo_text) if op == "all-gather"
          for _, dims in shapes if len(dims) == 4 and dims[0] == batch and dims[1:3] == (resolution, resolution)]


@pytest.fixture(scope="module")
def trainers():
  mesh = mesh_lib.make_mesh(None)
  assert mesh.devices.size == 8
  return {fsdp: training.build_trainer(gan_config(fsdp), "gan", mesh) for fsdp in (False, True)}


def test_the_detector_finds_an_image_batch_gather():
  # A step that needs every image on every device (a batch-wide statistic laid out replicated): the check above
  # must see its all-gather, or the no-gather assertions below would prove nothing.
  mesh = mesh_lib.make_mesh(None)
  batch = mesh_lib.batch_sharding(mesh)

  def whole_batch(x):
    return jax.lax.with_sharding_constraint(x, mesh_lib.replicated(mesh)) * 2.0

  x = jax.ShapeDtypeStruct((BATCH, RES, RES, 3), jnp.float32, sharding=batch)
  hlo = jax.jit(whole_batch, out_shardings=batch).lower(x).compile().as_text()
  assert image_batch_gathers(hlo, BATCH, RES)


@pytest.mark.parametrize("fsdp", [False, True])
def test_gan_step_never_all_gathers_the_image_batch(trainers, fsdp):
  compiled = trainers[fsdp].compiled_step()
  hlo = compiled.as_text()
  assert not image_batch_gathers(hlo, BATCH, RES)
  assert compiled.input_shardings[0][1].spec == jax.sharding.PartitionSpec("data")
  traffic = compile_check.collective_bytes(hlo)
  # Gradients are summed over the data axis: at least every G and D parameter's gradient crosses the devices.
  params = [trainers[fsdp].abstract_state()[name]["params"] for name in ("generator", "discriminator")]
  param_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(params))
  assert sum(v["bytes"] for v in traffic.values()) >= param_bytes / (8 if fsdp else 1), (traffic, param_bytes)
  if fsdp:
    # The sharded kernels are gathered for the forward pass (the weights, never the images).
    assert traffic.get("all-gather", {}).get("count", 0) > 0, traffic


def test_fsdp_shards_parameters_and_adam_state_over_the_data_axis(trainers):
  shardings = jax.tree_util.tree_leaves_with_path(trainers[True].state_shardings)
  sharded = {jax.tree_util.keystr(path) for path, s in shardings if "data" in tuple(s.spec)}
  assert any("generator" in p and "kernel" in p for p in sharded)
  assert any("g_opt" in p and "mu" in p for p in sharded) and any("d_opt" in p and "nu" in p for p in sharded)
  assert not any("w_avg" in p or "noise" in p for p in sharded)
  replicated = jax.tree_util.tree_leaves(trainers[False].state_shardings)
  assert all(s.is_fully_replicated for s in replicated)


def test_fsdp_step_equals_the_replicated_step(trainers):
  images = np.random.RandomState(0).uniform(-1, 1, (BATCH, RES, RES, 3)).astype(np.float32)
  results = {}
  for fsdp, trainer in trainers.items():
    state, metrics = trainer.run_step(trainer.init_state(), next(arrays.ArrayBatches(images, BATCH, trainer.mesh)))
    results[fsdp] = jax.tree.map(np.asarray, (state["generator"]["params"], state["g_opt"], metrics))
  for a, b in zip(jax.tree_util.tree_leaves(results[False]), jax.tree_util.tree_leaves(results[True])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_parameters_and_optimiser_state():
  mesh = mesh_lib.make_mesh(None)
  trainer = training.build_trainer(gan_config(precision="bfloat16"), "gan", mesh)
  state_dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(trainer.abstract_state())
                  if jnp.issubdtype(leaf.dtype, jnp.floating)}
  assert state_dtypes == {jnp.dtype(jnp.float32)}
  hlo = trainer.compiled_step().as_text()
  assert "bf16[" in hlo  # the models run in bfloat16
  images = np.random.RandomState(1).uniform(-1, 1, (BATCH, RES, RES, 3)).astype(np.float32)
  state = trainer.init_state()
  state, metrics = trainer.run_step(state, next(arrays.ArrayBatches(images, BATCH, mesh)))
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(state["g_opt"])
             if jnp.issubdtype(leaf.dtype, jnp.floating))


def test_pod_config_fills_a_v5e_pod_and_rejects_unknown_options():
  config = ffhq256_pod.get_config()
  assert config.train.gan.batch_size % 256 == 0 and config.train.encoder.batch_size % 256 == 0
  assert config.train.gan.precision == "bfloat16" and "param_rules" not in config.mesh
  assert tuple(ffhq256_pod.get_config("fsdp").mesh.param_rules) == ffhq256_pod.FSDP_RULES
  with pytest.raises(ValueError, match="fsdp"):
    ffhq256_pod.get_config("fsd")
