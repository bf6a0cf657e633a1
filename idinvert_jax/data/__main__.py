"""Data tools. Usage:

  python -m idinvert_jax.data export --path ../shared/data/celeba_crops64_train.npz --subset 4923: --output heldout/
  python -m idinvert_jax.data export --path photos/ --subset -100: --resolution 64 --output last100/
  python -m idinvert_jax.data export-synthetic --num 1000 --resolution 64 --seed 0 --output faces/
  python -m idinvert_jax.data export-synthetic --num 10000 --resolution 64 --output faces64.npz

`export` writes the images of any folder, .txt list or .npz/.npy array (optionally a `--subset` "start:stop" of
it, the same selection as `config.data.subset`) as PNGs named by their index in the whole source (`04923.png`),
plus `index.csv` (file, index, source name), ready for `invert.py` / `evaluate.py --images DIR`. Images are
written as they are, or with `--resolution R` brought to R x R exactly as training does (centre crop + resize with
the `config.data` defaults). E.g. train with `--config.data.subset=:4923` and evaluate on the export of `4923:`.

`export-synthetic`: a folder gets one PNG per image (synthetic_<seed>_<index>.png) plus labels.csv and
labels.json; an .npz gets `images` (uint8 [N, R, R, 3]), one float32 [N] array per attribute, and `indices`.
Every file is written atomically, so an interrupted export never leaves half-written files.
"""
from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path

import numpy as np

from idinvert_jax import exit_codes, files
from idinvert_jax.data import get_data_config, preprocess, sources, synthetic_faces

FAILED_FILE = "failed.txt"  # in the output folder: the images that could not be exported, one reason a line

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


EXPORT_SOURCES = ("auto", "folder", "list", "array")


def export_images(source: sources.ImageSource, output: str | Path, resolution: int | None = None,
                  data_cfg=None) -> tuple[list[Path], list[str]]:
  """Writes every image of `source` as `<output>/<index>.png` (index in the whole source, zero-padded) and
  `<output>/index.csv`; returns (written paths, failure messages of skipped bad images).

  With `resolution`, images are prepared as for training (`data_cfg` resize/resample/min_size_fraction, default
  `get_data_config()`); without, they are written at their own size (RGB, alpha composited on data.background).
  """
  output = Path(output)
  not_folder = output.suffix.lower() in preprocess.IMAGE_SUFFIXES + (".npz", ".npy", ".csv", ".txt")
  if not_folder or (output.exists() and not output.is_dir()):
    raise ValueError(f"{output}: not a folder; give a folder for --output (the images go in as <index>.png)")
  data_cfg = data_cfg or get_data_config()
  whole = len(source.base) if isinstance(source, sources.SubsetSource) else len(source)
  width = max(5, len(str(whole - 1)))
  min_size = None if resolution is None else preprocess.default_min_size(resolution, data_cfg.min_size_fraction)
  written, failures, rows = [], [], []
  output.mkdir(parents=True, exist_ok=True)
  for i in range(len(source)):
    index = sources.base_index(source, i)
    try:
      name, image = source.read(i)
      if resolution is not None:
        image = preprocess.prepare_uint8(image, name, resolution, data_cfg.resize, data_cfg.resample, min_size)
    except preprocess.ImageError as e:
      failures.append(str(e))
      continue
    file_name = f"{index:0{width}d}.png"
    written.append(files.atomic_save_png(output / file_name, image))
    rows.append(f"{file_name},{index},{_csv_field(name)}")
  files.atomic_write_text(output / "index.csv", "\n".join(["file,index,source_name"] + rows) + "\n")
  if failures:  # The exit-code policy: failed inputs are listed in the output folder.
    files.atomic_write_text(output / FAILED_FILE, "".join(f"{message}\n" for message in failures))
  elif (output / FAILED_FILE).exists():
    (output / FAILED_FILE).unlink()
  return written, failures


def _csv_field(text: str) -> str:
  return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def _cli_message(error: Exception) -> str:
  """Source errors name config fields (data.path, ...); on this command line they are flags (--path, ...)."""
  return re.sub(r"(?<![\w.-])data\.(path|npz_key|subset|source)\b", r"--\1", str(error)).splitlines()[0]


def _export(args) -> int:
  cfg = get_data_config()
  cfg.update(dict(source=args.source, path=args.path, npz_key=args.npz_key, subset=args.subset))
  try:
    if args.resolution is not None and args.resolution <= 0:
      raise ValueError(f"--resolution {args.resolution} must be positive (or omit it to keep the images' size)")
    source = sources.open_source(cfg, args.resolution or 64)
    written, failures = export_images(source, args.output, args.resolution, cfg)
  except (ValueError, OSError) as e:  # Missing paths, bad arrays, bad --subset, unwritable output.
    print(f"error: {_cli_message(e)}", file=sys.stderr)
    return exit_codes.NOTHING_DONE
  for message in failures[:10]:
    print(f"skipped: {message}", file=sys.stderr)
  size = f"{args.resolution} px" if args.resolution else "original size"
  print(f"wrote {len(written)} images ({size}) of {source.description} to {args.output}"
        + (f"; skipped {len(failures)} bad images, listed in {Path(args.output) / FAILED_FILE}" if failures else ""))
  if not written and not failures:
    return exit_codes.NOTHING_DONE
  return exit_codes.for_failures(failures)


def _parser() -> argparse.ArgumentParser:
  parser = exit_codes.ArgumentParser(prog="python -m idinvert_jax.data", description="Data tools.")
  commands = parser.add_subparsers(dest="command", required=True)
  defaults = get_data_config()
  images = commands.add_parser(
      "export", help="write (a subset of) a folder, list or .npz/.npy as PNGs for invert.py/evaluate.py --images",
      description="Write the images of a source as <index>.png (index in the whole source, zero-padded to 5+ "
      "digits) plus index.csv (file, index, source name) into a folder. Pass the folder to invert.py or "
      "evaluate.py --images. Bad images are skipped and reported. Example: python -m idinvert_jax.data export "
      "--path ../shared/data/celeba_crops64_train.npz --subset 4923: --output heldout/")
  images.add_argument("--path", required=True,
                      help="the source: a folder (recursive, read in sorted path order), a .txt list of image paths "
                      "(relative to the list) or an .npz/.npy uint8 array [N, H, W, C]")
  images.add_argument("--source", choices=EXPORT_SOURCES, default="auto",
                      help="source type; 'auto' (default) decides from --path: folder, .txt -> list, "
                      ".npz/.npy -> array")
  images.add_argument("--npz_key", default="images", help="array name inside an .npz (default 'images')")
  images.add_argument("--subset", default="",
                      help="a Python slice 'start:stop' of the source's indices, as config.data.subset: "
                      "':4923' (first 4923), '4923:' (the rest), '-100:' (last 100); no step; default: all. "
                      "Write '--subset=-100:' when it starts with '-'")
  images.add_argument("--resolution", type=int, default=None,
                      help=f"bring images to R x R as training does (config.data defaults: resize="
                      f"{defaults.resize!r}, resample={defaults.resample!r}; images with a side under "
                      f"{defaults.min_size_fraction} * R are skipped); default: write them at their own size")
  images.add_argument("--output", required=True,
                      help="folder to write into (created if missing; existing files with the same names are "
                      "replaced, other files are left alone)")
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
  if args.command == "export":
    return _export(args)
  if args.num <= 0:
    print(f"error: --num {args.num} must be positive", file=sys.stderr)
    return exit_codes.NOTHING_DONE
  try:
    path = export_synthetic(args.num, args.resolution, args.seed, args.output, args.start)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return exit_codes.NOTHING_DONE
  print(f"wrote {args.num} synthetic faces ({args.resolution} px, seed {args.seed}) to {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
