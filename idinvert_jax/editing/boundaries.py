"""Semantic boundaries: reading (official pickled .npy, plain arrays, project .npz), writing, and training.

A boundary is the unit normal of a hyperplane in W+ that separates codes with and without an attribute
(InterFaceGAN). Official files are `np.save`d 0-d object arrays holding a pickled dict
{'boundary': float32 [1, L, 512], 'meta_data': {'manipulate_layers': [...]}}; they are read with
`untrusted.loads_arrays`, which can only build numpy arrays, dtypes and plain containers, never arbitrary objects.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from idinvert_jax import files, untrusted
from idinvert_jax.editing.manipulate import layerwise_direction


class BoundaryFileError(ValueError):
  """A boundary file that cannot be read or would need unsafe unpickling."""


@dataclasses.dataclass
class Boundary:
  """A semantic boundary.

  Attributes:
    direction: [L, D] layer-wise normal, or [D] for a W-space normal (repeated over layers when editing).
    layers: W+ layers to edit (None = all).
    accuracy: held-out accuracy of the classifier that produced it (None if unknown).
    attribute: attribute name ('' if unknown).
    meta: free-form JSON-able details (training settings, source file).
  """
  direction: np.ndarray
  layers: tuple[int, ...] | None = None
  accuracy: float | None = None
  attribute: str = ""
  meta: dict = dataclasses.field(default_factory=dict)

  def layerwise(self, num_layers: int) -> np.ndarray:
    """[num_layers, D] direction."""
    return layerwise_direction(self.direction, num_layers)


def _read_npy(path: Path) -> Any:
  """np.load without pickles; object arrays (the official format) go through the restricted unpickler."""
  with open(path, "rb") as f:
    try:
      version = np.lib.format.read_magic(f)
      read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                     else np.lib.format.read_array_header_2_0)
      shape, fortran, dtype = read_header(f)
    except Exception as e:  # pylint: disable=broad-except
      raise BoundaryFileError(f"{path}: not a .npy file ({e}); pass an official boundary .npy, a plain array "
                              ".npy or a project .npz.") from None
    if not dtype.hasobject:
      # The declared size must be the bytes that follow: numpy would allocate whatever the header claims.
      present = os.fstat(f.fileno()).st_size - f.tell()
      declared = math.prod(shape) * dtype.itemsize
      if dtype.fields is not None or dtype.subdtype is not None or declared != present:
        raise BoundaryFileError(f"{path}: its header declares {shape} {dtype} ({declared} bytes) but {present} "
                                "bytes follow; pass an intact boundary file.")
      return np.array(np.frombuffer(f.read(present), dtype).reshape(shape, order="F" if fortran else "C"))
    try:
      value = untrusted.loads_arrays(f.read())
    except ValueError as e:
      raise BoundaryFileError(f"{path}: refused to unpickle ({e}); only numpy arrays and plain dicts/lists are "
                              "accepted - re-save the boundary as a plain array or a project .npz.") from None
  if isinstance(value, np.ndarray) and value.shape == () and value.dtype == object:
    value = value[()]
  return value


def load_boundary(path: str | os.PathLike) -> Boundary:
  """Reads an official pickled .npy, a plain [1, D] / [D] / [L, D] / [1, L, D] .npy, or a project .npz."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"boundary file {path} does not exist; pass the path of a .npy or .npz boundary.")
  if path.suffix == ".npz":
    return _load_npz(path)
  value = _read_npy(path)
  try:
    return _boundary_of(value, path)
  except (TypeError, AttributeError, ValueError, OverflowError) as e:
    if isinstance(e, BoundaryFileError):
      raise
    raise BoundaryFileError(f"{path}: not an official boundary ({type(e).__name__}: {e}); pass a float array "
                            "[1, D] / [1, L, D] or an official boundary dict.") from None


def _boundary_of(value: Any, path: Path) -> Boundary:
  meta = {"source": str(path)}
  if isinstance(value, dict):
    if "boundary" not in value:
      raise BoundaryFileError(f"{path}: dict without a 'boundary' entry (keys {sorted(map(str, value))}); "
                              "pass an official boundary file.")
    meta_data = value.get("meta_data") or {}
    if not isinstance(meta_data, dict):
      raise BoundaryFileError(f"{path}: meta_data is a {type(meta_data).__name__}, expected a dict.")
    layers = meta_data.get("manipulate_layers") or None
    direction = np.asarray(value["boundary"], dtype=np.float32)
    meta["meta_data"] = _jsonable(meta_data)
  elif isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
    layers, direction = None, value.astype(np.float32)
  else:
    raise BoundaryFileError(f"{path}: holds {type(value).__name__}, not a boundary; pass a float array "
                            "[1, D] / [1, L, D] or an official boundary dict.")
  return Boundary(direction=_squeeze_direction(direction, path),
                  layers=None if layers is None else tuple(int(i) for i in layers),
                  attribute=path.stem, meta=meta)


def _squeeze_direction(direction: np.ndarray, path) -> np.ndarray:
  if direction.ndim >= 2 and direction.shape[0] == 1:
    direction = direction[0]
  if direction.ndim not in (1, 2) or not np.all(np.isfinite(direction)):
    raise BoundaryFileError(f"{path}: boundary of shape {direction.shape} (or with NaN/inf); expected finite "
                            "[1, D], [D], [L, D] or [1, L, D].")
  return direction


def _jsonable(value):
  return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _load_npz(path: Path) -> Boundary:
  try:
    with np.load(path, allow_pickle=False) as data:
      direction = np.asarray(data["boundary"], dtype=np.float32)
      layers = data["layers"] if "layers" in data else np.zeros((0,), np.int32)
      accuracy = float(data["accuracy"]) if "accuracy" in data else float("nan")
      attribute = str(data["attribute"]) if "attribute" in data else path.stem
      meta = json.loads(str(data["meta"])) if "meta" in data else {}
  except (KeyError, ValueError, OSError) as e:
    raise BoundaryFileError(f"{path}: not a project boundary .npz ({e}); write it with save_boundary().") from None
  return Boundary(direction=_squeeze_direction(direction, path),
                  layers=tuple(int(i) for i in layers) if layers.size else None,
                  accuracy=None if np.isnan(accuracy) else accuracy, attribute=attribute, meta=meta)


def save_boundary(path: str | os.PathLike, boundary: Boundary) -> Path:
  """Writes the project format (.npz: boundary, layers, accuracy, attribute, meta as JSON) atomically."""
  path = Path(path)
  if path.suffix != ".npz":
    raise ValueError(f"save_boundary: {path} must end in .npz (the project boundary format).")
  buf = io.BytesIO()
  np.savez(buf,
           boundary=np.asarray(boundary.direction, np.float32),
           layers=np.asarray(boundary.layers if boundary.layers is not None else [], np.int32),
           accuracy=np.float32(np.nan if boundary.accuracy is None else boundary.accuracy),
           attribute=np.str_(boundary.attribute),
           meta=np.str_(json.dumps(_jsonable(boundary.meta), sort_keys=True)))
  return files.atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------------------------
# Boundary training (InterFaceGAN in W+).

def read_scores(path: str | os.PathLike, column: str | None = None) -> np.ndarray:
  """Attribute scores/labels, one per code, from a .npy ([N] or [N, 1]) or a .csv/.txt file.

  A CSV may have a header; then `column` (or its last column) is used. Without a header the last column of
  each row is the score (so `name,score` and bare `score` lines both work).
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"labels file {path} does not exist; pass a .npy or .csv of one score per code.")
  if path.suffix == ".npy":
    scores = np.load(path, allow_pickle=False)
  else:
    with open(path, newline="") as f:
      rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    if not rows:
      raise ValueError(f"labels file {path} is empty; write one score per line.")
    index = -1
    try:
      float(rows[0][-1] if column is None else "x")
      has_header = column is not None
    except ValueError:
      has_header = True
    if has_header:
      header = [cell.strip() for cell in rows[0]]
      if column is not None:
        if column not in header:
          raise ValueError(f"labels file {path} has no column {column!r} (columns {header}); pick one of them.")
        index = header.index(column)
      rows = rows[1:]
    try:
      scores = np.array([float(row[index]) for row in rows], dtype=np.float32)
    except (ValueError, IndexError) as e:
      raise ValueError(f"labels file {path}: non-numeric score ({e}); write numbers only.") from None
  scores = np.asarray(scores, dtype=np.float32).reshape(-1)
  if not np.all(np.isfinite(scores)):
    raise ValueError(f"labels file {path} holds NaN/inf scores; drop or fix those rows.")
  return scores


@dataclasses.dataclass
class ConfidentSplit:
  """Indices (into the input codes) of the train / validation / remaining samples and their 0/1 labels."""
  train: np.ndarray
  train_labels: np.ndarray
  val: np.ndarray
  val_labels: np.ndarray
  remaining: np.ndarray
  remaining_labels: np.ndarray


def split_confident(scores: np.ndarray, ratio: float = 0.02, split: float = 0.7, seed: int = 0) -> ConfidentSplit:
  """InterFaceGAN's sample selection.

  The `ratio` fraction (or count, if > 1) of highest scores are positives and as many lowest scores negatives;
  each group is shuffled and split `split` : 1 - split into train and validation. The samples in between form
  the "remaining" set, labelled by the midpoint of the extreme scores.
  """
  scores = np.asarray(scores, dtype=np.float64).reshape(-1)
  num = scores.shape[0]
  chosen = int(num * ratio) if ratio <= 1 else int(ratio)
  chosen = min(chosen, num // 2)
  num_train = int(chosen * split)
  if num_train < 1 or chosen - num_train < 1:
    raise ValueError(f"boundary training: {num} samples with ratio={ratio}, split={split} leave "
                     f"{num_train} train / {chosen - num_train} validation samples per class; use more samples "
                     "or a larger --ratio.")
  order = np.argsort(-scores, kind="stable")
  rng = np.random.default_rng(seed)
  positives = rng.permutation(order[:chosen])
  negatives = rng.permutation(order[num - chosen:])
  remaining = order[chosen:num - chosen]
  midpoint = (scores[order[0]] + scores[order[-1]]) / 2
  ones, zeros = np.ones((chosen,), np.float32), np.zeros((chosen,), np.float32)
  return ConfidentSplit(
      train=np.concatenate([positives[:num_train], negatives[:num_train]]),
      train_labels=np.concatenate([ones[:num_train], zeros[:num_train]]),
      val=np.concatenate([positives[num_train:], negatives[num_train:]]),
      val_labels=np.concatenate([ones[num_train:], zeros[num_train:]]),
      remaining=remaining,
      remaining_labels=(scores[remaining] >= midpoint).astype(np.float32))


def _classifier_loss(params, features, signs, method: str, c: float):
  """Regularised mean loss: squared-hinge (L2-SVM, as LinearSVC) or logistic; signs are +-1."""
  weight, bias = params
  margins = signs * (features @ weight + bias)
  if method == "svm":
    data_loss = jnp.mean(jnp.square(jax.nn.relu(1.0 - margins)))
  else:
    data_loss = jnp.mean(jax.nn.softplus(-margins))
  return data_loss + 0.5 * jnp.sum(jnp.square(weight)) / (c * features.shape[0])


def fit_linear_classifier(features: jnp.ndarray, labels: jnp.ndarray, method: str = "svm", c: float = 1.0,
                          num_steps: int = 200) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Fits sign(features @ w + b) to 0/1 labels with full-batch L-BFGS; jittable and vmappable.

  Features are centred and divided by one global scale before fitting (better conditioning; a scalar scale and
  a shift do not change the normal's direction), and the weight is mapped back to the input space.

  Returns:
    (w [F], b []) in the input space.
  """
  if method not in ("svm", "logistic"):
    raise ValueError(f"classifier method {method!r}; use 'svm' or 'logistic'.")
  mean = jnp.mean(features, axis=0)
  scale = jnp.std(features) + 1e-12
  normalised = (features - mean) / scale
  signs = 2.0 * labels - 1.0
  loss_fn = lambda p: _classifier_loss(p, normalised, signs, method, c)
  optimizer = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss_fn)

  def step(_, carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = optimizer.update(grad, state, params, value=value, grad=grad, value_fn=loss_fn)
    return optax.apply_updates(params, updates), state

  params = (jnp.zeros(features.shape[1:], features.dtype), jnp.zeros((), features.dtype))
  (weight, bias), _ = jax.lax.fori_loop(0, num_steps, step, (params, optimizer.init(params)))
  weight = weight / scale
  return weight, bias - mean @ weight


def _accuracy(weight, bias, features, labels) -> float:
  predictions = (np.asarray(features) @ np.asarray(weight) + np.asarray(bias)) > 0
  return float(np.mean(predictions == (np.asarray(labels) > 0.5))) if len(labels) else float("nan")


def train_boundary(codes: np.ndarray,
                   scores: np.ndarray,
                   layers: Sequence[int] | None = None,
                   per_layer: bool = False,
                   ratio: float = 0.02,
                   split: float = 0.7,
                   method: str = "svm",
                   c: float = 1.0,
                   num_steps: int = 200,
                   seed: int = 0,
                   attribute: str = "") -> Boundary:
  """Fits a W+ boundary separating high from low attribute scores (InterFaceGAN, on the chosen layers).

  Args:
    codes: [N, L, D] W+ codes (sampled from the generator or inverted).
    scores: [N] attribute scores or 0/1 labels (for binary labels use ratio=0.5 to keep every sample).
    layers: W+ layers the boundary lives on (None = all); the direction is zero on the others.
    per_layer: fit one classifier per layer (each layer's normal unit-norm, as the official files) instead of
      one on the concatenated layers.
    ratio, split, seed: sample selection (see `split_confident`).
    method, c, num_steps: classifier (see `fit_linear_classifier`).
    attribute: name stored with the boundary.

  Returns:
    Boundary with direction [L, D], `layers`, and accuracy = validation accuracy (averaged over layers when
    per_layer). The concatenated normal is scaled to norm sqrt(#layers), i.e. unit norm per layer on average,
    so the official distances (-3..3) mean the same for both kinds.
  """
  codes = np.asarray(codes, dtype=np.float32)
  scores = np.asarray(scores, dtype=np.float32).reshape(-1)
  if codes.ndim != 3 or codes.shape[0] != scores.shape[0]:
    raise ValueError(f"boundary training: codes {codes.shape} must be [N, L, D] with one score each "
                     f"(got {scores.shape[0]} scores).")
  num_layers, dim = codes.shape[1:]
  layer_ids = list(range(num_layers)) if layers is None else sorted({int(i) for i in layers})
  if not layer_ids or not all(0 <= i < num_layers for i in layer_ids):
    raise ValueError(f"boundary training: layers {layers} out of range 0..{num_layers - 1}; pick valid layers.")
  chosen = split_confident(scores, ratio, split, seed)
  selected = codes[:, layer_ids]                                   # [N, K, D]
  direction = np.zeros((num_layers, dim), np.float32)
  fit = jax.jit(fit_linear_classifier, static_argnames=("method", "num_steps"))
  metrics = {}
  if per_layer:
    fit_layers = jax.vmap(lambda x: fit(x, jnp.asarray(chosen.train_labels), method, c, num_steps),
                          in_axes=1)
    weights, biases = fit_layers(jnp.asarray(selected[chosen.train]))
    weights, biases = np.asarray(weights), np.asarray(biases)
    val_acc = [_accuracy(weights[k], biases[k], selected[chosen.val, k], chosen.val_labels)
               for k in range(len(layer_ids))]
    rest_acc = [_accuracy(weights[k], biases[k], selected[chosen.remaining, k], chosen.remaining_labels)
                for k in range(len(layer_ids))]
    norms = np.linalg.norm(weights, axis=1, keepdims=True)
    direction[layer_ids] = weights / np.maximum(norms, 1e-12)
    metrics = {"val_accuracy_per_layer": val_acc, "remaining_accuracy_per_layer": rest_acc}
    accuracy, remaining_accuracy = float(np.mean(val_acc)), float(np.nanmean(rest_acc) if rest_acc else np.nan)
  else:
    flat = selected.reshape(selected.shape[0], -1)
    weight, bias = fit(jnp.asarray(flat[chosen.train]), jnp.asarray(chosen.train_labels), method, c, num_steps)
    weight, bias = np.asarray(weight), np.asarray(bias)
    accuracy = _accuracy(weight, bias, flat[chosen.val], chosen.val_labels)
    remaining_accuracy = _accuracy(weight, bias, flat[chosen.remaining], chosen.remaining_labels)
    norm = max(float(np.linalg.norm(weight)), 1e-12)
    direction[layer_ids] = (weight / norm * np.sqrt(len(layer_ids))).reshape(len(layer_ids), dim)
  if not np.all(np.isfinite(direction)):
    raise ValueError("boundary training diverged (NaN/inf); check the codes and scores for NaN or use "
                     "--method=logistic.")
  meta = dict(metrics, method=method, c=c, num_steps=num_steps, ratio=ratio, split=split, seed=seed,
              per_layer=per_layer, num_samples=int(codes.shape[0]), num_train=int(len(chosen.train)),
              num_val=int(len(chosen.val)), remaining_accuracy=remaining_accuracy)
  return Boundary(direction=direction, layers=tuple(layer_ids), accuracy=accuracy, attribute=attribute, meta=meta)
