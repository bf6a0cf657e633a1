"""bfloat16 against float32 compute: how far the generator's images move, and what it costs an inversion.

  python bench/bench_precision.py            # G(w) at 256 px (official architecture) + 100 in-domain steps, demo model
  python bench/bench_precision.py --quick    # G(w) at 64 px + 20 steps

1. G(w): the official `styleganinv_ffhq256` architecture with RANDOM weights (no trained 256-px weights are
   shipped; random ones exercise the same layers and value ranges), codes from its mapping network; the same
   variables and codes run in float32 and in bfloat16 (weights and activations cast, normalisation statistics in
   float32, as idinvert_jax/precision.py does in training). Prints max and mean |G_bf16(w) - G_f32(w)| on the
   [-1, 1] image scale and the PSNR between the two renderings.
2. Inversion: the shipped demo checkpoint (assets/demo_checkpoint, 64 px) inverts the six held-out example faces
   (assets/examples) with the official in-domain settings, once per precision: PSNR of the reconstructions
   against the inputs, and the codes' difference.
Both on this machine's CPU (bfloat16 runs through XLA:CPU; on TPU/GPU the numbers would differ by rounding only).
Last line: `BENCH_JSON {...}`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from idinvert_jax import precision  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def generator_difference(resolution: int, num_codes: int, seed: int = 0) -> dict:
  """max / mean |G_bf16(w) - G_f32(w)| for random official-architecture weights and codes from its mapping."""
  from configs import common  # pylint: disable=import-outside-toplevel
  from idinvert_jax import export  # pylint: disable=import-outside-toplevel
  from idinvert_jax.metrics import reconstruction  # pylint: disable=import-outside-toplevel
  from idinvert_jax.models import generator as generator_lib  # pylint: disable=import-outside-toplevel
  config = common.get_config(resolution=resolution)
  models = export.create_models(config, jax.random.PRNGKey(seed), names=("generator",))
  G, variables = models.generator, models.generator_vars
  z = jax.random.normal(jax.random.PRNGKey(seed + 1), (num_codes, G.z_dim), jnp.float32)
  wp = generator_lib.mapping(G, variables, z)
  render = jax.jit(lambda v, w: generator_lib.synthesize(G, v, w).astype(jnp.float32))
  start = time.perf_counter()
  f32 = np.asarray(render(variables, wp))
  bf16 = np.asarray(render(precision.cast_floating(variables, jnp.bfloat16), wp.astype(jnp.bfloat16)))
  diff = np.abs(bf16 - f32)
  return dict(resolution=resolution, codes=num_codes, max_abs_diff=float(diff.max()),
              mean_abs_diff=float(diff.mean()), psnr_bf16_vs_f32=float(np.mean(reconstruction.psnr(f32, bf16))),
              image_abs_mean=float(np.abs(f32).mean()), seconds=time.perf_counter() - start)


def inversion_difference(iterations: int) -> dict:
  """PSNR after `iterations` in-domain steps on the demo checkpoint's six example faces, float32 vs bfloat16."""
  from idinvert_jax import demo, export, inversion  # pylint: disable=import-outside-toplevel
  from idinvert_jax.data import load_images  # pylint: disable=import-outside-toplevel
  from idinvert_jax.metrics import reconstruction  # pylint: disable=import-outside-toplevel
  models = export.load_models(demo.DEFAULT_CHECKPOINT)
  paths = sorted(demo.DEFAULT_IMAGES.glob("*.png"))
  _, images, failures = load_images(paths, int(models.config.model.resolution))
  if failures:
    raise SystemExit(f"bench_precision: could not read {failures}")
  out = {}
  for name in precision.PRECISIONS:
    settings = inversion.InvertSettings(num_iterations=iterations, num_results=0, precision=name)
    start = time.perf_counter()
    result = inversion.invert(images, models, settings, progress=False, devices=jax.devices()[:1])
    out[name] = dict(psnr=np.asarray(reconstruction.psnr(images, result.reconstructions)),
                     codes=result.codes, seconds=time.perf_counter() - start)
  f32, bf16 = out["float32"], out["bfloat16"]
  return dict(images=len(images), iterations=iterations, psnr_f32=[round(float(p), 2) for p in f32["psnr"]],
              psnr_bf16=[round(float(p), 2) for p in bf16["psnr"]], mean_psnr_f32=float(f32["psnr"].mean()),
              mean_psnr_bf16=float(bf16["psnr"].mean()),
              max_abs_code_diff=float(np.abs(f32["codes"] - bf16["codes"]).max()),
              code_rms=float(np.sqrt(np.mean(f32["codes"] ** 2))), seconds_f32=f32["seconds"],
              seconds_bf16=bf16["seconds"])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="64 px generator and 20 inversion steps")
  parser.add_argument("--resolution", type=int, default=None, help="generator resolution (default 256; 64 quick)")
  parser.add_argument("--codes", type=int, default=4, help="codes rendered by the generator comparison")
  parser.add_argument("--iterations", type=int, default=None, help="in-domain steps (default 100; 20 quick)")
  args = parser.parse_args(argv)
  resolution = args.resolution or (64 if args.quick else 256)
  iterations = args.iterations or (20 if args.quick else 100)
  from idinvert_jax.machine import cpu_model  # pylint: disable=import-outside-toplevel
  print(f"machine: {cpu_model()}, {os.cpu_count()} cores, jax {jax.__version__} on "
        f"{jax.devices()[0].device_kind}", flush=True)
  g = generator_difference(resolution, args.codes)
  print(f"G(w) at {g['resolution']} px, {g['codes']} codes, random official-architecture weights: max |bf16 - f32| "
        f"{g['max_abs_diff']:.4f}, mean {g['mean_abs_diff']:.5f} (images in [-1, 1], mean |x| "
        f"{g['image_abs_mean']:.3f}); PSNR(bf16 vs f32) {g['psnr_bf16_vs_f32']:.1f} dB", flush=True)
  inv = inversion_difference(iterations)
  print(f"demo checkpoint, {inv['images']} example faces, {inv['iterations']} in-domain steps: PSNR float32 "
        f"{inv['mean_psnr_f32']:.2f} dB {inv['psnr_f32']}, bfloat16 {inv['mean_psnr_bf16']:.2f} dB "
        f"{inv['psnr_bf16']}; max |code diff| {inv['max_abs_code_diff']:.3g} (code rms {inv['code_rms']:.3g})",
        flush=True)
  summary = dict(g_max_abs_diff=g["max_abs_diff"], g_mean_abs_diff=g["mean_abs_diff"],
                 inversion_psnr_f32=inv["mean_psnr_f32"], inversion_psnr_bf16=inv["mean_psnr_bf16"], quick=args.quick,
                 generator=g, inversion=inv)
  print("BENCH_JSON " + json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
  main()
