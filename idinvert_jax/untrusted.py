"""The one safe reader for pickled files this project did not write: .pth state_dicts and boundary .npy files.

`pickle` runs whatever a file names, so a downloaded .pth or boundary .npy could execute code; and even with only
"harmless" globals, numpy's own __setstate__ can be made to read raw bytes as object pointers (a segfault), and
declared sizes can make a reader allocate terabytes. Both readers here therefore:
  - use the pure-Python unpickler (BUILD can be checked; its memo is a dict, not a table sized by the file),
  - admit a short allow-list of globals, replaced by stand-ins that only record what the file declares,
  - never build an object array (the official boundary wrapper, a 0-d object array, becomes the value it holds),
  - check every declared size against the bytes actually present before allocating, and charge every array to
    a budget of ~2x the file's size (tensors re-read from one storage, stride-0 "expanded" tensors: refused),
  - refuse nesting deeper than MAX_DEPTH, containers that hold themselves, and any other type,
  - raise one-line ValueErrors for everything (UnsafePickleError / PthFormatError / ArrayPickleError).

  TorchUnpickler  the pickle inside a .pth (convert/pth.py reads the zip / legacy container around it):
                  `collections.OrderedDict`, the tensor/parameter rebuild functions and the typed storage classes;
                  storages come from the caller, tensors become np.ndarray.
  loads_arrays    numeric numpy arrays / dtypes / scalars and builtin containers, numbers and strings (the
                  official boundary .npy files are np.save'd 0-d object arrays of a dict; editing/boundaries.py).

tests/test_untrusted_files.py fuzzes both with >= 1,000 mutated files each; docs/SECURITY.md says what else is
treated as untrusted.
"""
from __future__ import annotations

import codecs
import collections
import io
import math
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
                   metadata=None, budget: "Budget | None" = None):
  """Builds the ndarray `torch._utils._rebuild_tensor_v2` would build (a copy that owns its memory).

  Checked before anything is allocated: the view stays inside the storage, and it has no more elements than the
  storage (an expanded, stride-0 tensor would make a 1 KB file claim gigabytes); `budget` is charged the bytes.
  """
  del requires_grad, backward_hooks, metadata
  if not isinstance(storage, np.ndarray):
    raise PthFormatError(f"tensor on a {type(storage).__name__}, not a storage")
  if not all(isinstance(v, int) and not isinstance(v, bool) for v in (storage_offset, *tuple(size),
                                                                          *tuple(stride))):
    raise PthFormatError("tensor size, stride or offset is not made of integers")
  size, stride, storage_offset = tuple(size), tuple(stride), int(storage_offset)
  if len(stride) != len(size) or len(size) > 32 or min(size + stride + (storage_offset,), default=0) < 0:
    raise PthFormatError(f"tensor with size {size}, stride {stride}, offset {storage_offset} is malformed")
  count = math.prod(size)
  if count and storage_offset >= storage.size:
    raise PthFormatError(f"tensor offset {storage_offset} is outside its storage ({storage.size} elements)")
  needed = storage_offset + 1 + sum((s - 1) * st for s, st in zip(size, stride) if s > 0)
  if count and needed > storage.size:
    raise PthFormatError(f"tensor of size {size} at offset {storage_offset} overruns its storage "
                         f"({storage.size} elements)")
  if count > storage.size:
    raise PthFormatError(f"tensor of size {size} has more elements than its storage ({storage.size}): an "
                         "expanded (stride 0) tensor; re-save the file with .clone() of such tensors")
  if budget is not None:
    budget.spend(count * storage.dtype.itemsize)
  if not size:
    return np.array(storage[storage_offset], dtype=storage.dtype)
  if not count:
    return np.zeros(size, storage.dtype)
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                         strides=tuple(int(st) * itemsize for st in stride))
  return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state
  return data


class TorchUnpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """Admits only the globals of a plain state_dict; storages come from `load_storage(type, key, numel)`.

  The pure-Python unpickler, so that BUILD can be limited (an OrderedDict's `_metadata` is dropped; nothing else
  may be built) and its memo is a dict (the C unpickler sizes its memo table by the indices a file names).
  Tensors are charged to `budget` (see rebuild_tensor); `finish(obj)` checks the result's nesting and types.
  """

  dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access

  def __init__(self, file: BinaryIO, load_storage, budget: "Budget | None" = None):
    super().__init__(file)
    self._load_storage = load_storage
    self.budget = budget if budget is not None else Budget(1 << 20)
    self._globals = dict(_TORCH_GLOBALS)
    self._globals[("torch._utils", "_rebuild_tensor_v2")] = self._rebuild_tensor

  def _rebuild_tensor(self, storage, *args):
    if isinstance(storage, PendingStorage):
      return _PendingTensor(storage, args)
    return rebuild_tensor(storage, *args[:6], budget=self.budget)

  def find_class(self, module: str, name: str):
    if (module, name) in self._globals:
      return self._globals[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return StorageType(name)
    raise UnsafePickleError(f"refusing to load global '{module}.{name}': a state_dict .pth needs only "
                            f"tensors and dicts (re-save the file with torch.save(model.state_dict(), path))")

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
      raise PthFormatError(f"unsupported persistent id {str(pid)[:80]}")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(storage_type, StorageType):
      raise UnsafePickleError(f"persistent id names {type(storage_type).__name__}, not a torch storage type")
    if not isinstance(key, (str, int)) or not isinstance(numel, int) or numel < 0:
      raise PthFormatError("persistent id with a malformed key or element count")
    if len(pid) > 5 and pid[5] is not None:
      raise PthFormatError("legacy storage views are not supported; re-save the file with a recent torch")
    return self._load_storage(storage_type, str(key), numel)

  def load_build(self):
    if len(self.stack) < 2 or not isinstance(self.stack[-2], collections.OrderedDict):
      raise UnsafePickleError("BUILD on something else than a state_dict's OrderedDict")
    self.stack.pop()  # The state_dict's `_metadata` (module versions): not needed.

  dispatch[pickle.BUILD[0]] = load_build

  def load(self):
    try:
      return _check_state_dict_value(super().load(), 0)
    except (UnsafePickleError, PthFormatError):
      raise
    except ArrayPickleError as e:  # the budget
      raise PthFormatError(str(e)) from None
    except (RecursionError, MemoryError) as e:
      raise PthFormatError(f"malformed pickle ({type(e).__name__})") from None
    except Exception as e:  # pylint: disable=broad-except
      raise PthFormatError(f"not a readable PyTorch state_dict ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _check_state_dict_value(value: Any, depth: int, seen: set | None = None) -> Any:
  """Refuses anything but tensors, (ordered) dicts, lists, tuples and plain scalars, nested <= MAX_DEPTH.
  Shared containers are checked once (`seen`), so a file of shared references cannot make the walk explode."""
  seen = set() if seen is None else seen
  if depth > MAX_DEPTH:
    raise PthFormatError(f"nested deeper than {MAX_DEPTH} levels")
  if isinstance(value, (dict, list, tuple)):
    if id(value) in seen:
      return value
    seen.add(id(value))
  if isinstance(value, dict):
    for k, v in value.items():
      if not isinstance(k, (str, int)):
        raise PthFormatError(f"state_dict key of type {type(k).__name__}")
      _check_state_dict_value(v, depth + 1, seen)
  elif isinstance(value, (list, tuple)):
    for v in value:
      _check_state_dict_value(v, depth + 1, seen)
  elif not isinstance(value, (np.ndarray, _PendingTensor, str, bytes, int, float, bool, type(None))):
    raise PthFormatError(f"value of type {type(value).__name__} in a state_dict")
  return value


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


def resolve_pending(obj, storages, path, budget: "Budget | None" = None, depth: int = 0, done=None):
  """`obj` with every pending tensor rebuilt from `storages` {key: array} (legacy .pth files); a shared tensor or
  container is resolved once (`done`)."""
  done = {} if done is None else done
  if depth > MAX_DEPTH:
    raise PthFormatError(f"{path}: nested deeper than {MAX_DEPTH} levels")
  if not isinstance(obj, (_PendingTensor, dict, list, tuple)):
    return obj
  if id(obj) in done:
    return done[id(obj)]
  if isinstance(obj, _PendingTensor):
    if obj.storage.key not in storages:
      raise PthFormatError(f"{path}: storage {obj.storage.key} is missing")
    out = rebuild_tensor(storages[obj.storage.key], *obj.args[:6], budget=budget)
  elif isinstance(obj, dict):
    out = type(obj)((k, resolve_pending(v, storages, path, budget, depth + 1, done)) for k, v in obj.items())
  else:
    out = type(obj)(resolve_pending(v, storages, path, budget, depth + 1, done) for v in obj)
  done[id(obj)] = out
  return out


_TORCH_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
}


# --------------------------------------------------------------------------------------------------------------
# numpy-only pickles (boundary files).

MAX_DEPTH = 16             # containers nested deeper than this are refused (official files nest 3 deep)
MAX_OBJECTS = 1_000_000    # values the final walk may visit


class ArrayPickleError(pickle.UnpicklingError, ValueError):
  """A boundary pickle this reader refuses (one line: what and why)."""


# numpy dtypes a boundary may hold: plain bool / int / uint / float / complex ('O' only as the official 0-d
# object wrapper, which becomes the Python value it holds, never an object array).
_PLAIN_DTYPES = frozenset(np.dtype(c).str[1:] for c in "?bBhHiIlLqQefdgFDG") | {"b1"}
_OBJECT_DTYPES = frozenset({"O", "O4", "O8"})


class _DTypeStandIn:
  """What `numpy.dtype(name, align, copy)` + BUILD(state) would make, without numpy's own __setstate__ (a
  forged state can make numpy read raw bytes as object pointers)."""

  def __init__(self, name=None, align=False, copy=False):
    del align, copy
    if not isinstance(name, str) or name not in _PLAIN_DTYPES | _OBJECT_DTYPES:
      raise ArrayPickleError(f"dtype {name!r} is not allowed in a boundary file (plain numbers only)")
    self.is_object = name in _OBJECT_DTYPES
    self.dtype = None if self.is_object else np.dtype(name)

  def build(self, state) -> None:
    if not isinstance(state, tuple) or len(state) < 5 or any(v is not None for v in state[2:5]):
      raise ArrayPickleError("dtype with fields or sub-arrays is not allowed in a boundary file")
    if state[1] not in ("<", ">", "|", "="):
      raise ArrayPickleError(f"dtype byte order {state[1]!r} is invalid")
    if self.dtype is not None and state[1] in "<>":
      self.dtype = self.dtype.newbyteorder(state[1])


class _ArrayStandIn:
  """An ndarray announced by `_reconstruct`; BUILD gives it its value (a fresh numeric array, or the element of
  the official 0-d object wrapper). Declared sizes are checked against the bytes present before anything is
  allocated, and every array allocated is charged to the reader's budget."""

  def __init__(self, budget: "Budget"):
    self.budget = budget
    self.value: Any = _UNBUILT

  def build(self, state) -> None:
    if isinstance(state, tuple) and len(state) == 5:
      state = state[1:]
    if not isinstance(state, tuple) or len(state) != 4:
      raise ArrayPickleError("array state is malformed")
    shape, dtype, fortran, data = state
    if (not isinstance(shape, tuple) or len(shape) > 32
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
      raise ArrayPickleError(f"array shape {shape!r} is malformed")
    if not isinstance(dtype, _DTypeStandIn):
      raise ArrayPickleError(f"array dtype {type(dtype).__name__} is not a numpy dtype")
    count = math.prod(shape)
    if dtype.is_object:  # The official wrapper: np.save of a 0-d object array holding a dict.
      if shape != () or not isinstance(data, list) or len(data) != 1:
        raise ArrayPickleError(f"object array of shape {shape} is not allowed in a boundary file (only the "
                               "0-d wrapper of the official format)")
      self.value = data[0]
      return
    if not isinstance(data, (bytes, bytearray)):
      raise ArrayPickleError(f"array data is a {type(data).__name__}, expected raw bytes")
    if count * dtype.dtype.itemsize != len(data):
      raise ArrayPickleError(f"array of shape {shape} {dtype.dtype} declares {count * dtype.dtype.itemsize} "
                             f"bytes but the file holds {len(data)}")
    self.budget.spend(len(data))
    array = np.frombuffer(bytes(data), dtype.dtype).reshape(shape, order="F" if fortran else "C")
    self.value = np.array(array, dtype=dtype.dtype.newbyteorder("="))


_UNBUILT = object()


class Budget:
  """Bytes the reader may allocate for arrays: a multiple of the input's size, so a small file cannot make it
  allocate much (arrays re-built from shared bytes, tensors re-read from one storage)."""

  def __init__(self, allowance: int):
    self.allowance = int(allowance)
    self.spent = 0

  def spend(self, nbytes: int) -> None:
    self.spent += int(nbytes)
    if self.spent > self.allowance:
      raise ArrayPickleError(f"the arrays declared need more than {self.allowance} bytes, more than the file "
                             "can hold")


def _ndarray_marker():
  raise ArrayPickleError("numpy.ndarray cannot be called in a boundary file")


def _latin1_encode(text, encoding="latin1", errors="strict"):
  """The only use of `_codecs.encode` in numpy pickles: bytes written as latin-1 text (protocol 2)."""
  if not isinstance(text, str) or not isinstance(encoding, str) or errors != "strict":
    raise ArrayPickleError(f"refused _codecs.encode({type(text).__name__}, {encoding!r}, {errors!r})")
  try:
    known = codecs.lookup(encoding).name
  except LookupError:
    known = ""
  if known != "iso8859-1":
    raise ArrayPickleError(f"refused _codecs.encode(..., {encoding!r})")
  return codecs.encode(text, "latin1")


class ArrayUnpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """The pure-Python unpickler with three numpy globals replaced by stand-ins: `ndarray` / `_reconstruct` /
  `dtype` / `scalar` only record what the file declares, and BUILD fills them in after checking it. No numpy
  object is ever made from unchecked state, and no object array is ever made at all."""

  dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access

  def __init__(self, data: bytes):
    super().__init__(io.BytesIO(data))
    self.budget = Budget(2 * len(data) + (1 << 20))
    self._allowed = {("numpy", "ndarray"): _ndarray_marker, ("numpy", "dtype"): _DTypeStandIn,
                     ("_codecs", "encode"): _latin1_encode}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
      self._allowed[(module, "_reconstruct")] = self._reconstruct
      self._allowed[(module, "scalar")] = self._scalar

  def _reconstruct(self, cls, shape=(0,), typecode=b"b"):
    del shape, typecode
    if cls is not _ndarray_marker:
      raise ArrayPickleError("_reconstruct of something else than numpy.ndarray")
    return _ArrayStandIn(self.budget)

  def _scalar(self, dtype, data=None):
    if not isinstance(dtype, _DTypeStandIn) or dtype.is_object:
      raise ArrayPickleError("numpy scalar of an object or unknown dtype")
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.dtype.itemsize:
      raise ArrayPickleError(f"numpy scalar of {dtype.dtype} with {len(data) if hasattr(data, '__len__') else '?'}"
                             " bytes")
    return np.frombuffer(bytes(data), dtype.dtype)[0]

  def find_class(self, module: str, name: str):
    try:
      return self._allowed[(module, name)]
    except KeyError:
      raise ArrayPickleError(f"global {module}.{name} is not allowed in a boundary file") from None

  def persistent_load(self, pid):
    raise ArrayPickleError("persistent ids are not allowed in a boundary file")

  def load_build(self):
    if len(self.stack) < 2:
      raise ArrayPickleError("malformed BUILD in a boundary file")
    target = self.stack[-2]  # BUILD pops the state (stack[-1]) and sets it on the object below.
    if not isinstance(target, (_ArrayStandIn, _DTypeStandIn)):
      raise ArrayPickleError(f"BUILD on {type(target).__name__} is not allowed in a boundary file")
    target.build(self.stack.pop())

  dispatch[pickle.BUILD[0]] = load_build


def loads_arrays(data: bytes) -> Any:
  """Unpickles `data` admitting only numeric numpy arrays / scalars and builtin containers, numbers, strings.

  The official 0-d object wrapper becomes the value it holds. Raises ArrayPickleError (a ValueError and a
  pickle.UnpicklingError) for anything else, for malformed input of any kind and for nesting deeper than
  MAX_DEPTH; never builds an object array and never allocates much more than len(data).
  """
  try:
    value = ArrayUnpickler(data).load()
    return _plain_value(value, _Walk())
  except ArrayPickleError:
    raise
  except RecursionError:
    raise ArrayPickleError(f"nested deeper than {MAX_DEPTH} levels") from None
  except MemoryError:
    raise ArrayPickleError("the declared contents do not fit in memory") from None
  except Exception as e:  # pylint: disable=broad-except
    # Any other failure of the pickle machinery on a malformed file: one line, never a traceback.
    raise ArrayPickleError(f"malformed pickle ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                           ) from None


class _Walk:
  """Bookkeeping of the final walk: converted containers by id (shared ones are converted once), cycles."""

  def __init__(self):
    self.done: dict[int, Any] = {}
    self.active: set[int] = set()
    self.visits = 0


def _plain_value(value: Any, walk: _Walk, depth: int = 0) -> Any:
  """`value` with stand-ins replaced by their arrays/values; refuses other types, cycles and deep nesting."""
  walk.visits += 1
  if walk.visits > MAX_OBJECTS:
    raise ArrayPickleError(f"more than {MAX_OBJECTS} values")
  if depth > MAX_DEPTH:
    raise ArrayPickleError(f"nested deeper than {MAX_DEPTH} levels")
  if isinstance(value, (str, bytes, int, float, complex, bool, type(None), np.generic, np.ndarray)):
    if isinstance(value, np.ndarray) and value.dtype.hasobject:
      raise ArrayPickleError("object arrays are not allowed in a boundary file")
    return value
  if not isinstance(value, (_ArrayStandIn, dict, list, tuple)):
    raise ArrayPickleError(f"value of type {type(value).__name__} is not allowed in a boundary file")
  key = id(value)
  if key in walk.done:
    return walk.done[key]
  if key in walk.active:
    raise ArrayPickleError("a container holds itself")
  walk.active.add(key)
  if isinstance(value, _ArrayStandIn):
    if value.value is _UNBUILT:
      raise ArrayPickleError("an array without data")
    out = _plain_value(value.value, walk, depth + 1)
  elif isinstance(value, dict):
    out = {}
    for k, v in value.items():
      k = _plain_value(k, walk, depth + 1)
      if not isinstance(k, (str, bytes, int, float, bool, type(None))):
        raise ArrayPickleError(f"dict key of type {type(k).__name__} is not allowed in a boundary file")
      out[k] = _plain_value(v, walk, depth + 1)
  else:
    out = type(value)(_plain_value(v, walk, depth + 1) for v in value)
  walk.active.discard(key)
  walk.done[key] = out
  return out
