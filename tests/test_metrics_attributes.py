"""Attribute metrics: the synthetic-faces predictor learns, editing success and boundary analysis on known data."""
import numpy as np
import pytest

from idinvert_jax.data import synthetic_faces
from idinvert_jax.metrics import attributes as attr


@pytest.fixture(scope="module")
def trained():
  return attr.train_attribute_classifier(resolution=32, num_images=320, steps=250, seed=0,
                                         attributes=("eyeglasses", "hair_color", "skin_tone"), batch_size=32,
                                         learning_rate=3e-3)


def test_classifier_learns_clearly_above_chance_on_held_out_faces(trained):
  _, _, report = trained
  scores = report["attributes"]
  assert report["num_train"] == 256 and report["num_holdout"] == 64
  # Chance for R^2 is 0; for the binary attribute the majority-class rate.
  assert scores["hair_color"]["metric"] == "r2" and scores["hair_color"]["value"] > 0.6, scores
  assert scores["skin_tone"]["value"] > 0.6, scores
  glasses = scores["eyeglasses"]
  assert glasses["metric"] == "accuracy" and glasses["value"] > glasses["chance"] + 0.1, scores


def test_predictions_follow_a_rendered_attribute_sweep(trained):
  module, variables, _ = trained
  images, _ = synthetic_faces.render_with({"skin_tone": [0.0, 0.5, 1.0]}, 32, seed=7, indices=[3, 3, 3])
  predicted = attr.predict_attributes(module, variables, images)
  assert set(predicted) == {"eyeglasses", "hair_color", "skin_tone"}
  assert predicted["skin_tone"][0] < predicted["skin_tone"][1] < predicted["skin_tone"][2]
  assert np.all((predicted["eyeglasses"] >= 0) & (predicted["eyeglasses"] <= 1))  # A probability.
  # Float [-1, 1] input gives the same predictions as uint8.
  again = attr.predict_attributes(module, variables, images.astype(np.float32) / 127.5 - 1)
  np.testing.assert_allclose(again["skin_tone"], predicted["skin_tone"], atol=1e-5)
  features, name = attr.attribute_features(module, variables, images)
  assert features.shape == (3, 64) and name == "attribute_net_penultimate64"


def test_editing_success_counts_direction_and_other_changes():
  before = {"smile": np.array([0.0, 0.0, 0.5, 0.9]), "yaw": np.array([0.0, 0.1, 0.2, 0.3])}
  after = {"smile": np.array([0.5, -0.1, 0.6, 0.9]), "yaw": np.array([0.2, 0.1, 0.0, 0.3])}
  up = attr.editing_success(before, after, "smile", +1)
  assert up["success_rate"] == pytest.approx(0.5)        # +0.5 and +0.1 moved up; -0.1 and 0 did not.
  assert up["mean_change"] == pytest.approx(0.125)
  assert up["other_mean_abs_change"] == {"yaw": pytest.approx(0.1)}
  assert up["other_mean_abs_change_avg"] == pytest.approx(0.1)
  assert attr.editing_success(before, after, "smile", -2.0)["success_rate"] == pytest.approx(0.25)
  with pytest.raises(ValueError, match="not among"):
    attr.editing_success(before, after, "age", 1)


def test_boundary_prediction_precision_recall_auc_on_known_codes():
  rng = np.random.default_rng(0)
  normal = np.zeros(8)
  normal[0] = 1.0
  codes = rng.normal(size=(200, 8))
  labels = codes[:, 0] > 0.3                      # True boundary at offset -0.3 along the normal.
  exact = attr.boundary_attribute_prediction(codes, normal, labels, offset=-0.3)
  assert exact["precision"] == 1.0 and exact["recall"] == 1.0 and exact["accuracy"] == 1.0
  assert exact["auc"] == 1.0
  # Without the offset: every true positive is still found, some negatives (0 < x <= 0.3) become false positives.
  no_offset = attr.boundary_attribute_prediction(codes, normal, labels)
  false_pos = np.sum((codes[:, 0] > 0) & ~labels)
  assert no_offset["recall"] == 1.0
  assert no_offset["precision"] == pytest.approx(labels.sum() / (labels.sum() + false_pos))
  assert no_offset["auc"] == 1.0                  # AUC ignores the offset.
  flipped = attr.boundary_attribute_prediction(codes, -normal, labels)
  assert flipped["auc"] == 0.0
  # W+ codes with a [D] normal: the score sums over layers.
  wp = np.repeat(codes[:, None], 3, axis=1)
  assert attr.boundary_attribute_prediction(wp, normal, labels, offset=-0.9)["accuracy"] == 1.0


def test_binarize_labels_uses_the_range_midpoint():
  np.testing.assert_array_equal(attr.binarize_labels([-0.5, 0.2], "smile"), [False, True])
  np.testing.assert_array_equal(attr.binarize_labels([0.0, 1.0], "eyeglasses"), [False, True])
  np.testing.assert_array_equal(attr.binarize_labels([0.4, 0.6], "hair_color"), [False, True])
