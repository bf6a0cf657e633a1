"""Training throughput per stage: images/s, s/step, compiled-step GFLOP (cost_analysis) and achieved GFLOP/s.

  python bench/bench_training.py                 # tiny (32 px), synthetic64 (64 px), ffhq256 (256 px, 2 steps)
  python bench/bench_training.py --quick         # tiny and 64 px only, fewer steps
  python bench/bench_training.py --configs ffhq256 --stages gan --batch_size 2 --steps 2   # one 256-px number
  python bench/bench_training.py --configs ffhq256 --batch_size 32 --precision bfloat16   # on a GPU / TPU host

Runs on whatever JAX's default backend is (CPU, GPU, TPU). On an accelerator listed in idinvert_jax/accelerators.py
(by device_kind) each row also gives the fraction of the chips' published peak FLOP/s that the step achieves
(bf16 peak for --precision bfloat16; for float32 the rate of float32 matmuls at JAX's default precision: TF32 on
NVIDIA, one bf16 pass on TPU) and the device's peak memory; on a CPU that column is "n/a" (no published peak).

Uses random weights and an in-memory batch (no data pipeline cost), one mesh over all local devices (on a CPU
machine: 1 device unless XLA_FLAGS sets more). The encoder stage runs without VGG16 weights (lambda_vgg = 0),
as training does when none are configured. Each row: compile time, s/step and images/s over the timed steps
(after one warm-up step), GFLOP per step from the compiled step's cost_analysis(), achieved GFLOP/s, XLA temp
memory and the process's peak RSS so far. The machine line names the CPU model, cores and load average (before
and after): on a shared machine other jobs compete for the cores and the numbers are lower bounds.
Last line: `BENCH_JSON {...}`.
"""
from __future__ import annotations

import argparse
import json
import os
import importlib
import platform
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from idinvert_jax.machine import cpu_model  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from idinvert_jax import accelerators  # noqa: E402
from idinvert_jax import training  # noqa: E402
from idinvert_jax.training import arrays  # noqa: E402
from idinvert_jax.training import mesh as mesh_lib  # noqa: E402


CONFIGS = ("tiny", "synthetic64", "ffhq256")
# Default global batch and timed steps per config: (full run, --quick). ffhq256 is not in --quick.
DEFAULT_PLAN = {"tiny": (8, 10, 3), "synthetic64": (8, 5, 2), "ffhq256": (4, 2, None)}


def load_config(name: str):
  """configs/<name>.py's get_config() (any config file in configs/ works, not only CONFIGS)."""
  return importlib.import_module(f"configs.{name}").get_config()


def available_configs() -> list[str]:
  folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
  return sorted(n[:-3] for n in os.listdir(folder) if n.endswith(".py") and n not in ("__init__.py", "common.py"))


def peak_rss_mib() -> float:
  """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine_facts() -> dict:
  return dict(cpu_model=cpu_model(), cpus=os.cpu_count(), platform=platform.platform(), devices=jax.device_count(),
              backend=jax.default_backend(), device_kind=jax.devices()[0].device_kind,
              load_avg=[round(x, 2) for x in os.getloadavg()],
              load_avg_1min=os.getloadavg()[0])  # the key bench_inversion.py also writes


def device_peak_memory_gib(devices) -> float | None:
  """Largest peak_bytes_in_use over the devices (GPU/TPU report it; CPU devices do not: None)."""
  peaks = []
  for device in devices:
    try:
      stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 -- not implemented on every backend
      stats = {}
    if "peak_bytes_in_use" in stats:
      peaks.append(stats["peak_bytes_in_use"] / 2**30)
  return max(peaks) if peaks else None


def fraction_of_peak(flops_per_s: float, devices, precision: str) -> float | None:
  """Achieved FLOP/s over the devices' published peak (idinvert_jax/accelerators.py), or None when unknown."""
  chip = accelerators.lookup(devices[0].device_kind)
  peak = chip.peak_flops(precision, str(jax.config.jax_default_matmul_precision or "default")) if chip else None
  return flops_per_s / (peak * len(devices)) if peak else None


def run_plan(configs: list[str], stages: list[str], batch_size: int | None, steps: int | None,
             quick: bool) -> list[tuple[str, str, int, int]]:
  """(config, stage, batch, steps) rows: explicit --batch_size/--steps win over the per-config defaults."""
  plan = []
  for name in configs:
    default_batch, full_steps, quick_steps = DEFAULT_PLAN.get(name, (8, 2, 2))
    default_steps = quick_steps if quick and quick_steps is not None else full_steps
    for stage in stages:
      plan.append((name, stage, batch_size or default_batch, steps or default_steps))
  return plan


def bench_stage(config_name: str, stage: str, batch_size: int, steps: int, precision: str = "float32") -> dict:
  """Compiles one stage's step, runs one warm-up step, then times `steps` steps."""
  config = load_config(config_name)
  config.train[stage].batch_size = batch_size
  config.train[stage].precision = precision
  config = training.stage_config(config, stage)
  mesh = mesh_lib.make_mesh(config.mesh)
  frozen = training.random_frozen_models(config) if stage == "encoder" else None
  trainer = training.build_trainer(config, stage, mesh, frozen_models=frozen)
  start = time.perf_counter()
  compiled = trainer.compiled_step()
  compile_s = time.perf_counter() - start
  stats = training.compiled_stats(compiled)
  res = int(config.model.resolution)
  images = np.random.RandomState(0).uniform(-1, 1, (batch_size, res, res, 3)).astype(np.float32)
  batches = arrays.ArrayBatches(images, batch_size, mesh)
  state = trainer.init_state()
  state, metrics = trainer.run_step(state, next(batches))  # warm-up
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = trainer.run_step(state, next(batches))
  jax.block_until_ready(metrics)
  seconds = time.perf_counter() - start
  devices = list(mesh.devices.flat)
  # cost_analysis() is per device (the SPMD-partitioned program): the whole step is that times the devices.
  flops = stats["flops"] * len(devices)
  return dict(config=config_name, stage=stage, resolution=res, batch=batch_size, steps=steps, precision=precision,
              devices=len(devices), device_kind=devices[0].device_kind, compile_s=compile_s,
              s_per_step=seconds / steps, images_per_s=batch_size * steps / seconds, gflops_per_step=flops / 1e9,
              achieved_gflops_per_s=flops * steps / seconds / 1e9,
              fraction_of_peak=fraction_of_peak(flops * steps / seconds, devices, precision),
              temp_mib=stats.get("temp_size_in_bytes", 0) / 2**20, peak_rss_mib=peak_rss_mib(),
              device_peak_gib=device_peak_memory_gib(devices))


def csv_list(allowed):
  def parse(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    known = allowed if allowed is not None else available_configs()
    bad = [v for v in values if v not in known]
    if not values or bad:
      raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated list of {', '.join(known)}")
    return values
  return parse


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true",
                      help="smoke run: tiny and synthetic64 only (unless --configs is given), 2-3 timed steps each")
  parser.add_argument("--configs", type=csv_list(None), default=None,
                      help="comma-separated config names from configs/ (e.g. ffhq256 or tiny,synthetic64); default: "
                           f"{','.join(CONFIGS)} ({','.join(CONFIGS[:2])} with --quick)")
  parser.add_argument("--stages", type=csv_list(("gan", "encoder")), default=["gan", "encoder"],
                      help="comma-separated training stages to time: gan, encoder (default: both)")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="global batch per step for every row; a multiple of the device count "
                           f"(default per config: {', '.join(f'{k} {v[0]}' for k, v in DEFAULT_PLAN.items())})")
  parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                      help="compute dtype of the models in the step (parameters and optimiser state stay float32)")
  parser.add_argument("--steps", type=int, default=None,
                      help="timed steps per row, after one untimed warm-up step (default per config: "
                           f"{', '.join(f'{k} {v[1]}' for k, v in DEFAULT_PLAN.items())}; fewer with --quick)")
  args = parser.parse_args(argv)
  if args.configs is None:
    args.configs = list(CONFIGS[:2]) if args.quick else list(CONFIGS)
  for name in ("batch_size", "steps"):
    if getattr(args, name) is not None and getattr(args, name) <= 0:
      parser.error(f"--{name} must be positive")
  return args


def main():
  args = parse_args()
  load_before = [round(x, 2) for x in os.getloadavg()]
  rows = []
  for config_name, stage, batch, steps in run_plan(args.configs, args.stages, args.batch_size, args.steps,
                                                   args.quick):
    row = bench_stage(config_name, stage, batch, steps, args.precision)
    rows.append(row)
    peak = "n/a" if row["fraction_of_peak"] is None else f"{row['fraction_of_peak']:.1%}"
    device_memory = "" if row["device_peak_gib"] is None else f"  device peak {row['device_peak_gib']:.2f} GiB"
    print(f"{row['config']:>12} {row['stage']:>8} {row['resolution']:>4}px b{row['batch']:<3} {args.precision} "
          f"compile {row['compile_s']:7.1f}s  {row['s_per_step']:8.3f} s/step  {row['images_per_s']:8.2f} img/s  "
          f"{row['gflops_per_step']:9.2f} GFLOP/step  {row['achieved_gflops_per_s']:7.2f} GFLOP/s  "
          f"{peak} of peak  peak RSS {row['peak_rss_mib']:7.0f} MiB{device_memory}", flush=True)
  machine = dict(machine_facts(), load_avg_before=load_before)
  print(f"machine: {machine['cpu_model']}, {machine['cpus']} cores, {machine['devices']} x {machine['device_kind']} "
        f"({machine['backend']}), load average {machine['load_avg_before']} before / {machine['load_avg']} after "
        "(1/5/15 min; other jobs on these cores make the numbers lower bounds)")
  summary = {f"{r['config']}_{r['stage']}_img_per_s": round(r["images_per_s"], 3) for r in rows}
  summary.update(quick=args.quick, machine=machine, rows=rows, peak_rss_mib=round(peak_rss_mib(), 1))
  print("BENCH_JSON " + json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
  main()
