"""Inverts images into W+ codes with In-Domain GAN Inversion (encoder + domain-regularised optimisation).

  python invert.py --checkpoint CKPT --images photos/ more.png list.txt --output out/
  python invert.py --checkpoint CKPT --images photos/ --output out/ --num_iterations 50 --precision bfloat16
  python invert.py --checkpoint CKPT --images photos/ --output out/ --config configs/ffhq256.py \
      --config.invert.num_iterations=200
  python invert.py --config configs/ffhq256.py --compile_only --topology v5e:2x2 --batch_size 16   # TPU, no TPU
  python invert.py --checkpoint CKPT --images selfie.jpg --output out/ --align     # crop the face the FFHQ way
  python invert.py --checkpoint CKPT --images tfds:celeb_a_hq/train --output codes/ --layout shards --merge
  python invert.py ... --layout shards --coordinator_address 10.0.0.2:1234 --num_processes 2 --process_id 0

The official flag names (--method, --num_iterations, --learning_rate, --loss_weight_feat, --loss_weight_enc,
--batch_size, --num_results, --precision) override config.invert; unset, the checkpoint's (or --config's)
values apply, else the official defaults (100 Adam steps, lr 0.01, feat 5e-5, enc 2.0). Reruns on the same
--output skip images already done; --overwrite redoes them. See idinvert_jax/inversion_folder.py for the layout.

Inputs: non-square images are stretched to the model's square as the official code does (said once per run);
--crop center cuts their central square instead; --align detects every face and crops it the FFHQ way (needs
`pip install -e .[align]`). With a calibrated checkpoint (domain.json, see `python -m idinvert_jax.domain`) an
image whose reconstruction stays below its held-out data's PSNR is flagged as outside the model's domain.

Exit codes: 0 every image inverted; 1 nothing could be done (usage error, missing checkpoint or images, bad
settings); 2 finished but some inputs failed (unreadable, no face with --align, or a non-finite result):
listed in failed.txt in --output and in its index.html; a rerun retries them.

--layout shards (data sets, pods): the codes go into chunk files (chunks/codes-00012-of-00488.npz) that any
number of processes write into one shared --output, each inverting pending chunks on its own devices; a killed
run resumes with any number of processes; process 0 writes manifest.json and inputs.txt at the start and
failed.txt, metrics.csv, summary.json, index.html and DONE (and with --merge one inverted_codes.npy) at the end.
--images may then also name .npz/.npy arrays, tfds:NAME/SPLIT and synthetic:COUNT[:SEED]. Read it with
idinvert_jax.inversion_shards.open_codes(folder); edit.py takes the folder as --codes_dir. On a TPU pod run the
same command on every worker with IDINVERT_DISTRIBUTED=1 (or the --coordinator_address flags, as train.py).

--compile_only compiles the in-domain step (G, E, VGG16 conv4_3, Adam over the codes) with the batch sharded over
every device, for the host's devices or a TPU topology's (--topology, needs libtpu: pip install -e '.[tpu]'),
prints the memory per device, FLOPs and a roofline estimate, the largest batch per device that fits (searched by
compiling: 2-5 compiles), and ends with one JSON line; exit status 1 when --batch_size does not fit. Shapes
only: --config alone is enough, no --checkpoint, --images or weights.
"""
import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import jax

from idinvert_jax import cli_logging, exit_codes, invert_job
from idinvert_jax.training import mesh as mesh_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Optional experiment config file (must match the checkpoint's "
                                "architecture); allows --config.invert.<field>=value overrides.")
flags.DEFINE_string("checkpoint", None, "Model checkpoint folder (converter or train.py output). With "
                    "--compile_only, --config may replace it.")
flags.DEFINE_list("images", None, "Image files, folders of images, or .txt lists (comma or space separated).")
flags.DEFINE_string("output", None, "Output folder (not used by --compile_only).")
flags.DEFINE_enum("method", None, ["indomain", "encoder", "optimize"], "Inversion method (default indomain).")
flags.DEFINE_integer("num_iterations", None, "Optimisation steps per image (official default 100).")
flags.DEFINE_float("learning_rate", None, "Adam learning rate (default 0.01).")
flags.DEFINE_float("loss_weight_feat", None, "Perceptual loss weight (default 5e-5).")
flags.DEFINE_float("loss_weight_enc", None, "Encoder (domain) regulariser weight (default 2.0).")
flags.DEFINE_integer("batch_size", None, "Images optimised together (default 8; sharded over the devices). "
                     "On a CPU 1-2 is fastest per image (256 px: batch 8 is 20 % slower than batch 1).")
flags.DEFINE_integer("num_results", None, "Intermediate snapshots per image (default 5).")
flags.DEFINE_enum("precision", None, ["float32", "bfloat16"], "Compute dtype of G/E/VGG (default float32).")
flags.DEFINE_boolean("overwrite", False, "Redo images that an earlier run on --output already finished.")
flags.DEFINE_enum("crop", "none", ["none", "center"], "Non-square inputs: 'none' stretches them to the square "
                  "like the official code; 'center' cuts the central square first (keeps the aspect ratio).")
flags.DEFINE_boolean("align", False, "Detect the faces (dlib, 68 landmarks) and crop each the FFHQ way before "
                     "inverting; the crops are kept in OUTPUT/aligned/. Needs `pip install -e .[align]`.")
flags.DEFINE_boolean("largest_face", False, "With --align: only the largest face of each photo (default: all).")
flags.DEFINE_boolean("progress", True, "Progress bars (--noprogress for logs without them).")

flags.DEFINE_enum("layout", "official", ["official", "shards"], "Output layout: 'official' = one folder of codes, "
                  "PNGs and metrics (small runs); 'shards' = chunk files any number of processes write, resumable "
                  "with another process count (data sets, pods; see idinvert_jax/inversion_shards.py).")
flags.DEFINE_integer("chunk_size", None, "--layout shards: images per chunk file (default 2048, ~490 chunks at 1M "
                     "images; a resumed folder keeps its own).")
flags.DEFINE_enum("save_images", "none", ["none", "sample", "all"], "--layout shards: PNGs into OUTPUT/images/ "
                  "('sample' = the first 4 of every chunk, to look at; default none: codes and metrics only).")
flags.DEFINE_boolean("merge", False, "--layout shards: at the end also write OUTPUT/inverted_codes.npy [N, L, D] "
                     "float32 in input order (memory-mapped; NaN rows for failed inputs).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for jax.distributed (multi-process, "
                    "--layout shards only); also JAX_COORDINATOR_ADDRESS, or IDINVERT_DISTRIBUTED=1 on a TPU pod.")
flags.DEFINE_integer("num_processes", None, "Number of processes for jax.distributed.")
flags.DEFINE_integer("process_id", None, "This process' index for jax.distributed.")
flags.DEFINE_string("cpu_collectives", None, "CPU collectives backend for multi-process CPU runs (e.g. gloo).")
flags.DEFINE_float("exit_barrier_timeout", invert_job.EXIT_BARRIER_TIMEOUT_S, "Seconds a process that finished "
                   "its chunks waits for the others before giving up (default a week).")


flags.DEFINE_boolean("compile_only", False, "Compile the inversion step ahead of time for the devices, print "
                     "memory per device, FLOPs, a roofline estimate and the largest batch per device that fits, end "
                     "with one JSON line, and exit without inverting (exit status 1 when --batch_size does not "
                     "fit).")
flags.DEFINE_string("topology", None, "With --compile_only: compile for this TPU topology instead of the local "
                    "devices, e.g. v5e:2x2, v5e:16x16, v4:4x4x4 (needs libtpu: pip install -e '.[tpu]'; no TPU "
                    "needed).")
flags.DEFINE_boolean("batch_search", True, "With --compile_only: search the largest batch per device that fits "
                     "by compiling (2-4 more compiles; off: only --batch_size is compiled).")


def main(argv):
  cli_logging.quiet_libraries(FLAGS.verbosity)  # Orbax / JAX INFO lines only with --verbosity=1
  if FLAGS.compile_only:
    sys.exit(compile_only())
  if FLAGS.topology:
    raise SystemExit("invert.py: error: --topology compiles for devices this host does not have; add "
                     "--compile_only")
  missing = [f"--{name}" for name in ("checkpoint", "images", "output") if not FLAGS[name].value]
  if missing:
    raise SystemExit(f"invert.py: error: {', '.join(missing)} missing; e.g. invert.py --checkpoint CKPT --images "
                     "photos/ --output out/")
  # Space-separated paths after --images arrive as extra arguments.
  images = list(FLAGS.images) + list(argv[1:])
  overrides = {name: FLAGS[name].value for name in invert_job.OFFICIAL_FLAGS}
  shard_flags = [f"--{n}" for n in ("chunk_size", "merge") if FLAGS[n].present] + (
      ["--save_images"] if FLAGS.save_images != "none" else [])
  if FLAGS.layout != "shards" and shard_flags:
    raise SystemExit(f"invert.py: error: {', '.join(shard_flags)} belong to the sharded layout; add --layout "
                     "shards")
  try:
    mesh_lib.maybe_initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                                          FLAGS.cpu_collectives)
  except (ValueError, RuntimeError) as e:
    raise SystemExit(f"invert.py: error: jax.distributed did not start: {str(e).splitlines()[0]}") from e
  if FLAGS.layout == "shards":
    sys.exit(run_shards(images, overrides))
  if jax.process_count() > 1:
    raise SystemExit(f"invert.py: error: {jax.process_count()} processes would invert the same images into the "
                     "same files; add --layout shards")
  try:
    summary = invert_job.run_inversion(FLAGS.checkpoint, images, FLAGS.output, config=FLAGS.config,
                                       overrides=overrides, overwrite=FLAGS.overwrite, crop=FLAGS.crop,
                                       align=FLAGS.align, largest_face=FLAGS.largest_face, progress=FLAGS.progress)
  except (ValueError, OSError) as e:  # User-fixable (bad flags, missing or unwritable paths): one line.
    raise SystemExit(f"invert.py: error: {e}") from e
  m = summary.mean_metrics
  logging.info("done: %s; mean MSE %.4g, PSNR %.2f dB, SSIM %.4f, %.2f s/image", invert_job.summary_line(summary),
               m["mse"], m["psnr"], m["ssim"], m["seconds"])
  for note in summary.notes:
    print(f"note: {note}")
  print(invert_job.summary_line(summary))
  for line in summary.outside_domain:
    print(f"WARNING {line}")
  for path, reason in summary.failed:
    print(f"FAILED {path}: {reason}")
  if summary.failed:
    print(f"{len(summary.failed)} input(s) failed; listed in {summary.output / 'failed.txt'} and "
          f"{summary.output / 'index.html'}.")
  sys.exit(exit_codes.for_failures(summary.failed))


def run_shards(images, overrides) -> int:
  """--layout shards: this process's chunks; process 0 prints the folder's summary. Same exit code everywhere."""
  if FLAGS.align:
    raise SystemExit("invert.py: error: --align writes aligned crops of photos; align them first (python -m "
                     "idinvert_jax.align) and invert the crops with --layout shards")
  try:
    summary = invert_job.run_sharded_inversion(
        FLAGS.checkpoint, images, FLAGS.output, config=FLAGS.config, overrides=overrides, overwrite=FLAGS.overwrite,
        progress=FLAGS.progress, crop=FLAGS.crop, chunk_size=FLAGS.chunk_size, save_images=FLAGS.save_images,
        merge=FLAGS.merge, exit_barrier_timeout_s=FLAGS.exit_barrier_timeout)
  except (ValueError, OSError) as e:
    raise SystemExit(f"invert.py: error: {e}") from e
  if jax.process_index() == 0:
    m = {k: float("nan") if v is None else v for k, v in summary.mean_metrics.items()}
    logging.info("done: mean MSE %.4g, PSNR %.2f dB, SSIM %.4f, %.2f s/image", m["mse"], m["psnr"], m["ssim"],
                 m["seconds"])
    for note in summary.notes:
      print(f"note: {note}")
    if summary.num_outside_domain:
      print(f"WARNING {summary.num_outside_domain} image(s) outside the model's domain (metrics.csv column "
            "'domain')")
    for name, reason in summary.failed[:20]:
      print(f"FAILED {name}: {reason}")
    if summary.failed:
      print(f"{len(summary.failed)} input(s) failed; listed in {summary.output / 'failed.txt'} and "
            f"{summary.output / 'index.html'}.")
    if summary.merged is not None:
      print(f"merged codes: {summary.merged}")
  print(invert_job.sharded_summary_line(summary))
  if not summary.complete:
    print(f"invert.py: error: {summary.output} is incomplete (chunks missing); rerun the same command to finish it",
          file=sys.stderr)
    return exit_codes.NOTHING_DONE
  return exit_codes.for_failures(summary.failed)


def compile_only() -> str | None:
  """--compile_only: the report, the batch search and the JSON line; the error message when it does not fit."""
  from idinvert_jax import compile_check  # pylint: disable=import-outside-toplevel
  overrides = {name: FLAGS[name].value for name in invert_job.OFFICIAL_FLAGS}

  def show(report):
    print("\n".join(report.lines()), flush=True)

  try:
    report, found = invert_job.compile_check(FLAGS.checkpoint, FLAGS.config, overrides, topology=FLAGS.topology,
                                             search=FLAGS.batch_search, on_report=show)
  except (ValueError, FileNotFoundError) as e:  # No libtpu, unknown topology, batch not divisible: one line.
    return f"invert.py: error: {e}"
  print(found.line())
  print(json.dumps({**report.summary(), "largest_batch_per_device": found.largest,
                    "largest_batch_exact": found.exact}), flush=True)
  return None if report.fits else compile_check.does_not_fit_message(report, "invert.py")


if __name__ == "__main__":
  app.run(main)
