"""Times the synthetic-faces renderer: `python bench/synthetic_faces.py [--num 10000] [--resolution 64]`.

Prints the wall-clock seconds of `render(num, resolution, seed)` (labels included) and images per second.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from idinvert_jax.data import synthetic_faces  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--num", type=int, default=10000)
  parser.add_argument("--resolution", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  start = time.perf_counter()
  images, _ = synthetic_faces.render(args.num, args.resolution, args.seed)
  seconds = time.perf_counter() - start
  print(f"render({args.num}, {args.resolution}, seed={args.seed}): {seconds:.2f} s, "
        f"{args.num / seconds:.0f} images/s, {images.nbytes / 2**20:.0f} MiB, cpus={os.cpu_count()}, "
        f"threads={synthetic_faces._THREADS}")  # pylint: disable=protected-access


if __name__ == "__main__":
  main()
