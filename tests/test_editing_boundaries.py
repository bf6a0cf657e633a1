"""Boundary files (safe reading of official pickles, project format) and InterFaceGAN boundary training."""
import builtins
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import idinvert_jax.editing.boundaries as boundaries
from idinvert_jax import untrusted

OFFICIAL_MIRROR = Path("/work/.mirror/genforce+idinvert_pytorch/repo")


def _official_style_file(path, layers=(0, 1, 2), num_layers=14, dim=512, seed=0):
  """Writes a boundary exactly the way the official files were made: np.save of a 0-d object array of a dict."""
  rng = np.random.default_rng(seed)
  direction = rng.normal(size=(1, num_layers, dim)).astype(np.float32)
  direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
  value = {"boundary": direction, "meta_data": {"manipulate_layers": list(layers)}}
  np.save(path, np.array(value, dtype=object), allow_pickle=True)
  return direction


def test_reads_official_style_pickled_dict(tmp_path):
  direction = _official_style_file(tmp_path / "age.npy", layers=(0, 1, 2, 3, 4, 5))
  boundary = boundaries.load_boundary(tmp_path / "age.npy")
  np.testing.assert_array_equal(boundary.direction, direction[0])
  assert boundary.layers == (0, 1, 2, 3, 4, 5)
  assert boundary.attribute == "age"
  np.testing.assert_array_equal(boundary.layerwise(14), direction[0])


@pytest.mark.skipif(not OFFICIAL_MIRROR.exists(), reason="official mirror not on this machine")
def test_reads_the_real_official_files(tmp_path):
  import subprocess
  blob = subprocess.run(["git", "-C", str(OFFICIAL_MIRROR), "show", "HEAD:boundaries/stylegan_ffhq256/pose.npy"],
                        check=True, capture_output=True).stdout
  (tmp_path / "pose.npy").write_bytes(blob)
  boundary = boundaries.load_boundary(tmp_path / "pose.npy")
  assert boundary.direction.shape == (14, 512) and boundary.layers == (0, 1, 2)
  np.testing.assert_allclose(np.linalg.norm(boundary.direction, axis=-1), 1.0, rtol=1e-5)


def test_reads_plain_arrays_without_pickle(tmp_path):
  w_normal = np.random.default_rng(1).normal(size=(1, 512)).astype(np.float32)
  np.save(tmp_path / "w.npy", w_normal)
  boundary = boundaries.load_boundary(tmp_path / "w.npy")
  assert boundary.layers is None
  np.testing.assert_array_equal(boundary.layerwise(4), np.tile(w_normal, (4, 1)))
  wp_normal = np.random.default_rng(2).normal(size=(1, 6, 512)).astype(np.float32)
  np.save(tmp_path / "wp.npy", wp_normal)
  np.testing.assert_array_equal(boundaries.load_boundary(tmp_path / "wp.npy").direction, wp_normal[0])


class _RunsShell:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


class _RunsEval:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_RunsShell, _RunsEval])
@pytest.mark.parametrize("wrapped", [False, True])
def test_refuses_pickles_that_construct_other_objects(tmp_path, payload, wrapped):
  marker = tmp_path / "executed"
  evil = payload(marker)
  value = {"boundary": np.zeros((1, 512), np.float32), "meta_data": {"manipulate_layers": [evil]}}
  path = tmp_path / "evil.npy"
  if wrapped:   # Hidden inside the official container format.
    np.save(path, np.array(value, dtype=object), allow_pickle=True)
  else:         # A bare pickle behind a forged object-array .npy header.
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": ()})
    path.write_bytes(buf.getvalue() + pickle.dumps(evil, protocol=2))
  assert not marker.exists()
  with pytest.raises(boundaries.BoundaryFileError, match="refused to unpickle"):
    boundaries.load_boundary(path)
  assert not marker.exists(), "the payload ran"


def test_loads_arrays_refuses_codecs_tricks_and_other_globals():
  # A non-latin1 codec through the one admitted codecs global.
  crafted = b"\x80\x02c_codecs\nencode\nq\x00X\x03\x00\x00\x00abcq\x01X\x06\x00\x00\x00rot_13q\x02\x86q\x03Rq\x04."
  with pytest.raises(pickle.UnpicklingError):
    untrusted.loads_arrays(crafted)
  with pytest.raises(pickle.UnpicklingError, match="subprocess.Popen"):
    untrusted.loads_arrays(b"csubprocess\nPopen\n.")
  # Plain data round-trips.
  data = {"a": [1, 2.5, "x", (3,)], "b": np.arange(5, dtype=np.float32)}
  out = untrusted.loads_arrays(pickle.dumps(data, protocol=2))
  np.testing.assert_array_equal(out["b"], data["b"])
  assert out["a"] == data["a"]


def test_project_format_round_trips(tmp_path):
  direction = np.random.default_rng(3).normal(size=(6, 16)).astype(np.float32)
  saved = boundaries.Boundary(direction, layers=(1, 2), accuracy=0.93, attribute="smile", meta={"seed": 3})
  boundaries.save_boundary(tmp_path / "smile.npz", saved)
  loaded = boundaries.load_boundary(tmp_path / "smile.npz")
  np.testing.assert_array_equal(loaded.direction, direction)
  assert loaded.layers == (1, 2) and loaded.attribute == "smile" and loaded.meta == {"seed": 3}
  assert loaded.accuracy == pytest.approx(0.93)
  # The .npz holds no pickles.
  with np.load(tmp_path / "smile.npz", allow_pickle=False) as data:
    assert set(data.files) == {"boundary", "layers", "accuracy", "attribute", "meta"}


def test_reader_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.npy"):
    boundaries.load_boundary(tmp_path / "missing.npy")
  (tmp_path / "junk.npy").write_bytes(b"not numpy")
  with pytest.raises(ValueError, match="junk.npy"):
    boundaries.load_boundary(tmp_path / "junk.npy")


def _synthetic_attribute(num, num_layers, dim, seed):
  rng = np.random.default_rng(seed)
  normal = np.zeros((num_layers, dim), np.float32)
  normal[1:3] = rng.normal(size=(2, dim))
  codes = rng.normal(size=(num, num_layers, dim)).astype(np.float32) + 0.3
  scores = np.einsum("nld,ld->n", codes, normal) + 0.05 * rng.normal(size=num)
  return codes, scores.astype(np.float32), normal


@pytest.mark.parametrize("method", ["svm", "logistic"])
def test_trained_boundary_recovers_a_linear_attribute(method):
  codes, scores, normal = _synthetic_attribute(3000, 4, 16, seed=0)
  boundary = boundaries.train_boundary(codes, scores, layers=(1, 2), ratio=0.2, method=method)
  cosine = np.sum(boundary.direction * normal) / np.linalg.norm(boundary.direction) / np.linalg.norm(normal)
  assert cosine >= 0.95, cosine
  assert boundary.layers == (1, 2)
  assert np.all(boundary.direction[[0, 3]] == 0)
  np.testing.assert_allclose(np.linalg.norm(boundary.direction), np.sqrt(2), rtol=1e-5)
  assert boundary.accuracy >= 0.95
  assert boundary.meta["num_train"] == 2 * int(600 * 0.7) and boundary.meta["num_val"] == 2 * (600 - 420)


def test_per_layer_boundary_has_unit_layers_and_points_along_each_layer():
  codes, scores, normal = _synthetic_attribute(3000, 4, 16, seed=1)
  boundary = boundaries.train_boundary(codes, scores, layers=(1, 2), per_layer=True, ratio=0.2)
  np.testing.assert_allclose(np.linalg.norm(boundary.direction[[1, 2]], axis=-1), 1.0, rtol=1e-5)
  for layer in (1, 2):
    cosine = boundary.direction[layer] @ normal[layer] / np.linalg.norm(normal[layer])
    assert cosine >= 0.9, (layer, cosine)


def test_confident_split_keeps_extremes_and_refuses_too_few():
  scores = np.arange(100, dtype=np.float32)
  split = boundaries.split_confident(scores, ratio=0.1, split=0.7, seed=0)
  positives = np.concatenate([split.train[split.train_labels == 1], split.val[split.val_labels == 1]])
  negatives = np.concatenate([split.train[split.train_labels == 0], split.val[split.val_labels == 0]])
  assert sorted(positives) == list(range(90, 100)) and sorted(negatives) == list(range(10))
  assert len(split.train) == 14 and len(split.val) == 6 and len(split.remaining) == 80
  with pytest.raises(ValueError, match="larger --ratio"):
    boundaries.split_confident(scores, ratio=0.01)


def test_read_scores_from_csv_and_npy(tmp_path):
  (tmp_path / "plain.csv").write_text("0.5\n-1\n2\n")
  np.testing.assert_array_equal(boundaries.read_scores(tmp_path / "plain.csv"), [0.5, -1, 2])
  (tmp_path / "named.csv").write_text("image,smile,age\na.png,1,30\nb.png,0,40\n")
  np.testing.assert_array_equal(boundaries.read_scores(tmp_path / "named.csv", column="smile"), [1, 0])
  np.testing.assert_array_equal(boundaries.read_scores(tmp_path / "named.csv"), [30, 40])
  with pytest.raises(ValueError, match="no column 'gender'"):
    boundaries.read_scores(tmp_path / "named.csv", column="gender")
  np.save(tmp_path / "s.npy", np.array([[1.0], [2.0]]))
  np.testing.assert_array_equal(boundaries.read_scores(tmp_path / "s.npy"), [1, 2])


def test_refuses_object_arrays_hiding_other_types(tmp_path):
  structured = np.zeros((1,), dtype=[("f", object)])
  with pytest.raises(pickle.UnpicklingError, match="is not allowed"):
    untrusted.loads_arrays(pickle.dumps(structured, protocol=2))
  # An object array whose elements came from somewhere else than the unpickler cannot be built: numpy refuses
  # raw bytes for object dtypes, and the reader turns that into its own error.
  crafted = pickle.dumps(np.zeros((2,), np.float64), protocol=2).replace(b"f8", b"O8")
  buf = io.BytesIO()
  np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": ()})
  (tmp_path / "raw.npy").write_bytes(buf.getvalue() + crafted)
  with pytest.raises(boundaries.BoundaryFileError, match="refused to unpickle"):
    boundaries.load_boundary(tmp_path / "raw.npy")
