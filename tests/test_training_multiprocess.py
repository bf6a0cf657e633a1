"""Two processes x 2 CPU devices (jax.distributed on 127.0.0.1, gloo collectives) train the encoder stage together
on the grain pipeline, are stopped, and resume: they end with the same parameters as one uninterrupted process with
4 devices, and each process resumes its own data-iterator position (the processes skip different bad files, so
their positions differ). The shared workdir gets one checkpoint per step and one export written collectively."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
from PIL import Image

from idinvert_jax.data import pipeline
from idinvert_jax.training import encoder as encoder_training
from idinvert_jax.training import mesh as mesh_lib

NUM_STEPS = 3
STOP_AT = 2  # the first launch stops here (a checkpoint); the second resumes to NUM_STEPS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Shared by the workers and the in-process reference: config, frozen models and data from fixed seeds.
SETUP = textwrap.dedent("""
    from configs import tiny
    from idinvert_jax import training

    def setup(data_dir):
      config = tiny.get_config()
      config.model.resolution = 8
      config.train.encoder.num_steps = %d
      config.train.encoder.checkpoint_every = 2
      config.train.encoder.adam_eps = 1e-3  # see test_training_encoder.encoder_config
      # In file order, so the two bad files (sorted first) fall in process 0's slice of the first batch.
      config.data.update(dict(source="folder", path=data_dir, shuffle=False, num_threads=1, prefetch_buffer_size=2))
      config = training.stage_config(config, "encoder")
      frozen = training.random_frozen_models(config, seed=5)
      return config, frozen
    """ % NUM_STEPS)

WORKER = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, os.environ["REPO"])
    process_id, port, workdir, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    num_steps = int(sys.argv[5])
    from idinvert_jax.training import mesh as mesh_lib
    mesh_lib.maybe_initialize_distributed(f"127.0.0.1:{port}", 2, process_id, cpu_collectives="gloo")
    import jax
    import numpy as np
    jax.config.update("jax_default_matmul_precision", "float32")
    from idinvert_jax.training import encoder, loop
    exec(open(os.environ["SETUP_FILE"]).read())
    config, frozen = setup(os.environ["DATA_DIR"])
    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    trainer = encoder.EncoderTrainer(config, mesh_lib.make_mesh(config.mesh), **frozen)
    data = loop.make_data_iterator(config, trainer.mesh, "encoder")
    result = loop.run(trainer.stage(), config=config, workdir=workdir, num_steps=num_steps, data_iterator=data,
                      batch_size=8, checkpoint_every=2, log_every=1, sample_every=0, show_progress=False)
    data.close()
    leaves = jax.tree_util.tree_leaves_with_path({k: result.state[k] for k in ("encoder", "discriminator")})
    np.savez(out, **{jax.tree_util.keystr(p): loop.to_host(x) for p, x in leaves})
    state = data.get_state()
    with open(out + ".json", "w") as f:
      json.dump({k: state[k] for k in ("batches", "skipped", "last_position")}, f)
    print("WORKER_DONE", process_id, result.start_step, result.step, flush=True)
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


def image_folder(tmp_path):
  """14 good 12x12 PNGs and, sorted before them, 2 unreadable files."""
  folder = tmp_path / "images"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(14):
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / f"img_{i:02d}.png")
  (folder / "0_bad_empty.png").write_bytes(b"")
  (folder / "0_bad_text.png").write_text("not an image")
  return folder


def launch_workers(tmp_path, workdir, env, num_steps, tag):
  port = free_port()
  procs = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(i), str(port), str(workdir),
                             str(tmp_path / f"{tag}{i}.npz"), str(num_steps)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  return procs


def wait_for(procs, want):
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
    assert proc.returncode == 0 and f"WORKER_DONE {i} {want}" in out, out[-3000:]


def test_two_processes_stop_and_resume_like_one_uninterrupted_process(tmp_path):
  setup_file, setup = load_setup(tmp_path)
  (tmp_path / "worker.py").write_text(WORKER)
  data_dir = image_folder(tmp_path)
  workdir = tmp_path / "workdir"
  env = dict(os.environ, REPO=REPO, SETUP_FILE=str(setup_file), DATA_DIR=str(data_dir), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2", PYTHONPATH=REPO)
  first = launch_workers(tmp_path, workdir, env, STOP_AT, "first")

  # Reference while the workers run: one process, 4 of the 8 simulated devices, NUM_STEPS steps without a stop,
  # fed the global batches the two hosts read (process 0's slice, then process 1's).
  config, frozen = setup(str(data_dir))
  trainer = encoder_training.EncoderTrainer(config, mesh_lib.make_mesh(None, jax.devices()[:4]), **frozen)
  readers = [pipeline.make_train_iterator(config.data, 8, 8, None, int(config.train.seed),
                                          mirror=bool(config.train.mirror), process_index=p, process_count=2)
             for p in range(2)]
  state = trainer.init_state()
  for _ in range(NUM_STEPS):
    batch = np.concatenate([reader.next_local()[0] for reader in readers]).astype(np.float32) / 127.5 - 1.0
    state, _ = trainer.run_step(state, batch)
  reference = {jax.tree_util.keystr(p): np.asarray(jax.device_get(x)) for p, x in
               jax.tree_util.tree_leaves_with_path({k: state[k] for k in ("encoder", "discriminator")})}
  reference_positions = [{k: reader.get_state()[k] for k in ("batches", "skipped", "last_position")}
                         for reader in readers]
  for reader in readers:
    reader.close()

  wait_for(first, f"0 {STOP_AT}")
  assert sorted(os.listdir(workdir / "checkpoints" / "encoder")) == [str(STOP_AT)]
  wait_for(launch_workers(tmp_path, workdir, env, NUM_STEPS, "resumed"), f"{STOP_AT} {NUM_STEPS}")

  results = [dict(np.load(tmp_path / f"resumed{i}.npz")) for i in range(2)]
  assert results[0].keys() == reference.keys()
  for key, want in reference.items():
    np.testing.assert_array_equal(results[0][key], results[1][key], err_msg=key)  # hosts agree exactly
    # Different device counts reorder float32 sums: same tolerance as the 1-vs-8-device tests.
    np.testing.assert_allclose(results[0][key], want, rtol=1e-4, atol=1e-5, err_msg=key)
  # Each process continued its own stream: process 0 met the two bad files in both epochs it touched, process 1
  # never, so they are at different positions, each where the uninterrupted reader of its slice is.
  positions = [json.loads((tmp_path / f"resumed{i}.npz.json").read_text()) for i in range(2)]
  assert positions == reference_positions
  assert [p["skipped"] for p in positions] == [4, 0]
  assert positions[0]["last_position"] != positions[1]["last_position"]
  # Checkpoints and the export were written once, collectively.
  assert sorted(os.listdir(workdir / "checkpoints" / "encoder")) == [str(STOP_AT), str(NUM_STEPS)]
  assert json.loads((workdir / "export" / "config.json").read_text())["model"]["resolution"] == 8
