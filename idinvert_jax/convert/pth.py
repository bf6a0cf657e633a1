"""A safe reader for PyTorch `.pth` state_dict files that needs no torch.

`torch.load` unpickles arbitrary objects, so a downloaded checkpoint can run code. This reader instead uses
`untrusted.TorchUnpickler`, whose `find_class` admits only the handful of globals a plain state_dict needs
(`collections.OrderedDict`, the tensor/parameter rebuild functions and the typed storage classes); anything
else raises `UnsafePickleError` before it is constructed. Tensors become `np.ndarray`s.

Both serialisation formats are read:
- the zip format (torch >= 1.6): `<root>/data.pkl` + one raw little-endian file `<root>/data/<key>` per storage;
- the legacy format (torch < 1.6, e.g. the 2020 official idinvert release): a stream of pickles (magic number,
  protocol version, system info, the object, the storage keys) followed by each storage as int64 size + bytes.
"""
from __future__ import annotations

import collections
import io
import os
import struct
import zipfile
from typing import Any

import numpy as np

from idinvert_jax import untrusted
from idinvert_jax.untrusted import PthFormatError, UnsafePickleError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pkl_names = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl_names) != 1:
      raise PthFormatError(f"{path}: expected exactly one data.pkl in the zip, found {len(pkl_names)}")
    root = pkl_names[0][:-len("data.pkl")]
    if f"{root}byteorder" in names and archive.read(f"{root}byteorder").strip() != b"little":
      raise PthFormatError(f"{path}: big-endian .pth files are not supported")
    file_size = os.path.getsize(path)
    for info in archive.infolist():
      # torch stores members uncompressed; a compressed member could expand to anything (a zip bomb).
      if info.compress_type != zipfile.ZIP_STORED or info.file_size > file_size:
        raise PthFormatError(f"{path}: member {info.filename} is compressed or larger than the file; torch "
                             "writes stored members only")
    cache: dict[str, np.ndarray] = {}
    budget = untrusted.Budget(2 * file_size + (1 << 20))

    def load_storage(storage_type: untrusted.StorageType, key: str, numel: int) -> np.ndarray:
      if key not in cache:
        data = archive.read(f"{root}data/{key}")
        array = np.frombuffer(data, dtype=storage_type.dtype.newbyteorder("<"))
        if array.size < numel:
          raise PthFormatError(f"{path}: storage {key} holds {array.size} elements, expected {numel}")
        budget.spend(array.nbytes)
        cache[key] = array.astype(storage_type.dtype)
      return cache[key]

    with archive.open(pkl_names[0]) as f:
      return untrusted.TorchUnpickler(io.BytesIO(f.read()), load_storage, budget).load()


def _load_legacy(path: str) -> Any:
  with open(path, "rb") as file:
    # In memory, so no declared length can make a read allocate more than the file holds.
    f = io.BytesIO(file.read())
  budget = untrusted.Budget(2 * len(f.getbuffer()) + (1 << 20))
  no_storage = lambda *args: (_ for _ in ()).throw(PthFormatError(f"{path}: storage in a header pickle"))
  magic = untrusted.TorchUnpickler(f, no_storage).load()
  if magic != _LEGACY_MAGIC:
    raise PthFormatError(f"{path}: not a PyTorch file (neither a zip nor the legacy magic number)")
  protocol = untrusted.TorchUnpickler(f, no_storage).load()
  if protocol != _LEGACY_PROTOCOL:
    raise PthFormatError(f"{path}: unsupported legacy protocol {protocol}")
  sys_info = untrusted.TorchUnpickler(f, no_storage).load()
  if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
    raise PthFormatError(f"{path}: big-endian .pth files are not supported")

  # Storages are read after the object pickle; keep placeholders and fill them in afterwards.
  placeholders: dict[str, tuple[untrusted.StorageType, int, list]] = {}

  def load_storage(storage_type: untrusted.StorageType, key: str, numel: int):
    if key not in placeholders:
      placeholders[key] = (storage_type, numel, [])
    return untrusted.PendingStorage(key, storage_type.dtype)

  obj = untrusted.TorchUnpickler(f, load_storage, budget).load()
  keys = untrusted.TorchUnpickler(f, no_storage).load()
  if not isinstance(keys, (list, tuple)):
    raise PthFormatError(f"{path}: the storage key list is a {type(keys).__name__}")
  storages = {}
  for key in keys:
    key = str(key)
    if key not in placeholders:
      raise PthFormatError(f"{path}: storage {key} is not used by any tensor")
    (size,) = struct.unpack("<q", f.read(8))
    storage_type, _, _ = placeholders[key]
    nbytes = size * storage_type.dtype.itemsize
    if size < 0 or nbytes > len(f.getbuffer()) - f.tell():
      raise PthFormatError(f"{path}: storage {key} declares {size} elements, more than the file holds")
    budget.spend(nbytes)
    storages[key] = np.frombuffer(f.read(nbytes), dtype=storage_type.dtype.newbyteorder("<")).astype(
        storage_type.dtype)
  return untrusted.resolve_pending(obj, storages, path, budget)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `.pth` state_dict safely (no torch, no arbitrary code): returns {key: np.ndarray}.

  A file holding `{'state_dict': {...}}` or `{'model': {...}}` around the tensors is unwrapped.
  Raises FileNotFoundError, UnsafePickleError (disallowed global) or PthFormatError (anything else odd).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such .pth file")
  try:
    obj = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
  except (UnsafePickleError, PthFormatError) as e:
    if path in str(e):
      raise
    raise type(e)(f"{path}: {e}") from None
  except Exception as e:  # pylint: disable=broad-except
    # Anything else a malformed file makes the zip, struct or pickle machinery raise: one line, no traceback.
    first = str(e).splitlines()[0] if str(e) else ""
    raise PthFormatError(f"{path}: not a readable PyTorch state_dict ({type(e).__name__}: {first[:200]})") from None
  for wrapper in ("state_dict", "model"):
    if isinstance(obj, dict) and set(obj) == {wrapper}:
      obj = obj[wrapper]
  if not isinstance(obj, dict):
    raise PthFormatError(f"{path}: holds a {type(obj).__name__}, expected a state_dict (a dict of tensors)")
  out = {}
  for key, value in obj.items():
    if not isinstance(value, np.ndarray):
      raise PthFormatError(f"{path}: entry '{key}' is a {type(value).__name__}, expected a tensor")
    out[str(key)] = value
  return out


def save_state_dict(state_dict: dict[str, np.ndarray], path: str | os.PathLike) -> None:
  """Writes {key: ndarray} as a `.pth` with `torch.save` (needs torch: `pip install idinvert_jax[convert]`)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("writing official .pth files needs torch: pip install 'idinvert_jax[convert]'") from e
  from idinvert_jax import files  # pylint: disable=g-import-not-at-top
  tensors = collections.OrderedDict(
      (k, torch.from_numpy(np.array(v, order="C"))) for k, v in state_dict.items())
  buf = io.BytesIO()
  torch.save(tensors, buf)
  files.atomic_write_bytes(path, buf.getvalue())
