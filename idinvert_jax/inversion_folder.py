"""The invert.py output folder: its layout, the one writer (the inversion job) and the one reader (edit.py and
the demo).

Layout (the official `invert.py` one, plus metrics and resumability):

  inverted_codes.npy       float32 [N, L, D], the inverted codes of the loaded images in input order
  encoded_codes.npy        float32 [N, L, D], E(x) (when the checkpoint has an encoder)
  image_list.txt           the N source paths, one per line, in the order of the codes
  <name>_ori.png           the input as the model saw it (resized)
  <name>_enc.png           G(E(x))
  <name>_step<k>.png       G(w) after k steps (only when num_results > 1; k with 6 digits)
  <name>_inv.png           G(inverted code)
  metrics.csv              per image: MSE, PSNR, SSIM, perceptual distance, seconds (+ the encoder's MSE/PSNR)
  index.html               original | encoder | snapshots | final, side by side, and the metrics table
  failed.txt               inputs that failed (unreadable, no face found with align, or a non-finite result), with
                           the reason (only when there are any; also listed in index.html; a rerun retries them)
  aligned/                 with align: the FFHQ-aligned faces that were inverted, and alignment.json
  .parts/                  per-batch results (batch_<i>.npz) and the settings they were made with (settings.json);
                           a rerun on the same folder skips images already done

<name> is the source file's stem, made unique with _2, _3, ... in input order (`unique_names`). Every file is
written atomically, and a batch's .parts file is written last, so a killed run loses at most the batch in flight.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from idinvert_jax import files

CODES_FILE = "inverted_codes.npy"
ENCODED_FILE = "encoded_codes.npy"
LIST_FILE = "image_list.txt"
METRICS_FILE = "metrics.csv"
INDEX_FILE = "index.html"
FAILED_FILE = "failed.txt"
ALIGNED_DIR = "aligned"
PARTS_DIR = ".parts"
SETTINGS_FILE = "settings.json"


class FolderError(ValueError):
  """A folder whose files do not fit together or do not fit the generator."""


def unique_names(paths: Sequence[str | Path]) -> list[str]:
  """File stems, made unique with a _2, _3, ... suffix in order (two folders may hold the same file name)."""
  seen: dict[str, int] = {}
  names = []
  for path in paths:
    stem = Path(path).stem
    seen[stem] = seen.get(stem, 0) + 1
    names.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
  return names


def image_file(name: str, kind: str | int) -> str:
  """`<name>_<kind>.png`; kind 'ori' | 'enc' | 'inv', or a step number (`<name>_step000020.png`)."""
  return f"{name}_step{kind:06d}.png" if isinstance(kind, int) else f"{name}_{kind}.png"


# ----------------------------------------------------------------------------------------------------------
# Writing (the inversion job).


def write_images(folder: Path, name: str, original: np.ndarray, encoder_output: np.ndarray | None,
                 snapshots: Sequence[tuple[int, np.ndarray]], inverted: np.ndarray) -> None:
  """One image's PNGs ([H, W, 3] in [-1, 1]): the input, G(E(x)) (if any), the snapshots, the result."""
  files.atomic_save_png(folder / image_file(name, "ori"), original)
  if encoder_output is not None:
    files.atomic_save_png(folder / image_file(name, "enc"), encoder_output)
  for step, image in snapshots:
    files.atomic_save_png(folder / image_file(name, step), image)
  files.atomic_save_png(folder / image_file(name, "inv"), inverted)


def read_fingerprint(folder: Path) -> dict | None:
  """What the stored parts were made with (see `write_fingerprint`), or None for a fresh folder."""
  path = folder / PARTS_DIR / SETTINGS_FILE
  return json.loads(path.read_text()) if path.exists() else None


def write_fingerprint(folder: Path, fingerprint: dict) -> Path:
  return files.atomic_write_json(folder / PARTS_DIR / SETTINGS_FILE, fingerprint)


def clear_parts(folder: Path) -> None:
  """Forgets every finished batch (--overwrite)."""
  for part in (folder / PARTS_DIR).glob("batch_*.npz"):
    part.unlink()


def save_part(folder: Path, index: int, record: dict) -> Path:
  """One finished batch: {field: [n, ...] array}, with the source paths under 'paths'. Written last."""
  buf = io.BytesIO()
  np.savez(buf, **{k: np.asarray(v) for k, v in record.items()})
  return files.atomic_write_bytes(folder / PARTS_DIR / f"batch_{index:05d}.npz", buf.getvalue())


def load_parts(folder: Path) -> dict[str, dict]:
  """source path -> that image's stored results, over all finished batches."""
  done = {}
  for part in sorted((folder / PARTS_DIR).glob("batch_*.npz")):
    with np.load(part, allow_pickle=False) as data:
      record = {k: data[k] for k in data.files}
    for i, source in enumerate(record["paths"]):
      done[str(source)] = {k: v[i] for k, v in record.items()}
  return done


def next_part_index(folder: Path) -> int:
  indices = [int(p.stem.split("_")[1]) for p in (folder / PARTS_DIR).glob("batch_*.npz")]
  return max(indices, default=-1) + 1


def write_summary(folder: Path, names: Sequence[str], sources: Sequence[str], rows: Sequence[dict],
                  save_steps: Sequence[int], settings, has_perceptual: bool,
                  outside: Sequence[bool | None] | None = None, domain_note: str = "", notes: Sequence[str] = (),
                  failed: Sequence[tuple[str, str]] = ()) -> None:
  """The folder-wide files from every done image's stored results (`rows`, in input order): the codes, the list,
  metrics.csv and index.html. `settings`: the InvertSettings the images were inverted with; `outside`: each
  image's out-of-domain verdict (None: no calibration); `domain_note` and `notes` (input policy) go on the page,
  and so do the `failed` inputs (also when no image is done)."""
  if not rows:
    if failed:
      _write_html(folder / INDEX_FILE, [], [], save_steps, settings, False, has_perceptual, [], domain_note, notes,
                  failed)
    return
  files.atomic_save_npy(folder / CODES_FILE, np.stack([r["codes"] for r in rows]).astype(np.float32))
  if all(not np.isnan(r["encoder_codes"]).all() for r in rows):
    files.atomic_save_npy(folder / ENCODED_FILE, np.stack([r["encoder_codes"] for r in rows]).astype(np.float32))
  files.atomic_write_text(folder / LIST_FILE, "".join(f"{source}\n" for source in sources))
  outside = list(outside) if outside is not None else [None] * len(names)
  _write_metrics_csv(folder / METRICS_FILE, names, sources, rows, has_perceptual, outside)
  _write_html(folder / INDEX_FILE, names, rows, save_steps, settings, has_encoder=(folder / ENCODED_FILE).exists(),
              has_perceptual=has_perceptual, outside=outside, domain_note=domain_note, notes=notes,
              failed=failed)


def write_failed(folder: Path, failed: Sequence[tuple[str, str]]) -> None:
  """failed.txt lists the failed inputs (unreadable, no face, non-finite result) and why; removed when none."""
  path = folder / FAILED_FILE
  if failed:
    files.atomic_write_text(path, "".join(f"{p}\t{reason}\n" for p, reason in failed))
  elif path.exists():
    path.unlink()


def _fmt(value) -> str:
  value = float(value)
  return "" if math.isnan(value) else f"{value:.6g}"


# metrics.csv's `domain` column: no calibration, inside, outside the model's domain.
DOMAIN_LABELS = {None: "", False: "in", True: "outside"}


def _write_metrics_csv(path: Path, names, sources, rows, has_perceptual: bool, outside) -> None:
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(["name", "path", "mse", "psnr", "ssim", "perceptual", "seconds", "encoder_mse", "encoder_psnr",
                   "domain", "note"])
  note = "" if has_perceptual else "perceptual blank: no VGG16 weights (set config.model.perceptual.weights)"
  for name, source, r, o in zip(names, sources, rows, outside):
    writer.writerow([name, source, _fmt(r["mse"]), _fmt(r["psnr"]), _fmt(r["ssim"]), _fmt(r["perceptual"]),
                     _fmt(r["seconds"]), _fmt(r["enc_mse"]), _fmt(r["enc_psnr"]), DOMAIN_LABELS[o], note])
  files.atomic_write_text(path, buf.getvalue())


def _write_html(path: Path, names, rows, save_steps, settings, has_encoder: bool, has_perceptual: bool,
                outside, domain_note: str = "", notes: Sequence[str] = (),
                failed: Sequence[tuple[str, str]] = ()) -> None:
  from idinvert_jax import report  # pylint: disable=import-outside-toplevel
  text = (f"method {settings.method}, {settings.num_iterations} iterations, lr {settings.learning_rate}, "
          f"loss weights pix {settings.loss_weight_pix} / feat {settings.loss_weight_feat} / enc "
          f"{settings.loss_weight_enc}, precision {settings.precision}. MSE on the [-1, 1] scale, PSNR in dB.")
  if not has_perceptual:
    text += " No VGG16 weights: the perceptual term and distance are off."
  text = "\n\n".join([text, *notes] + ([domain_note] if domain_note else []))
  header = ["name", "MSE", "PSNR", "SSIM", "perceptual", "s/image", "encoder MSE", "encoder PSNR", "domain"]
  table_rows = [[n, _fmt(r["mse"]), _fmt(r["psnr"]), _fmt(r["ssim"]), _fmt(r["perceptual"]), _fmt(r["seconds"]),
                 _fmt(r["enc_mse"]), _fmt(r["enc_psnr"]), DOMAIN_LABELS[o]] for n, r, o in zip(names, rows, outside)]
  sections = [report.Section("Summary", text=text, table=(header, table_rows))]
  if failed:
    sections.append(report.Section(f"Failed inputs ({len(failed)}, also in {FAILED_FILE})",
                                   text="Not saved; a rerun on this folder tries them again.",
                                   table=(["input", "reason"], [[p, reason] for p, reason in failed])))
  for name, r, o in zip(names, rows, outside):
    images = [(image_file(name, "ori"), "original")]
    if has_encoder:
      images.append((image_file(name, "enc"), "encoder"))
    images += [(image_file(name, s), f"step {s}") for s in save_steps]
    images.append((image_file(name, "inv"), "inverted"))
    warning = (f"WARNING: outside the model's domain (PSNR {float(r['psnr']):.1f} dB is below the threshold): the "
               "reconstruction stays poor, so this code and its edits are unreliable." if o else "")
    sections.append(report.Section(name, text=warning, images=images, warning=bool(o)))
  report.write_html(path, "In-domain GAN inversion", sections)


# ----------------------------------------------------------------------------------------------------------
# Reading.


@dataclasses.dataclass
class InvertedImages:
  """An invert.py folder's images in code order.

  names: the <name> of each image's PNGs.      sources: the input paths (image_list.txt).
  codes: float32 [N, L, D] inverted W+ codes.   originals: float32 [N, R, R, 3] in [-1, 1] (the _ori.png files
  loaded at the requested resolution), or None when not asked for or when any is missing.
  """
  names: list[str]
  sources: list[str]
  codes: np.ndarray
  originals: np.ndarray | None = None


def read(folder: str | Path, num_layers: int | None = None, w_dim: int | None = None,
         resolution: int | None = None) -> InvertedImages:
  """Reads an invert.py folder; checks the codes against the generator's [L, D] when given, and loads the
  originals at `resolution` when given (resized as invert.py does)."""
  folder = Path(folder)
  codes_path, list_path = folder / CODES_FILE, folder / LIST_FILE
  for path in (codes_path, list_path):
    if not path.is_file():
      raise FileNotFoundError(f"{path} does not exist; pass a folder written by invert.py (it holds "
                              f"{CODES_FILE} and {LIST_FILE}).")
  codes = np.load(codes_path, allow_pickle=False).astype(np.float32)
  sources = [line.strip() for line in list_path.read_text().splitlines() if line.strip()]
  names = unique_names(sources)
  if num_layers is not None and (codes.ndim != 3 or codes.shape[1:] != (num_layers, w_dim)):
    raise FolderError(f"{codes_path} holds codes of shape {codes.shape}; this generator needs [N, {num_layers}, "
                      f"{w_dim}] - invert with the same checkpoint.")
  if len(names) != codes.shape[0]:
    raise FolderError(f"{list_path} lists {len(names)} images but {codes_path} has {codes.shape[0]} codes; "
                      "re-run invert.py into a fresh folder.")
  originals = None
  if resolution is not None and all((folder / image_file(name, "ori")).is_file() for name in names):
    from idinvert_jax import data  # pylint: disable=import-outside-toplevel
    originals = np.stack([data.load_image(folder / image_file(name, "ori"), resolution) for name in names])
  return InvertedImages(names=names, sources=sources, codes=codes, originals=originals)


def read_pngs(folder: str | Path, names: Sequence[str], kind: str | int) -> np.ndarray | None:
  """The `kind` PNGs ('ori' | 'enc' | 'inv' | a step) of `names` as uint8 [N, H, W, 3], or None when the first
  image has none (e.g. no encoder)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  folder = Path(folder)
  if not names or not (folder / image_file(names[0], kind)).is_file():
    return None
  images = []
  for name in names:
    with Image.open(folder / image_file(name, kind)) as image:
      images.append(np.asarray(image.convert("RGB")))
  return np.stack(images)
