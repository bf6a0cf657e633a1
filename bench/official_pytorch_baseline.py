"""Baseline for bench_inversion.py: the official PyTorch port's in-domain inversion step, timed on this machine.

  python bench/official_pytorch_baseline.py --official /path/to/idinvert_pytorch [--resolution 256] [--steps 3]

Not named bench_*.py: it needs that checkout, so bench/run_all.py does not run it on its own. The official code
is not part of this repository (and never committed): check out genforce/idinvert_pytorch
anywhere and pass its path. Its network classes are built at the official 256-px architecture with random
weights (same shapes, so the same work as the released models; timing only) and the body of the official
`StyleGANInverter.invert` loop (utils/inverter.py) is run for one image, as the official code does:

  official       exactly the official step: G.synthesis(z), F(x) and F(x_rec) (the official loop recomputes the
                 target's features every step), E(x_rec), the three-term loss, backward, torch.optim.Adam; the
                 model weights keep requires_grad=True as in the official code, so weight gradients are computed.
  frozen         the same loss with the weights frozen (requires_grad=False) and F(x) computed once: what a
                 careful PyTorch user would get, as a second, stronger baseline.

Prints seconds per iteration, seconds per image at 100 iterations, torch's thread count and peak RSS; the last
line is `BENCH_JSON {...}` (read by bench_inversion.py --official).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

import make_parity_fixtures as official_models  # noqa: E402  (official class constructors + random init)


def peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build(official: str, resolution: int):
  """Official G (synthesis), E and VGG16-to-conv4_3 nets with random weights, in eval mode."""
  net_lib, enc_lib, vgg_lib = official_models._import_official(official)  # pylint: disable=protected-access
  gen = torch.Generator().manual_seed(0)
  torch.manual_seed(0)
  G = official_models.official_generator(net_lib, dict(
      resolution=resolution, z_dim=512, w_dim=512, mapping_layers=8, fmaps_base=16384, fmaps_max=512,
      truncation_psi=0.7, truncation_layers=8))
  official_models.randomise_generator(G, gen)
  E = official_models.official_encoder(enc_lib, dict(resolution=resolution, w_dim=512, channels_base=64,
                                                     channels_max=1024))
  official_models.randomise_encoder(E, gen)
  F = vgg_lib.VGG16(output_layer_idx=23).eval()  # conv4_3, the official PerceptualModel's default
  return G, E, F


def time_official_steps(G, E, F, resolution: int, steps: int, frozen: bool,
                        lr=0.01, w_feat=5e-5, w_enc=2.0) -> float:
  """Seconds per official inversion iteration for one image (after one warm-up iteration)."""
  for net in (G, E, F):
    for p in net.parameters():
      p.requires_grad_(not frozen)
  num_layers = 2 * (resolution.bit_length() - 2)
  gen = torch.Generator().manual_seed(1)
  x = torch.rand(1, 3, resolution, resolution, generator=gen) * 2 - 1
  with torch.no_grad():
    z = E(x).view(1, num_layers, 512).detach()
    x_feat_once = F(x) if frozen else None
  z.requires_grad = True
  optimizer = torch.optim.Adam([z], lr=lr)

  def iteration():
    x_rec = G.synthesis(z)
    loss = torch.mean((x - x_rec) ** 2)
    x_feat = x_feat_once if frozen else F(x)
    loss = loss + w_feat * torch.mean((x_feat - F(x_rec)) ** 2)
    loss = loss + w_enc * torch.mean((z - E(x_rec).view(1, num_layers, 512)) ** 2)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss)

  iteration()  # warm-up (allocator, oneDNN primitive caches)
  start = time.perf_counter()
  for _ in range(steps):
    iteration()
  return (time.perf_counter() - start) / steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--official", required=True,
                      help="path of a genforce/idinvert_pytorch checkout (outside this repository)")
  parser.add_argument("--resolution", type=int, default=256, help="image size of the official architecture")
  parser.add_argument("--steps", type=int, default=3, help="timed iterations per variant (after one warm-up)")
  parser.add_argument("--variants", default="official,frozen",
                      help="comma-separated subset of: official (exact official step), frozen (weights frozen, "
                           "F(x) once)")
  args = parser.parse_args()
  G, E, F = build(args.official, args.resolution)
  rows = {}
  for variant in args.variants.split(","):
    if variant not in ("official", "frozen"):
      raise SystemExit(f"--variants: unknown variant {variant!r}; use official and/or frozen")
    seconds = time_official_steps(G, E, F, args.resolution, args.steps, frozen=variant == "frozen")
    rows[variant] = dict(s_per_iteration=seconds, s_per_image_100it=100 * seconds)
    print(f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads), {variant:8s}: {seconds:.3f} s/iteration, "
          f"{100 * seconds:.1f} s/image at 100 iterations", flush=True)
  summary = dict(torch=torch.__version__, threads=torch.get_num_threads(), resolution=args.resolution,
                 steps=args.steps, rows=rows, peak_rss_gib=peak_rss_gib(), load_avg_1min=os.getloadavg()[0])
  print(f"peak RSS {summary['peak_rss_gib']:.2f} GiB")
  print("BENCH_JSON " + json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
  main()
