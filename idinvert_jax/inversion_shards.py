"""The sharded invert.py output (`--layout shards`): a data set's codes in chunk files any number of hosts write,
and the one reader that opens them as a memory-mapped view in input order.

Layout:

  manifest.json                    number of inputs, chunk size and count, code shape/dtype, the input segments,
                                   the settings and model fingerprint (written once, by process 0)
  inputs.txt                       the N input names in input order (files: real paths; data sets: 'SPEC#i')
  chunks/codes-00012-of-00488.npz  one chunk: inputs [12 * chunk_size, 13 * chunk_size); arrays `index` (global
                                   input indices of its inverted images), `codes` [n, L, D], `encoder_codes`,
                                   per-image `psnr`, `mse`, `ssim`, `perceptual`, `enc_psnr`, `enc_mse`,
                                   `loss_<term>`, `seconds`, and `failed_index` / `failed_reason` for the inputs
                                   that failed; written to a temporary name and renamed, so a chunk file that
                                   exists is complete (and is checked against its index range when read)
  images/<name>_<kind>.png         with --save_images: the official per-image PNGs (all, or a sample per chunk)
  failed.txt, metrics.csv, summary.json, index.html   written by process 0 when every chunk is there
  DONE                             every chunk is there (written last)
  inverted_codes.npy               with --merge: float32 [N, L, D] in input order (NaN rows for failed inputs)

Chunks depend only on the input order and the chunk size, never on the number of processes: a run resumed on
another number of hosts inverts exactly the missing chunks. `open_codes(folder)` reads it (`ShardedCodes`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from idinvert_jax import files

LAYOUT = "shards"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
INPUTS_FILE = "inputs.txt"
CHUNKS_DIR = "chunks"
IMAGES_DIR = "images"
DONE_FILE = "DONE"
SUMMARY_FILE = "summary.json"
CODES_FILE = "inverted_codes.npy"
DEFAULT_CHUNK_SIZE = 2048  # 489 chunks at 1M images: every host of a v5e-256 pod (64) gets several
_CHUNK_RE = re.compile(r"codes-(\d{5,})-of-(\d{5,})\.npz")
# Per-image float arrays a chunk holds besides the codes (NaN where a value does not exist).
METRIC_KEYS = ("mse", "psnr", "ssim", "perceptual", "seconds", "enc_mse", "enc_psnr")


class ShardsError(ValueError):
  """A sharded output folder that does not fit the run or is incomplete (one line, names the fix)."""


def is_sharded(folder: str | os.PathLike) -> bool:
  return (Path(folder) / MANIFEST_FILE).is_file()


def chunk_name(chunk: int, num_chunks: int) -> str:
  return f"codes-{chunk:05d}-of-{num_chunks:05d}.npz"


def chunk_path(folder: str | os.PathLike, chunk: int, num_chunks: int) -> Path:
  return Path(folder) / CHUNKS_DIR / chunk_name(chunk, num_chunks)


def chunk_range(manifest: dict, chunk: int) -> range:
  lo = chunk * int(manifest["chunk_size"])
  return range(lo, min(lo + int(manifest["chunk_size"]), int(manifest["num_inputs"])))


def make_manifest(num_inputs: int, chunk_size: int, code_shape: Sequence[int], segments: list[dict],
                  fingerprint: dict) -> dict:
  if chunk_size < 1:
    raise ShardsError(f"--chunk_size {chunk_size}; use a positive number of images per chunk (default "
                      f"{DEFAULT_CHUNK_SIZE})")
  return {"layout": LAYOUT, "format_version": FORMAT_VERSION, "num_inputs": int(num_inputs),
          "chunk_size": int(chunk_size), "num_chunks": -(-int(num_inputs) // int(chunk_size)),
          "code_shape": [int(d) for d in code_shape], "code_dtype": "float32", "segments": segments,
          "fingerprint": fingerprint}


def read_manifest(folder: str | os.PathLike) -> dict | None:
  path = Path(folder) / MANIFEST_FILE
  if not path.is_file():
    return None
  try:
    manifest = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise ShardsError(f"{path}: unreadable ({e}); pass --overwrite to start the folder again") from None
  if manifest.get("layout") != LAYOUT or manifest.get("format_version") != FORMAT_VERSION:
    raise ShardsError(f"{path}: not a format-{FORMAT_VERSION} sharded inversion manifest; choose another --output")
  return manifest


def write_start(folder: Path, manifest: dict, names: Sequence[str]) -> None:
  """The manifest and the input list (inputs.txt first: a manifest that exists means both are there)."""
  files.atomic_write_text(folder / INPUTS_FILE, "".join(f"{name}\n" for name in names))
  files.atomic_write_json(folder / MANIFEST_FILE, manifest)


def read_names(folder: str | os.PathLike, manifest: dict) -> list[str]:
  path = Path(folder) / INPUTS_FILE
  names = path.read_text(encoding="utf-8").splitlines()
  if len(names) != int(manifest["num_inputs"]):
    raise ShardsError(f"{path} lists {len(names)} inputs but {Path(folder) / MANIFEST_FILE} says "
                      f"{manifest['num_inputs']}; pass --overwrite to start the folder again")
  return names


def save_chunk(folder: Path, manifest: dict, chunk: int, record: dict, failed_index: Sequence[int],
               failed_reason: Sequence[str]) -> Path:
  """Writes one chunk (see the module docstring) atomically, streamed into a temporary file and renamed."""
  path = chunk_path(folder, chunk, int(manifest["num_chunks"]))
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = {k: np.asarray(v) for k, v in record.items()}
  arrays["failed_index"] = np.asarray(failed_index, np.int64).reshape(-1)
  arrays["failed_reason"] = np.asarray(list(failed_reason), dtype=str).reshape(-1)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    os.fchmod(fd, 0o666 & ~files.current_umask())
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)  # Stored uncompressed: `open_codes` memory-maps the codes inside the zip.
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path


def _check_chunk(path: Path, manifest: dict, chunk: int) -> str | None:
  """None when the file is a complete chunk of this manifest, else why not (read from the zip's headers)."""
  try:
    with np.load(path, allow_pickle=False) as data:
      if not {"index", "codes", "failed_index"} <= set(data.files):
        return "arrays missing"
      index, failed = data["index"], data["failed_index"]
      codes = _npz_header(path, "codes")
  except Exception as e:  # noqa: BLE001 -- truncated zip, bad header: the chunk is redone.
    return f"unreadable ({type(e).__name__})"
  want = chunk_range(manifest, chunk)
  if sorted(np.concatenate([index, failed]).tolist()) != list(want):
    return "holds other inputs than its range"
  if codes is None or tuple(codes[0]) != (len(index), *manifest["code_shape"]):
    return "codes of the wrong shape"
  return None


def scan_chunks(folder: str | os.PathLike, manifest: dict) -> tuple[list[int], list[tuple[int, str]]]:
  """(the chunks whose file is complete, [(chunk, why not)] for files that exist but cannot be trusted)."""
  num_chunks = int(manifest["num_chunks"])
  found = {}
  directory = Path(folder) / CHUNKS_DIR
  if directory.is_dir():
    for entry in os.scandir(directory):
      match = _CHUNK_RE.fullmatch(entry.name)
      if match and int(match.group(2)) == num_chunks and int(match.group(1)) < num_chunks:
        found[int(match.group(1))] = Path(entry.path)
  done, bad = [], []
  for chunk in sorted(found):
    why = _check_chunk(found[chunk], manifest, chunk)
    if why is None:
      done.append(chunk)
    else:
      bad.append((chunk, why))
  return done, bad


# ----------------------------------------------------------------------------------------------------------
# Reading.


def _npz_header(path: Path, member: str):
  """((shape), dtype, fortran, byte offset) of an uncompressed npz member's array, or None if compressed."""
  with zipfile.ZipFile(path) as archive:
    info = archive.getinfo(f"{member}.npy")
  if info.compress_type != zipfile.ZIP_STORED:
    return None
  with open(path, "rb") as f:
    f.seek(info.header_offset)
    local = f.read(30)
    if local[:4] != b"PK\x03\x04":
      raise ValueError(f"{path}: bad zip entry for {member}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    f.seek(info.header_offset + 30 + name_len + extra_len)
    version = np.lib.format.read_magic(f)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = reader(f)
    return shape, dtype, fortran, f.tell()


def _npz_memmap(path: Path, member: str) -> np.ndarray:
  """An npz member as a read-only memory map (np.savez stores members uncompressed); loaded if compressed."""
  header = _npz_header(path, member)
  if header is None:
    with np.load(path, allow_pickle=False) as data:
      return data[member]
  shape, dtype, fortran, offset = header
  if int(np.prod(shape)) == 0:
    return np.zeros(shape, dtype)
  return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


class ChunkedCodes:
  """[N, L, D] float32 codes in input order over the chunk files, read on indexing (nothing loaded up front).

  `codes[i]`, `codes[a:b]`, `codes[[i, j]]`, `codes[:, layer]` and `np.asarray(codes)` work; rows of inputs that
  failed are NaN.
  """

  def __init__(self, folder: Path, manifest: dict, chunks: dict[int, np.ndarray]):
    self.folder, self.manifest = folder, manifest
    self.shape = (int(manifest["num_inputs"]), *manifest["code_shape"])
    self.dtype = np.dtype(np.float32)
    self.ndim = len(self.shape)
    self._row_in_chunk = np.full(self.shape[0], -1, np.int64)
    for index in chunks.values():
      self._row_in_chunk[index] = np.arange(len(index))
    self._maps: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return self.shape[0]

  def _chunk(self, chunk: int) -> np.ndarray:
    if chunk not in self._maps:
      self._maps[chunk] = _npz_memmap(chunk_path(self.folder, chunk, int(self.manifest["num_chunks"])), "codes")
    return self._maps[chunk]

  def _rows(self, indices: np.ndarray) -> np.ndarray:
    out = np.full((len(indices), *self.shape[1:]), np.nan, np.float32)
    chunk_size = int(self.manifest["chunk_size"])
    chunks = indices // chunk_size
    for chunk in np.unique(chunks):
      at = np.flatnonzero(chunks == chunk)
      rows = self._row_in_chunk[indices[at]]
      ok = rows >= 0
      if ok.any():
        out[at[ok]] = self._chunk(int(chunk))[rows[ok]]
    return out

  def __getitem__(self, key):
    first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
    if isinstance(first, (int, np.integer)):
      if not -self.shape[0] <= first < self.shape[0]:
        raise IndexError(f"code {first} out of range for {self.shape[0]} codes")
      return self._rows(np.asarray([first % self.shape[0]]))[0][rest] if rest else \
          self._rows(np.asarray([first % self.shape[0]]))[0]
    indices = np.arange(self.shape[0])[first]
    rows = self._rows(np.asarray(indices, np.int64).reshape(-1))
    return rows[(slice(None), *rest)] if rest else rows

  def __array__(self, dtype=None, copy=None):
    rows = self._rows(np.arange(self.shape[0]))
    return rows if dtype is None else rows.astype(dtype)


@dataclasses.dataclass
class ShardedCodes:
  """A sharded inversion output in input order.

  names: the N input names (inputs.txt).         codes: [N, L, D] float32, memory-mapped (`ChunkedCodes` or the
  valid: bool [N], inverted (not failed).         merged inverted_codes.npy); NaN rows where not valid.
  metrics: {'psnr'|'mse'|'ssim'|'perceptual'|'seconds'|'enc_psnr'|'enc_mse'|'loss_<term>': float32 [N]}.
  failed: [(index, name, reason)].                complete: every chunk is there (else the missing rows are
  manifest: the folder's manifest.json.           NaN and not valid).
  """
  folder: Path
  manifest: dict
  names: list[str]
  codes: ChunkedCodes | np.ndarray
  valid: np.ndarray
  metrics: dict[str, np.ndarray]
  failed: list[tuple[int, str, str]]
  complete: bool
  missing_chunks: list[int]

  def __len__(self) -> int:
    return len(self.names)

  def valid_indices(self) -> np.ndarray:
    return np.flatnonzero(self.valid)


def open_codes(folder: str | os.PathLike, require_complete: bool = True) -> ShardedCodes:
  """Opens a `--layout shards` folder without loading its codes (see `ShardedCodes`).

  Raises ShardsError when the folder is not one, or when chunks are missing and `require_complete`.
  """
  folder = Path(folder)
  manifest = read_manifest(folder)
  if manifest is None:
    raise ShardsError(f"{folder} has no {MANIFEST_FILE}; pass a folder written by invert.py --layout shards")
  names = read_names(folder, manifest)
  done, bad = scan_chunks(folder, manifest)
  missing = sorted(set(range(int(manifest["num_chunks"]))) - set(done))
  if missing and require_complete:
    raise ShardsError(f"{folder}: {len(missing)} of {manifest['num_chunks']} chunks missing or incomplete (first "
                      f"{missing[0]}); rerun the same invert.py command to finish them")
  n = int(manifest["num_inputs"])
  valid = np.zeros(n, bool)
  metrics: dict[str, np.ndarray] = {}
  failed: list[tuple[int, str, str]] = []
  indices: dict[int, np.ndarray] = {}
  for chunk in done:
    with np.load(chunk_path(folder, chunk, int(manifest["num_chunks"])), allow_pickle=False) as data:
      index = data["index"].astype(np.int64)
      indices[chunk] = index
      valid[index] = True
      for key in data.files:
        if key in METRIC_KEYS or key.startswith("loss_"):
          metrics.setdefault(key, np.full(n, np.nan, np.float32))[index] = data[key]
      failed += [(int(i), names[int(i)], str(r)) for i, r in zip(data["failed_index"], data["failed_reason"])]
  merged = folder / CODES_FILE
  if (folder / DONE_FILE).is_file() and merged.is_file():
    codes: ChunkedCodes | np.ndarray = np.load(merged, mmap_mode="r", allow_pickle=False)
  else:
    codes = ChunkedCodes(folder, manifest, indices)
  return ShardedCodes(folder=folder, manifest=manifest, names=names, codes=codes, valid=valid, metrics=metrics,
                      failed=sorted(failed), complete=not missing, missing_chunks=missing)


def merge(folder: str | os.PathLike, progress: bool = False) -> Path:
  """Writes inverted_codes.npy [N, L, D] in input order (memory-mapped, chunk by chunk; NaN rows for failures)."""
  view = open_codes(folder)
  folder = Path(folder)
  target = folder / CODES_FILE
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{CODES_FILE}.", suffix=".tmp")
  os.close(fd)
  try:
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=view.codes.shape)
    chunk_size = int(view.manifest["chunk_size"])
    chunks = range(int(view.manifest["num_chunks"]))
    if progress:
      from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
      chunks = tqdm(chunks, desc="merge", leave=False)
    for chunk in chunks:
      lo = chunk * chunk_size
      out[lo:lo + chunk_size] = view.codes[lo:lo + chunk_size]
    out.flush()
    del out
    os.chmod(tmp, 0o666 & ~files.current_umask())
    os.replace(tmp, target)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return target
