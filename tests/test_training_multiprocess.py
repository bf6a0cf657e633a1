"""Two processes x 2 CPU devices (jax.distributed on 127.0.0.1, gloo collectives) train the encoder stage together
and end with the same parameters as one process with 4 devices; the shared workdir gets one checkpoint and one
export written collectively."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np

from idinvert_jax.training import arrays
from idinvert_jax.training import encoder as encoder_training
from idinvert_jax.training import mesh as mesh_lib

NUM_STEPS = 3
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Shared by the workers and the in-process reference: config, frozen models and data from fixed seeds.
SETUP = textwrap.dedent("""
    import numpy as np
    from configs import tiny
    from idinvert_jax import training

    def setup():
      config = tiny.get_config()
      config.model.resolution = 8
      config.train.encoder.num_steps = %d
      config.train.encoder.checkpoint_every = 2
      config.train.encoder.adam_eps = 1e-3  # see test_training_encoder.encoder_config
      config = training.stage_config(config, "encoder")
      frozen = training.random_frozen_models(config, seed=5)
      images = np.random.RandomState(1).uniform(-1, 1, (16, 8, 8, 3)).astype(np.float32)
      return config, frozen, images
    """ % NUM_STEPS)

WORKER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, os.environ["REPO"])
    process_id, port, workdir, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    from idinvert_jax.training import mesh as mesh_lib
    mesh_lib.maybe_initialize_distributed(f"127.0.0.1:{port}", 2, process_id, cpu_collectives="gloo")
    import jax
    import numpy as np
    jax.config.update("jax_default_matmul_precision", "float32")
    from idinvert_jax.training import arrays, encoder, loop
    exec(open(os.environ["SETUP_FILE"]).read())
    config, frozen, images = setup()
    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    trainer = encoder.EncoderTrainer(config, mesh_lib.make_mesh(config.mesh), **frozen)
    result = loop.run(trainer.stage(), config=config, workdir=workdir, num_steps=config.train.num_steps,
                      data_iterator=arrays.ArrayBatches(images, 8, trainer.mesh), batch_size=8,
                      checkpoint_every=2, log_every=1, sample_every=0, show_progress=False)
    leaves = jax.tree_util.tree_leaves_with_path({k: result.state[k] for k in ("encoder", "discriminator")})
    np.savez(out, **{jax.tree_util.keystr(p): loop.to_host(x) for p, x in leaves})
    print("WORKER_DONE", process_id, result.step, flush=True)
    """)


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def load_setup(tmp_path):
  path = tmp_path / "setup.py"
  path.write_text(SETUP)
  namespace = {}
  exec(SETUP, namespace)  # pylint: disable=exec-used
  return path, namespace["setup"]


def test_two_processes_match_one_process(tmp_path):
  setup_file, setup = load_setup(tmp_path)
  worker = tmp_path / "worker.py"
  worker.write_text(WORKER)
  workdir = tmp_path / "workdir"
  port = free_port()
  env = dict(os.environ, REPO=REPO, SETUP_FILE=str(setup_file), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2", PYTHONPATH=REPO)
  procs = [subprocess.Popen([sys.executable, str(worker), str(i), str(port), str(workdir), str(tmp_path / f"p{i}.npz")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]

  # Reference while the workers run: one process, 4 of the 8 simulated devices.
  config, frozen, images = setup()
  trainer = encoder_training.EncoderTrainer(config, mesh_lib.make_mesh(None, jax.devices()[:4]), **frozen)
  state = trainer.init_state()
  batches = arrays.ArrayBatches(images, 8, trainer.mesh)
  for _ in range(NUM_STEPS):
    state, _ = trainer.run_step(state, next(batches))
  reference = {jax.tree_util.keystr(p): np.asarray(jax.device_get(x)) for p, x in
               jax.tree_util.tree_leaves_with_path({k: state[k] for k in ("encoder", "discriminator")})}

  outputs = []
  try:
    for proc in procs:
      out, _ = proc.communicate(timeout=900)
      outputs.append(out)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  for i, (proc, out) in enumerate(zip(procs, outputs)):
    assert proc.returncode == 0 and f"WORKER_DONE {i} {NUM_STEPS}" in out, out[-3000:]

  results = [dict(np.load(tmp_path / f"p{i}.npz")) for i in range(2)]
  assert results[0].keys() == reference.keys()
  for key, want in reference.items():
    np.testing.assert_array_equal(results[0][key], results[1][key], err_msg=key)  # hosts agree exactly
    # Different device counts reorder float32 sums: same tolerance as the 1-vs-8-device tests.
    np.testing.assert_allclose(results[0][key], want, rtol=1e-4, atol=1e-5, err_msg=key)
  # Checkpoints and the export were written once, collectively.
  assert sorted(os.listdir(workdir / "checkpoints" / "encoder")) == ["2", "3"]
  assert json.loads((workdir / "export" / "config.json").read_text())["model"]["resolution"] == 8
