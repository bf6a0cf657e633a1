"""A safe reader for PyTorch `.pth` state_dict files that needs no torch.

`torch.load` unpickles arbitrary objects, so a downloaded checkpoint can run code. This reader instead uses a
restricted `pickle.Unpickler` whose `find_class` admits only the handful of globals a plain state_dict needs
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
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

# The `torch.<Name>Storage` classes a state_dict may reference, with the numpy dtype of their bytes.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class UnsafePickleError(ValueError):
  """The file references a Python global that a state_dict never needs (possibly malicious)."""


class PthFormatError(ValueError):
  """The file is not a readable PyTorch state_dict."""


class _StorageType:
  """Stands in for `torch.<Name>Storage`: it only carries the dtype."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
  """Builds the ndarray view `torch._utils._rebuild_tensor_v2` would build (copied, so it owns its memory)."""
  del requires_grad, backward_hooks, metadata
  size, stride, storage_offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(storage_offset)
  # A crafted file must not make as_strided read outside the storage.
  if len(stride) != len(size) or min(size + stride + (storage_offset,), default=0) < 0:
    raise PthFormatError(f"tensor with size {size}, stride {stride}, offset {storage_offset} is malformed")
  if storage_offset >= storage.size and (not size or min(size) > 0):
    raise PthFormatError(f"tensor offset {storage_offset} is outside its storage ({storage.size} elements)")
  if not size:
    return np.array(storage[storage_offset], dtype=storage.dtype)
  itemsize = storage.dtype.itemsize
  needed = storage_offset + 1 + sum((s - 1) * st for s, st in zip(size, stride) if s > 0)
  if min(size) > 0 and needed > storage.size:
    raise PthFormatError(f"tensor of size {size} at offset {storage_offset} overruns its storage "
                         f"({storage.size} elements)")
  view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                         strides=tuple(int(st) * itemsize for st in stride))
  return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state
  return data


class _RestrictedUnpickler(pickle.Unpickler):
  """Admits only the globals of a plain state_dict; storages come from `load_storage(type, key, numel)`."""

  def __init__(self, file: BinaryIO, load_storage):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module: str, name: str):
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise UnsafePickleError(f"refusing to load global '{module}.{name}': a state_dict .pth needs only "
                            f"tensors and dicts (re-save the file with torch.save(model.state_dict(), path))")

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
      raise PthFormatError(f"unsupported persistent id {pid!r}")
    storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
    if not isinstance(storage_type, _StorageType):
      raise UnsafePickleError(f"persistent id names {storage_type!r}, not a torch storage type")
    if len(pid) > 5 and pid[5] is not None:
      raise PthFormatError("legacy storage views are not supported; re-save the file with a recent torch")
    return self._load_storage(storage_type, key, numel)


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pkl_names = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl_names) != 1:
      raise PthFormatError(f"{path}: expected exactly one data.pkl in the zip, found {len(pkl_names)}")
    root = pkl_names[0][:-len("data.pkl")]
    if f"{root}byteorder" in names and archive.read(f"{root}byteorder").strip() != b"little":
      raise PthFormatError(f"{path}: big-endian .pth files are not supported")
    cache: dict[str, np.ndarray] = {}

    def load_storage(storage_type: _StorageType, key: str, numel: int) -> np.ndarray:
      if key not in cache:
        data = archive.read(f"{root}data/{key}")
        array = np.frombuffer(data, dtype=storage_type.dtype.newbyteorder("<"))
        if array.size < numel:
          raise PthFormatError(f"{path}: storage {key} holds {array.size} elements, expected {numel}")
        cache[key] = array.astype(storage_type.dtype)
      return cache[key]

    with archive.open(pkl_names[0]) as f:
      return _RestrictedUnpickler(io.BytesIO(f.read()), load_storage).load()


def _load_legacy(path: str) -> Any:
  with open(path, "rb") as f:
    no_storage = lambda *args: (_ for _ in ()).throw(PthFormatError(f"{path}: storage in a header pickle"))
    magic = _RestrictedUnpickler(f, no_storage).load()
    if magic != _LEGACY_MAGIC:
      raise PthFormatError(f"{path}: not a PyTorch file (neither a zip nor the legacy magic number)")
    protocol = _RestrictedUnpickler(f, no_storage).load()
    if protocol != _LEGACY_PROTOCOL:
      raise PthFormatError(f"{path}: unsupported legacy protocol {protocol}")
    sys_info = _RestrictedUnpickler(f, no_storage).load()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
      raise PthFormatError(f"{path}: big-endian .pth files are not supported")

    # Storages are read after the object pickle; keep placeholders and fill them in afterwards.
    placeholders: dict[str, tuple[_StorageType, int, list]] = {}

    def load_storage(storage_type: _StorageType, key: str, numel: int):
      if key not in placeholders:
        placeholders[key] = (storage_type, numel, [])
      return _PendingStorage(key, storage_type.dtype)

    obj = _RestrictedUnpickler(f, load_storage).load()
    keys = _RestrictedUnpickler(f, no_storage).load()
    storages = {}
    for key in keys:
      key = str(key)
      (size,) = struct.unpack("<q", f.read(8))
      storage_type, _, _ = placeholders[key]
      raw = f.read(size * storage_type.dtype.itemsize)
      if len(raw) != size * storage_type.dtype.itemsize:
        raise PthFormatError(f"{path}: truncated storage {key}")
      storages[key] = np.frombuffer(raw, dtype=storage_type.dtype.newbyteorder("<")).astype(storage_type.dtype)
  return _resolve_pending(obj, storages, path)


class _PendingStorage:
  """A storage whose bytes come later in a legacy file; tensors built on it are resolved afterwards."""

  def __init__(self, key: str, dtype: np.dtype):
    self.key = key
    self.dtype = dtype


class _PendingTensor:

  def __init__(self, storage: _PendingStorage, args):
    self.storage = storage
    self.args = args


def _resolve_pending(obj, storages, path):
  if isinstance(obj, _PendingTensor):
    if obj.storage.key not in storages:
      raise PthFormatError(f"{path}: storage {obj.storage.key} is missing")
    return _rebuild_tensor_v2(storages[obj.storage.key], *obj.args)
  if isinstance(obj, dict):
    return type(obj)((k, _resolve_pending(v, storages, path)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve_pending(v, storages, path) for v in obj)
  return obj


def _rebuild_tensor_dispatch(storage, *args):
  if isinstance(storage, _PendingStorage):
    return _PendingTensor(storage, args)
  return _rebuild_tensor_v2(storage, *args)


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_dispatch,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
}


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
  except (pickle.UnpicklingError, EOFError, KeyError, struct.error, TypeError, AttributeError) as e:
    raise PthFormatError(f"{path}: not a readable PyTorch state_dict ({type(e).__name__}: {e})") from e
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
