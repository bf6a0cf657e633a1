"""Unpickling files this project did not write: only the globals each file type needs, never arbitrary code.

`pickle` runs whatever a file names, so a downloaded .pth or boundary .npy could execute code. Both readers
here check every global in `find_class` against a short allow-list before anything is constructed:

  TorchUnpickler  the pickle inside a PyTorch state_dict .pth (convert/pth.py reads the zip / legacy container
                  around it): `collections.OrderedDict`, the tensor/parameter rebuild functions and the typed
                  storage classes; storages come from the caller, tensors become np.ndarray (bounds-checked).
                  Refusals raise UnsafePickleError, malformed tensors PthFormatError.
  loads_arrays    numpy arrays / dtypes / scalars and builtin containers, numbers and strings (the official
                  boundary .npy files are np.save'd object arrays; editing/boundaries.py). The pure-Python
                  unpickler is used so that BUILD can be checked; refusals raise pickle.UnpicklingError.
"""
from __future__ import annotations

import codecs
import collections
import io
import pickle
from typing import Any, BinaryIO

import numpy as np


class UnsafePickleError(ValueError):
  """The file references a Python global that a state_dict never needs (possibly malicious)."""


class PthFormatError(ValueError):
  """The file is not a readable PyTorch state_dict."""


# --------------------------------------------------------------------------------------------------------------
# PyTorch state_dict pickles.

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


class StorageType:
  """Stands in for `torch.<Name>Storage`: it only carries the dtype."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


def rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
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


class TorchUnpickler(pickle.Unpickler):
  """Admits only the globals of a plain state_dict; storages come from `load_storage(type, key, numel)`."""

  def __init__(self, file: BinaryIO, load_storage):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module: str, name: str):
    if (module, name) in _TORCH_GLOBALS:
      return _TORCH_GLOBALS[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return StorageType(name)
    raise UnsafePickleError(f"refusing to load global '{module}.{name}': a state_dict .pth needs only "
                            f"tensors and dicts (re-save the file with torch.save(model.state_dict(), path))")

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
      raise PthFormatError(f"unsupported persistent id {pid!r}")
    storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
    if not isinstance(storage_type, StorageType):
      raise UnsafePickleError(f"persistent id names {storage_type!r}, not a torch storage type")
    if len(pid) > 5 and pid[5] is not None:
      raise PthFormatError("legacy storage views are not supported; re-save the file with a recent torch")
    return self._load_storage(storage_type, key, numel)


class PendingStorage:
  """A storage whose bytes come later in a legacy file; tensors built on it are resolved afterwards."""

  def __init__(self, key: str, dtype: np.dtype):
    self.key = key
    self.dtype = dtype


class _PendingTensor:
  """A tensor on a PendingStorage: rebuilt by `resolve_pending` once the storage bytes are read."""

  def __init__(self, storage: PendingStorage, args):
    self.storage = storage
    self.args = args


def resolve_pending(obj, storages, path):
  """`obj` with every pending tensor rebuilt from `storages` {key: array} (legacy .pth files)."""
  if isinstance(obj, _PendingTensor):
    if obj.storage.key not in storages:
      raise PthFormatError(f"{path}: storage {obj.storage.key} is missing")
    return rebuild_tensor(storages[obj.storage.key], *obj.args)
  if isinstance(obj, dict):
    return type(obj)((k, resolve_pending(v, storages, path)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(resolve_pending(v, storages, path) for v in obj)
  return obj


def _rebuild_tensor_dispatch(storage, *args):
  if isinstance(storage, PendingStorage):
    return _PendingTensor(storage, args)
  return rebuild_tensor(storage, *args)


_TORCH_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_dispatch,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
}


# --------------------------------------------------------------------------------------------------------------
# numpy-only pickles (boundary files).

def _latin1_encode(text, encoding="latin1", errors="strict"):
  """The only use of `_codecs.encode` in numpy pickles: bytes written as latin-1 text (protocol 2)."""
  if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1" or errors != "strict":
    raise pickle.UnpicklingError(f"refused _codecs.encode({type(text).__name__}, {encoding!r}, {errors!r})")
  return codecs.encode(text, "latin1")


def _array_globals() -> dict[tuple[str, str], Any]:
  reconstruct = np.ndarray.__reduce__(np.zeros(()))[0]  # numpy's own _reconstruct, whatever its module.
  scalar = np.float32(0).__reduce__()[0]
  allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
             ("_codecs", "encode"): _latin1_encode}
  for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    allowed[(module, "_reconstruct")] = reconstruct
    allowed[(module, "scalar")] = scalar
  return allowed


def _check_dtype(dtype: np.dtype) -> None:
  """Only plain bool/int/uint/float/complex/object dtypes whose state matches numpy's own.

  A pickled dtype's state (flags, item size) is set by BUILD; a forged one can make numpy read raw bytes as
  object pointers, so every dtype must equal the canonical dtype of its type string in every such field.
  """
  canonical = np.dtype(dtype.str)
  if (dtype.kind not in "biufcO" or dtype.fields is not None or dtype.subdtype is not None
      or dtype != canonical or dtype.flags != canonical.flags or dtype.itemsize != canonical.itemsize
      or dtype.alignment != canonical.alignment):
    raise pickle.UnpicklingError(f"dtype {dtype!r} (flags {dtype.flags}) is not allowed in a boundary file")


class ArrayUnpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """Builds numpy arrays, dtypes, scalars, dicts, lists, tuples, numbers and strings; refuses any other global.

  The pure-Python unpickler is used so that BUILD can be checked: a dtype's state is validated right after it
  is set, before any array uses it.
  """

  _ALLOWED = _array_globals()
  dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access

  def find_class(self, module: str, name: str):
    try:
      return self._ALLOWED[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a boundary file") from None

  def persistent_load(self, pid):
    raise pickle.UnpicklingError("persistent ids are not allowed in a boundary file")

  def load_build(self):
    if len(self.stack) < 2:
      raise pickle.UnpicklingError("malformed BUILD in a boundary file")
    target = self.stack[-2]  # BUILD pops the state (stack[-1]) and sets it on the object below.
    if not isinstance(target, (np.ndarray, np.dtype)):
      raise pickle.UnpicklingError(f"BUILD on {type(target).__name__} is not allowed in a boundary file")
    pickle._Unpickler.load_build(self)  # pylint: disable=protected-access
    _check_dtype(target if isinstance(target, np.dtype) else target.dtype)

  dispatch[pickle.BUILD[0]] = load_build


def loads_arrays(data: bytes) -> Any:
  """Unpickles `data` admitting only numpy arrays/dtypes/scalars and builtin containers, numbers, strings."""
  value = ArrayUnpickler(io.BytesIO(data)).load()
  _check_plain(value)
  return value


def _check_plain(value: Any) -> None:
  """Object arrays built by the unpickler may only hold plain values (recursively)."""
  if isinstance(value, np.ndarray):
    _check_dtype(value.dtype)
    if value.dtype == object:
      for item in value.ravel().tolist():
        _check_plain(item)
  elif isinstance(value, dict):
    for key, item in value.items():
      _check_plain(key)
      _check_plain(item)
  elif isinstance(value, (list, tuple)):
    for item in value:
      _check_plain(item)
  elif not isinstance(value, (str, bytes, int, float, complex, bool, type(None), np.generic)):
    raise pickle.UnpicklingError(f"value of type {type(value).__name__} is not allowed in a boundary file")
