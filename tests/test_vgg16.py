"""VGG16 perceptual features: Keras 'caffe' preprocessing, parity with the official PyTorch `VGG16`, weight files
(official .pth via the safe reader, Keras .h5 via h5py) and the no-weights policy (warning, perceptual term off)."""
import logging
from pathlib import Path

import h5py
import jax
import ml_collections
import numpy as np
import pytest
import torch

from idinvert_jax.convert import common
from idinvert_jax.convert import vgg16 as convert_vgg16
from idinvert_jax.models import vgg16 as vgg16_lib

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def synthetic():
  """(official state_dict, our variables) of the fixture's seeded weights."""
  seed = int(np.load(FIXTURES / "vgg16_io.npz")["seed"])
  state_dict = convert_vgg16.synthetic_official_vgg16_state_dict(seed)
  return state_dict, convert_vgg16.official_vgg16_to_variables(state_dict)


def test_preprocess_is_keras_caffe_mode():
  rgb = np.array([[[[-1.0, 0.0, 1.0]]]], np.float32)  # R = 0, G = 127.5, B = 255 in [0, 255]
  out = np.asarray(vgg16_lib.preprocess(rgb))[0, 0, 0]
  np.testing.assert_allclose(out, [255.0 - 103.939, 127.5 - 116.779, 0.0 - 123.68], rtol=1e-6)


def test_features_match_pytorch(synthetic):
  _, variables = synthetic
  io_ = np.load(FIXTURES / "vgg16_io.npz")
  F = vgg16_lib.VGG16Features(layers=("conv3_3", "conv4_3"))
  conv3_3, conv4_3 = vgg16_lib.perceptual_features(F, variables, io_["x"])
  for name, ours in (("conv3_3", conv3_3), ("conv4_3", conv4_3)):
    ref = io_[name].astype(np.float64)
    abs_err = float(np.abs(np.asarray(ours, np.float64) - ref).max())
    rel_err = abs_err / float(np.abs(ref).max())
    assert ours.shape == ref.shape
    assert rel_err <= 1e-4, f"VGG16 {name}: max abs err {abs_err:.3e}, rel err {rel_err:.3e}"
    print(f"VGG16 {name}: max abs err {abs_err:.3e}, rel err {rel_err:.3e}")


def test_default_model_is_conv4_3_and_stops_there():
  F = vgg16_lib.VGG16Features()
  # Shapes only (eval_shape): compiling VGG16 adds nothing that test_features_match_pytorch does not cover.
  variables = jax.eval_shape(lambda: vgg16_lib.init_perceptual(F, jax.random.key(0)))
  assert sorted(variables["params"]) == sorted(vgg16_lib.LAYER_NAMES[:10])  # conv1_1 .. conv4_3, no conv5
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
  features = jax.eval_shape(lambda v, x: vgg16_lib.perceptual_features(F, v, x), variables, images)
  assert features.shape == (1, 4, 4, 512)
  with pytest.raises(ValueError, match="conv4_4"):
    jax.eval_shape(lambda v, x: vgg16_lib.perceptual_features(vgg16_lib.VGG16Features(layers=("conv4_4",)), v, x),
                   variables, images)


def test_pth_and_keras_h5_weights_give_the_same_variables(tmp_path, synthetic):
  state_dict, variables = synthetic
  pth_path = tmp_path / "vgg16.pth"
  torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, pth_path)
  from_pth = convert_vgg16.load_vgg16_weights(pth_path)
  # Keras notop files: one group per conv; two dataset naming schemes exist across Keras versions.
  for style in ("old", "new"):
    h5_path = tmp_path / f"vgg16_{style}.h5"
    with h5py.File(h5_path, "w") as f:
      for name in vgg16_lib.LAYER_NAMES:
        group = f.create_group("block{}_conv{}".format(*name[len("conv"):].split("_")))
        kernel, bias = variables["params"][name]["kernel"], variables["params"][name]["bias"]
        if style == "old":
          group.create_dataset(f"{group.name[1:]}_W_1:0", data=kernel)
          group.create_dataset(f"{group.name[1:]}_b_1:0", data=bias)
        else:
          sub = group.create_group(group.name[1:])
          sub.create_dataset("kernel:0", data=kernel)
          sub.create_dataset("bias:0", data=bias)
      f.create_group("block5_pool")
    from_h5 = convert_vgg16.load_vgg16_weights(h5_path)
    for a, b in zip(jax.tree_util.tree_leaves(from_h5), jax.tree_util.tree_leaves(from_pth)):
      np.testing.assert_array_equal(a, b)
  assert len(jax.tree_util.tree_leaves(from_pth)) == 26  # all 13 convs are kept
  # And back: the official state_dict is reproduced exactly.
  back = convert_vgg16.variables_to_official_vgg16(from_pth)
  assert set(back) == set(state_dict)
  for key in state_dict:
    np.testing.assert_array_equal(back[key], state_dict[key], err_msg=key)


def test_bad_weight_files_are_named(tmp_path, synthetic):
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    convert_vgg16.load_vgg16_weights(tmp_path / "missing.pth")
  state_dict, _ = synthetic
  truncated = {k: v for k, v in state_dict.items() if k != "layer28.bias"}
  truncated["classifier.0.weight"] = np.zeros((2, 2), np.float32)
  with pytest.raises(common.StateDictMismatchError, match=r"unknown keys: classifier.0.weight; missing keys: "
                                                          r"layer28.bias"):
    convert_vgg16.official_vgg16_to_variables(truncated)
  h5_path = tmp_path / "not_vgg.h5"
  with h5py.File(h5_path, "w") as f:
    f.create_group("dense_1")
  with pytest.raises(common.StateDictMismatchError, match=r"not_vgg.h5: .*missing group block1_conv1"):
    convert_vgg16.load_vgg16_weights(h5_path)


def _model_config(weights=""):
  return ml_collections.ConfigDict({"perceptual": {"weights": weights, "layers": ("conv2_2", "conv4_3")}})


def test_no_weights_disables_the_perceptual_term_with_a_warning(caplog):
  with caplog.at_level(logging.WARNING):
    assert convert_vgg16.load_perceptual(_model_config()) is None
  assert "config.model.perceptual.weights" in caplog.text and "DISABLED" in caplog.text


def test_load_perceptual_from_config_file(tmp_path, synthetic):
  state_dict, variables = synthetic
  path = tmp_path / "vgg16.pth"
  torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, path)
  F, loaded = convert_vgg16.load_perceptual(_model_config(str(path)))
  assert F.layers == ("conv2_2", "conv4_3")
  np.testing.assert_array_equal(loaded["params"]["conv4_3"]["kernel"], variables["params"]["conv4_3"]["kernel"])
  assert vgg16_lib.build_perceptual(ml_collections.ConfigDict({"resolution": 32})).layers == ("conv4_3",)
