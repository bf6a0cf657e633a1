"""Attribute metrics for the synthetic-faces dataset: a small CNN attribute predictor, editing success, and the
paper's semantic analysis of inverted codes through boundaries.

- `train_attribute_classifier` renders labelled faces (`idinvert_jax.data.synthetic_faces`), trains one small
  CNN that predicts every attribute at once (a logit per binary attribute, a value per continuous one, scaled to
  [0, 1] by the attribute's range), and reports held-out accuracy (binary, with the majority-class rate as chance)
  or R^2 (continuous) per attribute.
- `editing_success`: after an edit meant to move one attribute, the fraction of images where the predictor says
  it moved the intended way, and the mean absolute change of every OTHER attribute (entanglement); both matter.
- `boundary_attribute_prediction`: the paper's semantic analysis: predict a binary attribute from codes alone as
  sign(n . w + b) with a boundary normal n, compared with labels: precision, recall, accuracy and the
  threshold-free ROC AUC (official boundaries carry no offset b, so AUC is the fair number for them).
"""
from __future__ import annotations

import functools
import time
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from idinvert_jax.data import synthetic_faces
from idinvert_jax.editing.manipulate import layerwise_direction


class AttributeNet(nn.Module):
  """Small CNN: images [N, H, W, 3] in [-1, 1] -> (outputs [N, len(attributes)], penultimate features).

  Outputs are logits for binary attributes and range-scaled values (0 = low, 1 = high) for continuous ones.
  Strided convs + global mean pooling, so any resolution >= 16 px works.
  """
  attributes: tuple[str, ...]
  channels: tuple[int, ...] = (16, 32, 64, 64)
  feature_dim: int = 64

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    for index, channels in enumerate(self.channels):
      x = nn.relu(nn.Conv(channels, (3, 3), strides=1 if index == 0 else 2)(x))
    features = nn.relu(nn.Dense(self.feature_dim)(jnp.mean(x, axis=(1, 2))))
    return nn.Dense(len(self.attributes))(features), features


def _kinds(attributes: Sequence[str]) -> np.ndarray:
  """True where the attribute is binary."""
  return np.array([synthetic_faces.ATTRIBUTES[name].kind == "binary" for name in attributes])


def _ranges(attributes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  low = np.array([synthetic_faces.ATTRIBUTES[name].low for name in attributes], np.float32)
  high = np.array([synthetic_faces.ATTRIBUTES[name].high for name in attributes], np.float32)
  return low, high


def _targets(labels: Mapping[str, np.ndarray], attributes: Sequence[str]) -> np.ndarray:
  """[N, A] training targets: 0/1 for binary attributes, (value - low) / (high - low) for continuous ones."""
  low, high = _ranges(attributes)
  values = np.stack([np.asarray(labels[name], np.float32) for name in attributes], axis=1)
  return np.where(_kinds(attributes), values, (values - low) / (high - low)).astype(np.float32)


def _as_float_images(images) -> np.ndarray:
  """uint8 (file boundary) or float [-1, 1] images -> float32 [-1, 1] (numpy: no eager device ops)."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 127.5 - 1.0
  return images.astype(np.float32)


@functools.partial(jax.jit, static_argnums=0)
def _apply(module: AttributeNet, variables, images: jax.Array):
  return module.apply(variables, images)


def _loss(params, module: AttributeNet, binary: jax.Array, images: jax.Array, targets: jax.Array) -> jax.Array:
  outputs, _ = module.apply({"params": params}, images)
  bce = optax.sigmoid_binary_cross_entropy(outputs, targets)
  squared = jnp.square(outputs - targets)
  return jnp.mean(jnp.where(binary, bce, squared))


def _r2(prediction: np.ndarray, truth: np.ndarray) -> float:
  total = np.sum(np.square(truth - truth.mean()))
  return float(1.0 - np.sum(np.square(truth - prediction)) / total) if total > 0 else float("nan")


def evaluate_predictions(predicted: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]
                         ) -> dict[str, dict[str, Any]]:
  """Per attribute: binary -> accuracy (threshold 0.5) and chance (majority-class rate); continuous -> R^2."""
  out = {}
  for name, prediction in predicted.items():
    truth = np.asarray(labels[name], np.float32)
    if synthetic_faces.ATTRIBUTES[name].kind == "binary":
      positive_rate = float(np.mean(truth > 0.5))
      out[name] = {"kind": "binary", "metric": "accuracy",
                   "value": float(np.mean((prediction > 0.5) == (truth > 0.5))),
                   "chance": max(positive_rate, 1.0 - positive_rate)}
    else:
      out[name] = {"kind": "continuous", "metric": "r2", "value": _r2(np.asarray(prediction), truth)}
  return out


def train_attribute_classifier(resolution: int, num_images: int, steps: int, seed: int,
                               attributes: Sequence[str] | None = None, batch_size: int = 64,
                               learning_rate: float = 2e-3, holdout_fraction: float = 0.2
                               ) -> tuple[AttributeNet, dict[str, Any], dict[str, Any]]:
  """Trains the attribute predictor on rendered synthetic faces.

  Args:
    resolution: image size (32..256, the synthetic-faces range); use the model's resolution.
    num_images: faces rendered (indices 0..num_images-1 of `seed`); the last `holdout_fraction` are held out.
    steps: Adam steps on random minibatches of `batch_size` training images.
    seed: dataset seed and initialisation/minibatch seed.
    attributes: names to predict (default: all of `synthetic_faces.ATTRIBUTES`).

  Returns:
    (module, variables, report) with report = {'attributes': {name: {'kind', 'metric', 'value'[, 'chance']}},
    'num_train', 'num_holdout', 'steps', 'final_loss', 'seconds'}.
  """
  attributes = tuple(synthetic_faces.ATTRIBUTES if attributes is None else attributes)
  unknown = sorted(set(attributes) - set(synthetic_faces.ATTRIBUTES))
  if unknown:
    raise ValueError(f"train_attribute_classifier: unknown attributes {unknown}; use names from "
                     f"{sorted(synthetic_faces.ATTRIBUTES)}.")
  num_holdout = int(round(num_images * holdout_fraction))
  if num_images - num_holdout < 2 or num_holdout < 2 or steps < 1:
    raise ValueError(f"train_attribute_classifier: num_images={num_images}, steps={steps} leave too little to "
                     "train or hold out; use num_images >= 20 and steps >= 1.")
  start = time.perf_counter()
  images, labels = synthetic_faces.render(num_images, resolution, seed)
  images = _as_float_images(images)
  targets = _targets(labels, attributes)
  num_train = num_images - num_holdout

  module = AttributeNet(attributes=attributes)
  params, loss = _train(module, images[:num_train], targets[:num_train], _kinds(attributes), seed, steps,
                        min(batch_size, num_train), learning_rate)
  variables = {"params": params}

  held_out = predict_attributes(module, variables, images[num_train:])
  report = {"attributes": evaluate_predictions(held_out, {k: v[num_train:] for k, v in labels.items()}),
            "num_train": num_train, "num_holdout": num_holdout, "steps": steps, "final_loss": float(loss),
            "resolution": resolution, "seed": seed, "seconds": time.perf_counter() - start}
  return module, variables, report


def _train(module: AttributeNet, images: np.ndarray, targets: np.ndarray, binary: np.ndarray, seed: int,
           steps: int, batch_size: int, learning_rate: float) -> tuple[Any, jax.Array]:
  """Adam on random minibatches; two compiled programs (init, step), no eager ops in the loop.

  (A lax.scan over the steps was ~30x slower on XLA:CPU than this Python loop of one jitted step.)
  """
  images, targets, binary = jnp.asarray(images), jnp.asarray(targets), jnp.asarray(binary)
  key = jax.random.PRNGKey(seed)
  params, opt_state = _train_init(module, key, images[:1], learning_rate)
  loss = None
  for step in range(steps):
    params, opt_state, loss = _train_step(module, params, opt_state, images, targets, binary, key, step,
                                          batch_size, learning_rate)
  return params, loss


@functools.partial(jax.jit, static_argnames=("module", "learning_rate"))
def _train_init(module: AttributeNet, key: jax.Array, example: jax.Array, learning_rate: float):
  params = module.init(jax.random.fold_in(key, 2 ** 31), example)["params"]
  return params, optax.adam(learning_rate).init(params)


@functools.partial(jax.jit, static_argnames=("module", "batch_size", "learning_rate"))
def _train_step(module: AttributeNet, params, opt_state, images, targets, binary, key, step, batch_size: int,
                learning_rate: float):
  index = jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0, images.shape[0])
  loss, grads = jax.value_and_grad(_loss)(params, module, binary, images[index], targets[index])
  updates, opt_state = optax.adam(learning_rate).update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def _forward_in_batches(module: AttributeNet, variables, images, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  images = _as_float_images(images)
  outputs, features = zip(*(_apply(module, variables, images[i:i + batch_size])
                            for i in range(0, images.shape[0], batch_size)))
  return np.concatenate(outputs), np.concatenate(features)


def predict_attributes(module: AttributeNet, variables, images, batch_size: int = 256) -> dict[str, np.ndarray]:
  """Predicted attributes of images (uint8 or float [-1, 1]): {name: [N]} in the attribute's own units
  (binary: probability of 1; continuous: value in [low, high] units, not clipped)."""
  outputs, _ = _forward_in_batches(module, variables, images, batch_size)
  low, high = _ranges(module.attributes)
  binary = _kinds(module.attributes)
  values = np.where(binary, 1.0 / (1.0 + np.exp(-outputs)), low + (high - low) * outputs)
  return {name: values[:, i].astype(np.float32) for i, name in enumerate(module.attributes)}


def attribute_features(module: AttributeNet, variables, images, batch_size: int = 256) -> tuple[np.ndarray, str]:
  """Penultimate features [N, feature_dim] and their name, for `frechet.frechet_distance`."""
  _, features = _forward_in_batches(module, variables, images, batch_size)
  return features, f"attribute_net_penultimate{module.feature_dim}"


def editing_success(before_attrs: Mapping[str, np.ndarray], after_attrs: Mapping[str, np.ndarray],
                    attribute: str, direction: float) -> dict[str, Any]:
  """How well an edit moved `attribute` the intended way and how much it disturbed the others.

  Args:
    before_attrs, after_attrs: predicted attributes {name: [N]} of the images before and after the edit.
    attribute: the attribute the edit targets.
    direction: > 0 if the edit should increase it, < 0 if it should decrease it.

  Returns:
    {'attribute', 'direction', 'success_rate' (fraction with change * sign(direction) > 0),
     'mean_change' (signed, of the target attribute), 'other_mean_abs_change' {name: mean |change|},
     'other_mean_abs_change_avg', 'num'}.
  """
  if attribute not in before_attrs or attribute not in after_attrs:
    raise ValueError(f"editing_success: attribute {attribute!r} is not among the predictions "
                     f"{sorted(before_attrs)}; pick one of them.")
  if direction == 0:
    raise ValueError("editing_success: direction is 0; pass +1 (increase) or -1 (decrease).")
  change = np.asarray(after_attrs[attribute], np.float64) - np.asarray(before_attrs[attribute], np.float64)
  others = {name: float(np.mean(np.abs(np.asarray(after_attrs[name], np.float64) -
                                       np.asarray(before_attrs[name], np.float64))))
            for name in before_attrs if name != attribute and name in after_attrs}
  return {"attribute": attribute, "direction": float(np.sign(direction)),
          "success_rate": float(np.mean(change * np.sign(direction) > 0)),
          "mean_change": float(np.mean(change)), "other_mean_abs_change": others,
          "other_mean_abs_change_avg": float(np.mean(list(others.values()))) if others else float("nan"),
          "num": int(change.shape[0])}


def binarize_labels(values, attribute: str) -> np.ndarray:
  """Binary labels of a synthetic-faces attribute: as is for binary ones, above the range midpoint otherwise."""
  spec = synthetic_faces.ATTRIBUTES[attribute]
  threshold = 0.5 if spec.kind == "binary" else 0.5 * (spec.low + spec.high)
  return np.asarray(values) > threshold


def _roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Probability that a random positive scores above a random negative (ties count half): Mann-Whitney U."""
  positives, negatives = scores[labels], scores[~labels]
  if len(positives) == 0 or len(negatives) == 0:
    return float("nan")
  greater = np.sum(positives[:, None] > negatives[None, :])
  ties = np.sum(positives[:, None] == negatives[None, :])
  return float((greater + 0.5 * ties) / (len(positives) * len(negatives)))


def boundary_attribute_prediction(codes, direction, labels, offset: float = 0.0) -> dict[str, float]:
  """Predicts a binary attribute from codes through a boundary: positive where n . w + offset > 0.

  Args:
    codes: [N, L, D] W+ codes or [N, D] W codes.
    direction: boundary normal ([D], [1, D], [L, D] or [1, L, D]; a [D] normal applies to every W+ layer, and
      layers where the normal is zero do not count), e.g. `Boundary.direction`.
    labels: [N] booleans / 0-1 labels (see `binarize_labels` for continuous attributes).
    offset: the hyperplane's offset b (0 for official boundaries, which store only the normal).

  Returns:
    {'precision', 'recall', 'accuracy', 'auc', 'num', 'num_positive'} (precision is nan with no predicted
    positives; auc is threshold-free).
  """
  codes = np.asarray(codes, np.float64)
  labels = np.asarray(labels).reshape(-1) > 0.5
  if codes.ndim == 2:
    normal = np.asarray(direction, np.float64).reshape(-1)
    if normal.shape[0] != codes.shape[1]:
      raise ValueError(f"boundary_attribute_prediction: W codes {codes.shape} and normal {normal.shape} differ in "
                       "size; use the boundary of this generator.")
    scores = codes @ normal
  elif codes.ndim == 3:
    normal = layerwise_direction(direction, codes.shape[1]).astype(np.float64)
    scores = np.einsum("nld,ld->n", codes, normal)
  else:
    raise ValueError(f"boundary_attribute_prediction: codes have shape {codes.shape}; pass [N, L, D] or [N, D].")
  if labels.shape[0] != scores.shape[0]:
    raise ValueError(f"boundary_attribute_prediction: {scores.shape[0]} codes but {labels.shape[0]} labels; "
                     "pass one label per code.")
  scores = scores + offset
  predicted = scores > 0
  true_positive = float(np.sum(predicted & labels))
  return {"precision": true_positive / predicted.sum() if predicted.any() else float("nan"),
          "recall": true_positive / labels.sum() if labels.any() else float("nan"),
          "accuracy": float(np.mean(predicted == labels)), "auc": _roc_auc(scores, labels),
          "num": int(labels.shape[0]), "num_positive": int(labels.sum())}
