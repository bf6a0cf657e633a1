"""Data tools. Usage:

  python -m idinvert_jax.data export-synthetic --num 1000 --resolution 64 --seed 0 --output faces/
  python -m idinvert_jax.data export-synthetic --num 10000 --resolution 64 --output faces64.npz

A folder gets one PNG per image (synthetic_<seed>_<index>.png) plus labels.csv and labels.json; an .npz gets
`images` (uint8 [N, R, R, 3]), one float32 [N] array per attribute, and `indices`. Every file is written
atomically, so an interrupted export never leaves half-written files.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

from idinvert_jax import files
from idinvert_jax.data import synthetic_faces

_EXPORT_CHUNK = 500  # Images rendered per step: bounds memory for large exports.


def export_synthetic(num: int, resolution: int, seed: int, output: str | Path, start: int = 0) -> Path:
  """Renders images start..start+num-1 and writes them to a folder (PNGs + labels) or an .npz file."""
  output = Path(output)
  names = list(synthetic_faces.ATTRIBUTES)
  images, labels = [], {name: [] for name in names}
  to_npz = output.suffix.lower() == ".npz"
  rows = []
  for begin in range(start, start + num, _EXPORT_CHUNK):
    count = min(_EXPORT_CHUNK, start + num - begin)
    chunk, chunk_labels = synthetic_faces.render(count, resolution, seed, start=begin)
    for name in names:
      labels[name].append(chunk_labels[name])
    if to_npz:
      images.append(chunk)
      continue
    for offset, image in enumerate(chunk):
      file_name = f"synthetic_{seed}_{begin + offset:06d}.png"
      files.atomic_save_png(output / file_name, image)
      rows.append([file_name] + [f"{float(chunk_labels[name][offset]):.6g}" for name in names])
  labels = {name: np.concatenate(values) if values else np.zeros(0, np.float32) for name, values in labels.items()}
  indices = np.arange(start, start + num, dtype=np.int64)
  if to_npz:
    buffer = io.BytesIO()
    stacked = np.concatenate(images) if images else np.zeros((0, resolution, resolution, 3), np.uint8)
    np.savez(buffer, images=stacked, indices=indices, **labels)
    return files.atomic_write_bytes(output, buffer.getvalue())
  output.mkdir(parents=True, exist_ok=True)
  files.atomic_write_text(output / "labels.csv", "\n".join([",".join(["file"] + names)] + [",".join(r) for r in rows])
                          + "\n")
  files.atomic_write_json(output / "labels.json", {
      "seed": seed, "resolution": resolution, "start": start,
      "attributes": {name: attr._asdict() for name, attr in synthetic_faces.ATTRIBUTES.items()},
      "files": [row[0] for row in rows],
      "labels": {name: [float(v) for v in labels[name]] for name in names},
  })
  return output


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m idinvert_jax.data", description="Data tools.")
  commands = parser.add_subparsers(dest="command", required=True)
  export = commands.add_parser(
      "export-synthetic", help="render synthetic faces to PNGs + labels or to an .npz",
      description="Render the procedural synthetic-faces dataset (attributes: "
      + ", ".join(synthetic_faces.ATTRIBUTES) + "; see idinvert_jax/data/synthetic_faces.py).")
  export.add_argument("--num", type=int, required=True, help="number of images to render (> 0)")
  export.add_argument("--resolution", type=int, default=64,
                      help=f"image side in pixels, {synthetic_faces.MIN_RESOLUTION}..{synthetic_faces.MAX_RESOLUTION} "
                      "(default 64)")
  export.add_argument("--seed", type=int, default=0,
                      help="dataset seed; image i depends only on (seed, i) (default 0)")
  export.add_argument("--start", type=int, default=0,
                      help="index of the first image, to export a later slice of the same dataset (default 0)")
  export.add_argument("--output", required=True,
                      help="a folder (gets synthetic_<seed>_<index>.png, labels.csv, labels.json) or a file "
                      "ending in .npz (gets images, indices and one array per attribute)")
  return parser


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  if args.num <= 0:
    print(f"error: --num {args.num} must be positive", file=sys.stderr)
    return 2
  try:
    path = export_synthetic(args.num, args.resolution, args.seed, args.output, args.start)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.num} synthetic faces ({args.resolution} px, seed {args.seed}) to {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
