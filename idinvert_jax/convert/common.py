"""Shared machinery of the converters: an explicit key/shape table applied in either direction.

Each converter lists, for every variable of our model, the official state_dict key it comes from and how the
array is laid out there (`Entry`). `to_variables` and `to_state_dict` walk that one table, so import and export
cannot disagree, and every unknown, missing or mis-shaped key is reported by name in a single error.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping

import numpy as np

Path = tuple[str, ...]  # (collection, module, ..., leaf), e.g. ('params', 'block1', 'conv1', 'kernel')


class StateDictMismatchError(ValueError):
  """The state_dict does not match the model built from the config (names the offending keys)."""


@dataclasses.dataclass(frozen=True)
class Layout:
  """How an official array maps to ours: `ours = to_ours(official)`, `official = to_official(ours)`."""
  name: str
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_official: Callable[[np.ndarray], np.ndarray]


IDENTITY = Layout("identity", lambda a: a, lambda a: a)
# PyTorch conv [out, in, kh, kw] <-> HWIO [kh, kw, in, out].
CONV_OIHW = Layout("conv OIHW->HWIO", lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1))
# PyTorch linear [out, in] <-> [in, out].
DENSE_OI = Layout("dense [out,in]->[in,out]", lambda a: a.T, lambda a: a.T)
# NCHW maps with batch 1 ([1, C, H, W], e.g. noise [1, 1, r, r] or the 4x4 const) <-> NHWC.
MAP_NCHW = Layout("NCHW->NHWC", lambda a: a.transpose(0, 2, 3, 1), lambda a: a.transpose(0, 3, 1, 2))


@dataclasses.dataclass(frozen=True)
class Entry:
  """One variable: official key, our path, layout, and a default used when the key is absent (None: required)."""
  key: str
  path: Path
  layout: Layout = IDENTITY
  default: Callable[[tuple[int, ...]], np.ndarray] | None = None


@dataclasses.dataclass(frozen=True)
class Table:
  """The full mapping of one model: entries, plus official keys that are accepted and derived, not stored.

  `extra` maps such a key to a function (variables -> official array) used on export; on import its shape is
  checked against that function's output and, when `check_values`, its values too.
  """
  entries: tuple[Entry, ...]
  extra: Mapping[str, Callable[[Any], np.ndarray]] = dataclasses.field(default_factory=dict)
  check_values: frozenset[str] = frozenset()


def _get(tree: Mapping[str, Any], path: Path):
  for name in path:
    tree = tree[name]
  return tree


def _set(tree: dict, path: Path, value) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def flatten(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
  """Nested dict -> {path: leaf}."""
  out = {}
  for name, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, prefix + (name,)))
    else:
      out[prefix + (name,)] = value
  return out


def _summary(names: Iterable[str], limit: int = 8) -> str:
  names = sorted(names)
  shown = ", ".join(names[:limit])
  return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def to_variables(state_dict: Mapping[str, np.ndarray], table: Table, shapes: Mapping[Path, tuple[int, ...]],
                 what: str) -> dict[str, Any]:
  """official state_dict -> our nested variables; `shapes` are our expected shapes per path."""
  table_paths = {entry.path for entry in table.entries}
  if table_paths != set(shapes):
    raise AssertionError(f"{what} conversion table out of sync with the model: "
                         f"{_summary('/'.join(p) for p in table_paths ^ set(shapes))}")
  known = {entry.key for entry in table.entries} | set(table.extra)
  unknown = set(state_dict) - known
  missing = [e.key for e in table.entries if e.key not in state_dict and e.default is None]
  variables: dict[str, Any] = {}
  mis_shaped = []
  for entry in table.entries:
    expected = tuple(shapes[entry.path])
    if entry.key not in state_dict:
      if entry.default is not None:
        _set(variables, entry.path, np.asarray(entry.default(expected), np.float32))
      continue
    official = np.asarray(state_dict[entry.key])
    ours = entry.layout.to_ours(official) if official.ndim == len(expected) else official
    if tuple(ours.shape) != expected:
      mis_shaped.append(f"{entry.key} {tuple(official.shape)} (expected "
                        f"{tuple(entry.layout.to_official(np.empty(expected)).shape)})")
      continue
    _set(variables, entry.path, np.ascontiguousarray(ours, dtype=np.float32))
  problems = []
  if unknown:
    problems.append(f"unknown keys: {_summary(unknown)}")
  if missing:
    problems.append(f"missing keys: {_summary(missing)}")
  if mis_shaped:
    problems.append(f"mis-shaped keys: {_summary(mis_shaped)}")
  if not problems:
    for key, derive in table.extra.items():
      if key not in state_dict:
        continue
      want = np.asarray(derive(variables))
      got = np.asarray(state_dict[key])
      if got.shape != want.shape:
        problems.append(f"mis-shaped keys: {key} {got.shape} (expected {want.shape})")
      elif key in table.check_values and not np.allclose(got, want, rtol=1e-6, atol=1e-6):
        problems.append(f"key {key} does not match the config (expected the values {want.ravel()[:6]}...)")
  if problems:
    raise StateDictMismatchError(f"{what} state_dict does not match the model built from the config: "
                                 + "; ".join(problems) + " (check the file and the --config architecture)")
  return variables


def to_state_dict(variables: Mapping[str, Any], table: Table) -> dict[str, np.ndarray]:
  """Our variables -> official state_dict (same keys and layouts as the official PyTorch modules)."""
  have = flatten(variables)
  absent = ["/".join(e.path) for e in table.entries if e.path not in have]
  if absent:
    raise StateDictMismatchError(f"variables lack {_summary(absent)}; they do not hold the full official model "
                                 "(convert it from the official file first)")
  out = {}
  for entry in table.entries:
    out[entry.key] = np.array(entry.layout.to_official(np.asarray(_get(variables, entry.path))), order="C")
  for key, derive in table.extra.items():
    out[key] = np.array(derive(variables), order="C")
  return out


def shapes_of(shape_tree: Mapping[str, Any]) -> dict[Path, tuple[int, ...]]:
  """{path: shape} of a (jax.eval_shape) variables tree."""
  return {path: tuple(leaf.shape) for path, leaf in flatten(shape_tree).items()}
