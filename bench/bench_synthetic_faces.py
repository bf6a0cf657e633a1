"""Times the synthetic-faces renderer (the embedded training data).

  python bench/bench_synthetic_faces.py [--num 10000] [--resolution 64]
  python bench/bench_synthetic_faces.py --quick          # 1000 images (bench/run_all.py)

Prints the wall-clock and CPU seconds of `render(num, resolution, seed)` (labels included), images per second,
the array size, peak RSS and the machine; the last line is `BENCH_JSON {...}`.
"""
import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from idinvert_jax.machine import cpu_model  # noqa: E402

from idinvert_jax.data import synthetic_faces  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num", type=int, default=None, help="images to render (default 10000; 1000 with --quick)")
  parser.add_argument("--resolution", type=int, default=64, help="image size in pixels")
  parser.add_argument("--seed", type=int, default=0, help="dataset seed (training uses 0)")
  parser.add_argument("--quick", action="store_true", help="1000 images instead of 10000")
  args = parser.parse_args()
  num = args.num or (1000 if args.quick else 10000)
  start, cpu_start = time.perf_counter(), time.process_time()
  images, _ = synthetic_faces.render(num, args.resolution, args.seed)
  seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
  rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  threads = synthetic_faces._THREADS  # pylint: disable=protected-access
  print(f"machine: {cpu_model()}, {os.cpu_count()} cores, 1-min load average {os.getloadavg()[0]:.1f}")
  print(f"render({num}, {args.resolution}, seed={args.seed}): {seconds:.2f} s wall, {cpu_seconds:.2f} s CPU, "
        f"{num / seconds:.0f} images/s, {images.nbytes / 2**20:.0f} MiB array, peak RSS {rss_mib:.0f} MiB, "
        f"{threads} threads")
  print("BENCH_JSON " + json.dumps(dict(num=num, resolution=args.resolution, seconds=round(seconds, 3),
                                        cpu_seconds=round(cpu_seconds, 3), images_per_s=round(num / seconds, 1),
                                        peak_rss_mib=round(rss_mib), cpu=cpu_model(), cores=os.cpu_count())))


if __name__ == "__main__":
  main()
