r"""Trains the two stages of In-Domain GAN Inversion: the StyleGAN generator, then the domain-guided encoder.

  python train.py --config configs/tiny.py --workdir runs/tiny               # both stages, one after the other
  python train.py --config configs/tiny.py --workdir runs/tiny --stage gan
  python train.py --config configs/tiny.py --workdir runs/tiny --stage encoder   # G from runs/tiny/export
  python train.py --config configs/ffhq256.py --workdir runs/enc --stage encoder \
      --config.train.generator_checkpoint=checkpoints/styleganinv_ffhq256
  python train.py --config configs/tiny.py --workdir /tmp/x --stage gan --compile_only   # FLOPs + memory
  python train.py --config configs/ffhq256.py --workdir /tmp/aot --compile_only --topology v5e:4x4   # TPU, no TPU

Re-running the same command resumes from WORKDIR/checkpoints/<stage>. SIGTERM/SIGINT save a checkpoint and exit.
Multi-host: pass --coordinator_address/--num_processes/--process_id (or set JAX_COORDINATOR_ADDRESS, ...;
IDINVERT_DISTRIBUTED=1 lets JAX detect a TPU pod / SLURM on its own) and run the same command on every host.

Exit codes: 0 trained (or stopped by a preemption signal after saving: rerun to resume); 1 nothing could be done
(usage error, a checkpoint of another config in --workdir, no generator for the encoder stage, a NaN loss).
"""
import importlib
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from idinvert_jax import cli_logging

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (ml_collections).", lock_config=False)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, export/, metrics.jsonl and samples/.")
flags.DEFINE_enum("stage", "all", ["all", "gan", "encoder"], "Which stage to train; 'all' = gan, then the "
                  "encoder on its EMA generator.")
flags.DEFINE_bool("compile_only", False, "Compile the train step ahead of time for the mesh, print memory per "
                  "device, FLOPs and a roofline estimate, end with one JSON line, and exit without training (exit "
                  "status 1 when a step does not fit the device's memory).")
flags.DEFINE_string("topology", None, "With --compile_only: compile for this TPU topology instead of the local "
                    "devices, e.g. v5e:16x16, v5e:4x4, v4:4x4x4, v5p:2x2x1, v6e:4x4 (needs libtpu: pip install -e "
                    "'.[tpu]'; no TPU needed).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for jax.distributed (multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of processes for jax.distributed.")
flags.DEFINE_integer("process_id", None, "This process' index for jax.distributed.")
flags.DEFINE_string("cpu_collectives", None, "CPU collectives backend for multi-process CPU runs (e.g. gloo).")
flags.mark_flags_as_required(["config", "workdir"])


def moved_flag_error(argv) -> str | None:
  """A one-line error for command-line overrides of settings that moved (config_flags would only raise a bare
  AttributeError for them), or None."""
  for arg in argv[1:]:
    if arg.split("=", 1)[0] in ("--config.data.mirror", "-config.data.mirror"):
      return ("train.py: config.data.mirror no longer exists (training never read it); mirroring is set per "
              "stage: use --config.train.gan.mirror=... and/or --config.train.encoder.mirror=...")
  return None


def main(argv):
  cli_logging.quiet_libraries(FLAGS.verbosity)  # Orbax / JAX INFO lines only with --verbosity=1
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Imported after flag parsing: XLA_FLAGS / platform choices from the environment apply before jax starts.
  from idinvert_jax import training  # pylint: disable=import-outside-toplevel
  from idinvert_jax.training import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  mesh_lib.maybe_initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                                        FLAGS.cpu_collectives)
  config = FLAGS.config
  stages = training.STAGES if FLAGS.stage == "all" else (FLAGS.stage,)
  if FLAGS.topology and not FLAGS.compile_only:
    raise app.UsageError("--topology compiles for devices this host does not have; add --compile_only")
  # Every stage's code now: an encoder stage imported after an hour of GAN training would mix module versions
  # if the checkout changed meanwhile (it happened: the run crashed at the stage switch).
  for module in [f"training.{stage}" for stage in stages] + ["models.generator", "models.discriminator",
                                                              "models.encoder", "models.vgg16"]:
    importlib.import_module(f"idinvert_jax.{module}")
  if FLAGS.compile_only:
    sys.exit(compile_only(training, mesh_lib, config, stages))
  mesh = mesh_lib.make_mesh(config.get("mesh"))
  from idinvert_jax.training import checkpoints  # pylint: disable=import-outside-toplevel
  for stage in stages:
    try:
      result = training.train(config, FLAGS.workdir, stage, mesh=mesh)
    except checkpoints.CheckpointMismatchError as e:
      sys.exit(f"train.py: {e}")
    if result.preempted:
      logging.warning("%s training stopped early (preemption) at step %d; re-run to resume", stage, result.step)
      return
    logging.info("%s training finished at step %d; export in %s/export", stage, result.step, FLAGS.workdir)


def compile_only(training, mesh_lib, config, stages) -> str | None:
  """AOT-compiles each stage's train step (local devices, or --topology's) and prints what it needs per device;
  one JSON line per stage. Returns the error message (exit status 1) when a step does not fit, else None."""
  from idinvert_jax import compile_check  # pylint: disable=import-outside-toplevel
  try:
    devices = compile_check.topology_devices(FLAGS.topology) if FLAGS.topology else None
    mesh = mesh_lib.make_mesh(config.get("mesh"), devices)
    reports = []
    for stage in stages:
      report = training.compile_report(config, stage, mesh, topology=FLAGS.topology or "")
      print("\n".join(report.lines()))
      print(report.json_line(), flush=True)
      reports.append(report)
  except ValueError as e:  # No libtpu, unknown topology, batch not divisible: one line naming the fix.
    return f"train.py: error: {e}"
  failed = [compile_check.does_not_fit_message(r, "train.py") for r in reports if not r.fits]
  return "\n".join(failed) or None


if __name__ == "__main__":
  error = moved_flag_error(sys.argv)
  if error:
    sys.exit(error)
  app.run(main)
