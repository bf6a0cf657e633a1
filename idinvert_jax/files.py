"""Atomic file output: every file is written to a temporary name in its folder, then renamed into place.

A killed job therefore never leaves a half-written output behind; resumable jobs can trust any file they find.
Files get the mode a plain open() would give them (0666 less the umask: 0644 under the usual 022), not
mkstemp's 0600.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
  """Writes `data` to `path` atomically (temp file in the same folder + os.replace)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    os.fchmod(fd, 0o666 & ~current_umask())
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path


class OutputFolderError(ValueError):
  """An output path that is a file, or a folder this process cannot write into (one line, names the fix)."""


def check_output_folder(path: str | os.PathLike, flag: str = "--output") -> Path:
  """Creates `path` if needed and checks that files can be written there; raises OutputFolderError if not."""
  path = Path(path)
  if path.exists() and not path.is_dir():
    raise OutputFolderError(f"{path} is a file, not a folder; give a folder for {flag}.")
  try:
    path.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test.")
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise OutputFolderError(f"{path}: cannot write there ({e.strerror or e}); choose another {flag} or fix its "
                            "permissions.") from None
  return path


def current_umask() -> int:
  """The process umask, read without changing it where Linux shows it (os.umask can only be read by setting
  it, which races with other threads creating files)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except OSError:
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
  return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
  return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
  buf = io.BytesIO()
  np.save(buf, np.asarray(array), allow_pickle=False)
  return atomic_write_bytes(path, buf.getvalue())


def to_uint8(image: np.ndarray) -> np.ndarray:
  """[-1, 1] float image(s) -> uint8 in [0, 255], rounding as the official code does (x*127.5+127.5)."""
  image = np.asarray(image, dtype=np.float32)
  return np.clip(np.rint(image * 127.5 + 127.5), 0, 255).astype(np.uint8)


def atomic_save_png(path: str | os.PathLike, image: np.ndarray, text: dict[str, str] | None = None) -> Path:
  """Saves an HWC image; float input is taken as [-1, 1], uint8 as is. `text`: PNG tEXt entries."""
  from PIL import PngImagePlugin  # pylint: disable=g-import-not-at-top
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = to_uint8(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  info = None
  if text:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
      info.add_text(key, str(value))
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG", pnginfo=info)
  return atomic_write_bytes(path, buf.getvalue())
