"""Training throughput per stage: images/s, compiled-step FLOPs (cost_analysis) and achieved FLOP/s.

  python bench/bench_training.py            # tiny (32 px), synthetic64 (64 px), ffhq256 (256 px, 2 steps)
  python bench/bench_training.py --quick    # tiny and 64 px only, fewer steps

Uses random weights and an in-memory batch (no data pipeline cost), one mesh over all local devices (on a CPU
machine: 1 device unless XLA_FLAGS sets more). The encoder stage runs without VGG16 weights (lambda_vgg = 0),
as training does when none are configured. On a shared machine other jobs compete for the cores: the numbers
are lower bounds. Last line: `BENCH_JSON {...}`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from idinvert_jax import training  # noqa: E402
from idinvert_jax.training import arrays  # noqa: E402
from idinvert_jax.training import mesh as mesh_lib  # noqa: E402


def load_config(name: str):
  if name == "tiny":
    from configs import tiny as module
  elif name == "synthetic64":
    from configs import synthetic64 as module
  else:
    from configs import ffhq256 as module
  return module.get_config()


def bench_stage(config_name: str, stage: str, batch_size: int, steps: int) -> dict:
  """Compiles one stage's step, runs one warm-up step, then times `steps` steps."""
  config = load_config(config_name)
  config.train[stage].batch_size = batch_size
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
  return dict(config=config_name, stage=stage, resolution=res, batch=batch_size, steps=steps,
              devices=mesh.devices.size, compile_s=compile_s, s_per_step=seconds / steps,
              images_per_s=batch_size * steps / seconds, gflops_per_step=stats["flops"] / 1e9,
              achieved_gflops_per_s=stats["flops"] * steps / seconds / 1e9,
              temp_mib=stats.get("temp_size_in_bytes", 0) / 2**20)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny and 64 px only, fewer steps")
  args = parser.parse_args()
  plan = [("tiny", 8, 3 if args.quick else 10), ("synthetic64", 8, 2 if args.quick else 5)]
  if not args.quick:
    plan.append(("ffhq256", 4, 2))
  rows = []
  for config_name, batch, steps in plan:
    for stage in training.STAGES:
      row = bench_stage(config_name, stage, batch, steps)
      rows.append(row)
      print(f"{row['config']:>12} {row['stage']:>8} {row['resolution']:>4}px b{row['batch']:<3} "
            f"compile {row['compile_s']:7.1f}s  {row['s_per_step']:8.3f} s/step  {row['images_per_s']:8.2f} img/s  "
            f"{row['gflops_per_step']:9.2f} GFLOP/step  {row['achieved_gflops_per_s']:7.2f} GFLOP/s", flush=True)
  machine = dict(platform=platform.platform(), cpus=os.cpu_count(), devices=jax.device_count(),
                 backend=jax.default_backend(), load_avg_1min=os.getloadavg()[0])
  print(f"machine: {machine} (other jobs share these cores: numbers are lower bounds)")
  summary = {f"{r['config']}_{r['stage']}_img_per_s": round(r["images_per_s"], 3) for r in rows}
  summary.update(quick=args.quick, machine=machine, rows=rows)
  print("BENCH_JSON " + json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
  main()
