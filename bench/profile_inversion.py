"""Where the inversion step's time goes: a per-layer profile of one compiled step (forward / backward per model).

  python bench/profile_inversion.py                    # 256 px official architecture, batch 4
  python bench/profile_inversion.py --quick --batch 2  # tiny config (seconds)

Runs the engine's compiled step (the one bench/bench_inversion.py times) under `jax.profiler`, reads the XLA
kernels' durations from the trace and attributes each kernel to the model layer in its HLO `op_name` (the Flax
module path), split into forward and backward (`transpose(...)` in the op name). Prints the top groups and the
share of the step each takes, then the same totals per model. Random weights: timing only.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_inversion  # noqa: E402  (bench/bench_inversion.py)
from idinvert_jax.machine import cpu_model  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from idinvert_jax import export, inversion  # noqa: E402

_MODELS = (("Generator", "G"), ("Encoder", "E"), ("VGG16", "VGG"))


def kernel_op_names(hlo_text: str) -> dict[str, str]:
  """Instruction name -> op_name metadata for every instruction of the compiled HLO module."""
  return dict(re.findall(r"%(\S+) = [^\n]*?op_name=\"([^\"]+)\"", hlo_text))


def group_of(op_name: str) -> str:
  """'G bwd layer12', 'E fwd block3', 'VGG fwd conv4_3', 'other fwd pad', ... from an HLO op_name path."""
  direction = "bwd" if "transpose(" in op_name else "fwd"
  # Path parts without their transformation wrappers: 'jvp(VGG16Features)' -> 'VGG16Features'.
  parts = [re.sub(r"^(?:[\w<>]+\()+|\)+$", "", p) for p in op_name.split("/")]
  for marker, short in _MODELS:
    at = [i for i, p in enumerate(parts) if p.startswith(marker)]
    if at:
      inner = parts[at[0] + 1:-1]
      layer = next((p for p in inner if re.match(r"(layer|block|conv|output|dense|epilogue|mapping)", p)),
                   inner[-1] if inner else parts[-1])
      return f"{short} {direction} {layer}"
  return f"other {direction} {parts[-1]}"


def profile(fn, steps: int) -> dict[str, float]:
  """Total microseconds per kernel name over `steps` calls of `fn` (already compiled and warm)."""
  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp, create_perfetto_trace=True)
    for _ in range(steps):
      jax.block_until_ready(fn())
    jax.profiler.stop_trace()
    trace = sorted(Path(tmp).rglob("*.trace.json.gz"))[-1]
    events = json.load(gzip.open(trace))
  events = events["traceEvents"] if isinstance(events, dict) else events
  totals = collections.Counter()
  for e in events:  # XLA:CPU kernel events carry their HLO instruction in args.hlo_op.
    op = e.get("args", {}).get("hlo_op")
    if e.get("ph") == "X" and op and not e["name"].startswith("end:"):
      totals[op] += e["dur"]
  return totals


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny config instead of the official architecture")
  parser.add_argument("--resolution", type=int, default=256)
  parser.add_argument("--batch", type=int, default=4, help="images per step")
  parser.add_argument("--steps", type=int, default=2, help="profiled steps (after one warm-up step)")
  parser.add_argument("--top", type=int, default=30, help="rows of the per-layer table")
  parser.add_argument("--kernels", type=int, default=0, help="also list this many slowest single kernels")
  args = parser.parse_args()
  jax.config.update("jax_default_matmul_precision", "float32")

  config = bench_inversion.make_config(args.quick, args.resolution)
  res = int(config.model.resolution)
  models = export.create_models(config, jax.random.key(0), names=("generator", "encoder", "perceptual"))
  settings = inversion.InvertSettings()
  engine = inversion.Inverter(models).engine(settings, jax.devices()[:1])
  images = np.random.default_rng(0).uniform(-1, 1, (args.batch, res, res, 3)).astype(np.float32)
  x = jax.device_put(images, engine.batch_sharding)
  m = jax.device_put(np.ones(x.shape[:3] + (1,), np.float32), engine.batch_sharding)
  prep = engine.prepare(x, m)
  state = dict(w=prep["w"], opt_state=prep["opt_state"])
  data = engine.batch(settings, x, prep["feats"], m)
  compiled = engine.step.lower(state, data).compile()
  jax.block_until_ready(compiled(state, data))
  start = time.perf_counter()
  jax.block_until_ready(compiled(state, data))
  step_s = time.perf_counter() - start

  totals = profile(lambda: compiled(state, data), args.steps)
  names = kernel_op_names(compiled.as_text())
  groups, models_ms = collections.Counter(), collections.Counter()
  for kernel, us in totals.items():
    group = group_of(names.get(kernel, kernel))
    groups[group] += us / args.steps / 1e3
    models_ms[" ".join(group.split()[:2])] += us / args.steps / 1e3
  kernel_ms = sum(groups.values())

  # Independent kernels run concurrently on the CPU's threads: shares are of the summed kernel time.
  print(f"machine: {cpu_model()}; {res} px, batch {args.batch}; step {step_s:.3f} s untraced; kernel time "
        f"summed over threads {kernel_ms / 1e3:.3f} s")
  print(f"{'ms/step':>9} {'share':>6}  group")
  for group, ms in groups.most_common(args.top):
    print(f"{ms:>9.1f} {ms / kernel_ms:>6.1%}  {group}")
  if args.kernels:
    shapes = dict(re.findall(r"%(\S+) = (\S+) ", compiled.as_text()))
    print(f"slowest kernels:")
    for kernel, us in totals.most_common(args.kernels):
      print(f"{us / args.steps / 1e3:>9.1f}  {kernel:28s} {shapes.get(kernel, '?'):30s} {names.get(kernel, '?')}")
  print("per model and direction:")
  for group, ms in models_ms.most_common():
    print(f"{ms:>9.1f} {ms / kernel_ms:>6.1%}  {group}")


if __name__ == "__main__":
  main()
