"""Benchmark of the in-domain inversion step (G + E + VGG16 forward/backward + Adam), vmapped over images.

  python bench/bench_inversion.py                      # 256 px official architecture, batch 1, 2, 4, 8
  python bench/bench_inversion.py --quick              # tiny config (seconds)
  python bench/bench_inversion.py --precision_check    # + bfloat16 vs float32 accuracy on tiny and 64 px

Weights are random (VGG16 included): fine for timing, meaningless for quality. Reports per batch size the
seconds per step, images/s and seconds per image at 100 iterations (extrapolated from timed steps after
compilation), FLOPs per step (XLA cost analysis of the compiled step), achieved FLOP/s against this machine's
measured float32 matmul rate, peak RSS, and a naive baseline: one image at a time, a Python loop of jitted
un-vmapped steps. With `--official PATH` (a genforce/idinvert_pytorch checkout, never committed here) the official
PyTorch port's step is timed in the same job (bench/official_pytorch_baseline.py in a subprocess, after the JAX
measurements, so the two never share the cores) and the speed-ups against it are printed. The last line is
`BENCH_JSON {...}`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from idinvert_jax.machine import cpu_model  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from idinvert_jax import export, inversion  # noqa: E402
from idinvert_jax.models import layers  # noqa: E402



def peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB.


def matmul_flops_per_s(n: int = 2048, reps: int = 5) -> float:
  """Measured float32 matmul rate of this machine (best of `reps` n x n x n products)."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
  dot = jax.jit(lambda x, y: jnp.dot(x, y, precision="highest"))
  dot(a, a).block_until_ready()
  best = min(_timed(lambda: dot(a, a).block_until_ready()) for _ in range(reps))
  return 2 * n ** 3 / best


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def make_config(quick: bool, resolution: int):
  if quick:
    from configs import tiny
    return tiny.get_config()
  from configs import common
  return common.get_config(resolution=resolution)


def bench_batch(fns, settings, batch: int, steps: int, images: np.ndarray, flops_per_image=None,
                temp_bytes_per_image=None) -> dict:
  """Seconds per step of the vmapped engine at `batch` images (one device), after compilation.

  FLOPs come from XLA's cost analysis of one compiled step (the chunk is a while loop, whose body cost
  analysis does not multiply by the trip count); vmapped images are independent, so FLOPs scale exactly with
  the batch and later batch sizes reuse `flops_per_image` instead of compiling the step again.
  """
  engine = inversion.Inverter(fns).engine(settings, jax.devices()[:1])
  x = jax.device_put(np.resize(images, (batch,) + images.shape[1:]), engine.batch_sharding)
  m = jax.device_put(np.ones(x.shape[:3] + (1,), np.float32), engine.batch_sharding)
  t0 = time.perf_counter()
  prep = jax.block_until_ready(engine.prepare(x, m))
  state = dict(w=prep["w"], opt_state=prep["opt_state"])
  data = engine.batch(settings, x, prep["feats"], m)
  one = jax.device_put(np.int32(1), engine.replicated)
  state, _ = jax.block_until_ready(engine.run_chunk(state, data, one))  # compile + 1 step
  compile_s = time.perf_counter() - t0
  n = jax.device_put(np.int32(steps), engine.replicated)
  seconds = _timed(lambda: jax.block_until_ready(engine.run_chunk(state, data, n))) / steps
  if flops_per_image is None:
    # Useful FLOPs: traced with every convolution as written (im2col products would count padding zeros).
    with layers.direct_convolutions():
      step_fn = engine._step  # pylint: disable=protected-access
      step = jax.jit(step_fn).lower(engine.variables, state["w"], state["opt_state"], data).compile()
    flops_per_image = _flops(step) / batch
    temp_bytes_per_image = step.memory_analysis().temp_size_in_bytes / batch
  flops = flops_per_image * batch
  return dict(batch=batch, s_per_step=seconds, images_per_s_100it=batch / (100 * seconds),
              s_per_image_100it=100 * seconds / batch, flops_per_step=flops, flops_per_s=flops / seconds,
              compile_and_first_step_s=compile_s, peak_rss_gib=peak_rss_gib(),
              temp_bytes_per_image=temp_bytes_per_image)


def bench_naive(fns, settings, steps: int, image: np.ndarray) -> dict:
  """One image, un-vmapped: a Python loop of a jitted plain step (value_and_grad + optax Adam)."""
  v = fns.variables
  w_pix, w_feat, w_enc = settings.loss_weight_pix, settings.loss_weight_feat, settings.loss_weight_enc
  opt = optax.adam(settings.learning_rate)
  x = jnp.asarray(image[None])
  x_feat = fns.features(v["perceptual"], x) if w_feat else None

  def loss(w):
    rec = fns.synthesize(v["generator"], w)
    total = w_pix * jnp.mean(jnp.square(x - rec))
    if w_feat:
      total += w_feat * jnp.mean(jnp.square(x_feat - fns.features(v["perceptual"], rec)))
    if w_enc:
      total += w_enc * jnp.mean(jnp.square(w - fns.encode(v["encoder"], rec)))
    return total

  @jax.jit
  def step(w, state):
    value, grad = jax.value_and_grad(loss)(w)
    updates, state = opt.update(grad, state, w)
    return optax.apply_updates(w, updates), state, value

  w = fns.encode(v["encoder"], x)
  state = opt.init(w)
  jax.block_until_ready(step(w, state))

  def loop():
    nonlocal w, state
    for _ in range(steps):
      w, state, value = step(w, state)
    jax.block_until_ready(value)

  seconds = _timed(loop) / steps
  return dict(s_per_step=seconds, s_per_image_100it=100 * seconds, images_per_s_100it=1 / (100 * seconds))


def precision_check(resolution_configs, num_images: int = 4, iterations: int = 20) -> list[dict]:
  """bfloat16 vs float32 compute: max |code diff| and final pixel MSE, on synthetic faces."""
  from idinvert_jax.data import synthetic_faces
  rows = []
  for name, config in resolution_configs:
    res = int(config.model.resolution)
    models = export.create_models(config, jax.random.key(0), names=("generator", "encoder", "perceptual"))
    images = synthetic_faces.render(num_images, res, seed=0)[0].astype(np.float32) / 127.5 - 1
    out = {}
    for precision in ("float32", "bfloat16"):
      settings = inversion.InvertSettings(num_iterations=iterations, precision=precision, num_results=0)
      out[precision] = inversion.invert(images, models, settings, progress=False, devices=jax.devices()[:1])
    f32, bf16 = out["float32"], out["bfloat16"]
    rows.append(dict(model=name, resolution=res, iterations=iterations, images=num_images,
                     max_abs_code_diff=float(np.abs(f32.codes - bf16.codes).max()),
                     code_rms=float(np.sqrt(np.mean(f32.codes ** 2))),
                     mse_f32=float(np.mean(f32.losses["pix"])), mse_bf16=float(np.mean(bf16.losses["pix"])),
                     max_abs_rec_diff=float(np.abs(f32.reconstructions - bf16.reconstructions).max()),
                     s_per_image_f32=f32.seconds_per_image, s_per_image_bf16=bf16.seconds_per_image))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny config instead of the official architecture")
  parser.add_argument("--resolution", type=int, default=256)
  parser.add_argument("--batch_sizes", default="1,2,4,8")
  parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement (after compilation)")
  parser.add_argument("--precision", default="float32", choices=inversion.PRECISIONS)
  parser.add_argument("--max_memory_fraction", type=float, default=0.5,
                      help="skip batch sizes whose compiled temp memory exceeds this fraction of free RAM")
  parser.add_argument("--precision_check", action="store_true",
                      help="also compare bfloat16 with float32 on the tiny and 64 px models")
  parser.add_argument("--skip_naive", action="store_true", help="skip the naive per-image JAX loop baseline")
  parser.add_argument("--official", default="",
                      help="path of a genforce/idinvert_pytorch checkout: also time the official PyTorch step "
                           "(and a frozen-weights PyTorch variant) on this machine, same resolution")
  args = parser.parse_args()
  jax.config.update("jax_default_matmul_precision", "float32")

  config = make_config(args.quick, args.resolution)
  res = int(config.model.resolution)
  t0 = time.perf_counter()
  models = export.create_models(config, jax.random.key(0), names=("generator", "encoder", "perceptual"))
  init_s = time.perf_counter() - t0
  fns = inversion.model_fns(models)
  settings = inversion.InvertSettings(precision=args.precision)
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (1, res, res, 3)).astype(np.float32)

  matmul = matmul_flops_per_s()
  machine = dict(cpu=cpu_model(), cores=os.cpu_count(), devices=str(jax.devices()[0].platform),
                 load_avg_1min=os.getloadavg()[0])
  print(f"machine: {machine['cpu']}, {machine['cores']} cores, jax {jax.__version__} on {machine['devices']}; "
        f"1-min load average at start {machine['load_avg_1min']:.1f} (shared machine)")
  print(f"model: {res} px ({'tiny' if args.quick else 'official architecture'}), random weights incl. VGG16 "
        f"(timing only); precision {args.precision}; model init {init_s:.1f} s", flush=True)
  print(f"float32 matmul rate: {matmul / 1e9:.1f} GFLOP/s (2048^3 jnp.dot)", flush=True)

  rows, naive = [], None
  for batch in (int(b) for b in args.batch_sizes.split(",")):
    avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    # Weights and compiled code are shared by all batch sizes; the step's temporaries (XLA's memory analysis of
    # the batch-1 step) grow with the batch.
    extra = rows[0]["temp_bytes_per_image"] * (batch - rows[-1]["batch"]) if rows else 0
    if extra > args.max_memory_fraction * avail:
      print(f"batch {batch}: skipped (estimated memory beyond {args.max_memory_fraction:.0%} of free RAM)")
      continue
    row = bench_batch(fns, settings, batch, args.steps, images,
                      rows[0]["flops_per_step"] / rows[0]["batch"] if rows else None,
                      rows[0]["temp_bytes_per_image"] if rows else None)
    rows.append(row)
    print(f"batch {batch}: {row['s_per_step']:.3f} s/step, {row['s_per_image_100it']:.2f} s/image at 100 it, "
          f"{row['flops_per_step'] / 1e9:.1f} GFLOP/step, {row['flops_per_s'] / 1e9:.1f} GFLOP/s "
          f"({row['flops_per_s'] / matmul:.0%} of matmul), compile+1 step {row['compile_and_first_step_s']:.0f} s, "
          f"peak RSS {row['peak_rss_gib']:.2f} GiB", flush=True)
    if naive is None and not args.skip_naive:  # Right after batch 1, so a cut-short run still has it.
      naive = bench_naive(fns, settings, args.steps, images[0])
      print(f"naive per-image loop: {naive['s_per_step']:.3f} s/step", flush=True)
  official = run_official_baseline(args.official, res, args.steps) if args.official else None
  checks = precision_check([("tiny", make_config(True, 32)), ("64px", _config64())]) if args.precision_check \
      else []

  print()
  print(f"{'batch':>5} {'s/step':>8} {'img/s@100it':>12} {'s/img@100it':>12} {'GFLOP/step':>11} {'GFLOP/s':>8} "
        f"{'%matmul':>8} {'RSS GiB':>8}")
  for r in rows:
    print(f"{r['batch']:>5} {r['s_per_step']:>8.3f} {r['images_per_s_100it']:>12.4f} {r['s_per_image_100it']:>12.2f} "
          f"{r['flops_per_step'] / 1e9:>11.2f} {r['flops_per_s'] / 1e9:>8.1f} {r['flops_per_s'] / matmul:>8.1%} "
          f"{r['peak_rss_gib']:>8.2f}")
  if naive:
    print(f"naive per-image Python loop: {naive['s_per_step']:.3f} s/step = {naive['s_per_image_100it']:.2f} s/image "
          f"at 100 it")
  best = max(rows, key=lambda r: r["images_per_s_100it"]) if rows else None
  if official and best:
    for variant, row in official["rows"].items():
      print(f"PyTorch {variant} step: {row['s_per_iteration']:.3f} s/iteration = {row['s_per_image_100it']:.1f} "
            f"s/image at 100 it -> this engine (batch {best['batch']}) is "
            f"{row['s_per_image_100it'] / best['s_per_image_100it']:.2f}x faster per image")
  for c in checks:
    print(f"bf16 vs f32 [{c['model']}, {c['iterations']} it, {c['images']} images]: max |code diff| "
          f"{c['max_abs_code_diff']:.3g} (code rms {c['code_rms']:.3g}), MSE f32 {c['mse_f32']:.5f} vs bf16 "
          f"{c['mse_bf16']:.5f}, max |rec diff| {c['max_abs_rec_diff']:.3g}, s/image f32 {c['s_per_image_f32']:.2f} "
          f"vs bf16 {c['s_per_image_bf16']:.2f}")
  summary = dict(resolution=res, quick=args.quick, precision=args.precision, machine=machine,
                 matmul_gflops=matmul / 1e9, rows=rows, naive=naive, precision_check=checks,
                 best_s_per_image_100it=best["s_per_image_100it"] if best else None,
                 speedup_vs_naive=(naive["s_per_image_100it"] / best["s_per_image_100it"]) if best and naive
                 else None, official_pytorch=official,
                 speedup_vs_official=(official["rows"]["official"]["s_per_image_100it"] / best["s_per_image_100it"])
                 if best and official and "official" in official["rows"] else None)
  print("BENCH_JSON " + json.dumps(summary, sort_keys=True))


def run_official_baseline(official: str, resolution: int, steps: int) -> dict:
  """official_pytorch_baseline.py in a subprocess (its own threads and memory); returns its BENCH_JSON."""
  import subprocess  # pylint: disable=import-outside-toplevel
  script = Path(__file__).resolve().parent / "official_pytorch_baseline.py"
  proc = subprocess.run([sys.executable, str(script), "--official", official, "--resolution", str(resolution),
                         "--steps", str(steps)], capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("BENCH_JSON ")]
  if proc.returncode or not lines:
    raise SystemExit(f"official PyTorch baseline failed (exit {proc.returncode}); is torch installed (pip install "
                     f"-e '.[test]') and is {official} an idinvert_pytorch checkout?\n{proc.stderr[-2000:]}")
  print("\n".join(l for l in proc.stdout.splitlines() if l.startswith("PyTorch")), flush=True)
  return json.loads(lines[-1][len("BENCH_JSON "):])


def _config64():
  from configs import synthetic64
  return synthetic64.get_config()


if __name__ == "__main__":
  main()
