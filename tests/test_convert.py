"""Official weights <-> ours: safe .pth reading, numerical parity with the official PyTorch code, round trips.

The fixtures in tests/fixtures/ were made by tools/make_parity_fixtures.py from the official idinvert_pytorch
modules with random weights (see tests/fixtures/README.md).
"""
import collections
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from idinvert_jax.convert import common
from idinvert_jax.convert import encoder as convert_encoder
from idinvert_jax.convert import generator as convert_generator
from idinvert_jax.convert import pth
from idinvert_jax.models import encoder as encoder_lib
from idinvert_jax.models import generator as generator_lib

FIXTURES = Path(__file__).parent / "fixtures"
RTOL = 1e-4  # max |ours - torch| / max |torch|, float32

# The fixture architectures (tools/make_parity_fixtures.py GENERATOR / ENCODER).
GEN_KW = dict(resolution=128, z_dim=16, w_dim=16, mapping_layers=8, mapping_fmaps=16, fmaps_base=512,
              fmaps_max=16, repeat_w=False, final_tanh=True, truncation_psi=0.7, truncation_layers=8,
              noise_mode="const")
ENC_KW = dict(resolution=64, w_dim=16, channels_base=8, channels_max=32)


def _relative_error(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  abs_err = float(np.abs(ours - ref).max())
  return abs_err, abs_err / float(np.abs(ref).max())


def _assert_close(name, ours, ref, rtol=RTOL):
  abs_err, rel_err = _relative_error(ours, ref)
  assert rel_err <= rtol, f"{name}: max abs err {abs_err:.3e}, rel err {rel_err:.3e} > {rtol}"
  print(f"{name}: max abs err {abs_err:.3e}, rel err {rel_err:.3e}")


@pytest.fixture(scope="module")
def generator_fixture():
  G = generator_lib.Generator(**GEN_KW)
  state_dict = pth.load_state_dict(FIXTURES / "generator128.pth")
  return G, state_dict, convert_generator.official_generator_to_variables(state_dict, G)


@pytest.fixture(scope="module")
def encoder_fixture():
  E = encoder_lib.Encoder(**ENC_KW)
  state_dict = pth.load_state_dict(FIXTURES / "encoder64_legacy.pth")
  return E, state_dict, convert_encoder.official_encoder_to_variables(state_dict, E)


# ---------------------------------------------------------------------------------------------- .pth reader


@pytest.mark.parametrize("legacy", [False, True])
def test_pth_reader_matches_torch_load(tmp_path, legacy):
  tensors = collections.OrderedDict(
      weight=torch.randn(3, 4), transposed=torch.randn(4, 5).t(), offset_view=torch.arange(10.0)[3:7],
      scalar=torch.tensor(7, dtype=torch.int64), half=torch.randn(2).half(),
      param=torch.nn.Parameter(torch.randn(2, 2)))
  path = tmp_path / "t.pth"
  torch.save(tensors, path, _use_new_zipfile_serialization=not legacy)
  ours = pth.load_state_dict(path)
  assert list(ours) == list(tensors)
  for key, tensor in tensors.items():
    ref = tensor.detach().numpy()
    assert ours[key].dtype == ref.dtype and ours[key].shape == ref.shape, key
    np.testing.assert_array_equal(ours[key], ref, err_msg=key)


class _Evil:
  """Unpickling this runs os.system: the reader must refuse it before anything runs."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


def test_pth_reader_refuses_malicious_zip_pickle(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  torch.save({"weight": torch.zeros(2)}, path)
  # Replace data.pkl by a pickle whose payload calls os.system.
  with zipfile.ZipFile(path) as src:
    members = {n: src.read(n) for n in src.namelist()}
  pkl_name = next(n for n in members if n.endswith("data.pkl"))
  members[pkl_name] = pickle.dumps({"weight": _Evil(marker)}, protocol=2)
  with zipfile.ZipFile(path, "w") as dst:
    for name, data in members.items():
      dst.writestr(name, data)
  with pytest.raises(pth.UnsafePickleError, match=r"evil.pth: refusing to load global '(posix|os|nt)\.system'"):
    pth.load_state_dict(path)
  assert not marker.exists()
  # torch's own restricted loader agrees that the file is unsafe.
  with pytest.raises(Exception):
    torch.load(path, weights_only=True)
  assert not marker.exists()


def test_pth_reader_refuses_malicious_legacy_pickle(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil_legacy.pth"
  with open(path, "wb") as f:
    # A legacy header whose very first pickle is the payload.
    f.write(pickle.dumps(_Evil(marker), protocol=2))
  with pytest.raises(pth.UnsafePickleError):
    pth.load_state_dict(path)
  assert not marker.exists()


def test_pth_reader_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    pth.load_state_dict(tmp_path / "nope.pth")
  junk = tmp_path / "junk.pth"
  junk.write_bytes(b"not a checkpoint at all")
  with pytest.raises(pth.PthFormatError, match="junk.pth"):
    pth.load_state_dict(junk)
  module = tmp_path / "module.pth"
  torch.save([torch.zeros(1)], module)
  with pytest.raises(pth.PthFormatError, match="expected a state_dict"):
    pth.load_state_dict(module)


# -------------------------------------------------------------------------------------------------- parity


def test_generator_synthesis_matches_pytorch(generator_fixture):
  G, _, variables = generator_fixture
  io_ = np.load(FIXTURES / "generator128_io.npz")
  _assert_close("synthesize(wp) 128px", generator_lib.synthesize(G, variables, io_["wp"]), io_["image_from_wp"])


def test_generator_mapping_truncation_and_generate_match_pytorch(generator_fixture):
  G, _, variables = generator_fixture
  io_ = np.load(FIXTURES / "generator128_io.npz")
  wp = generator_lib.truncate(G, variables, generator_lib.mapping(G, variables, io_["z"]))
  _assert_close("mapping + truncation", wp, io_["wp_from_z"])
  _assert_close("generate(z) 128px", generator_lib.generate(G, variables, io_["z"]), io_["image_from_z"])
  # Truncation really acts (psi 0.7 on the first 8 layers): the untruncated codes differ.
  untruncated = generator_lib.mapping(G, variables, io_["z"])
  assert np.abs(np.asarray(untruncated)[:, :8] - io_["wp_from_z"][:, :8]).max() > 1e-2


def test_encoder_matches_pytorch_in_inference_mode(encoder_fixture):
  E, _, variables = encoder_fixture
  io_ = np.load(FIXTURES / "encoder64_io.npz")
  _assert_close("encode(x) 64px", encoder_lib.encode(E, variables, io_["x"]), io_["wp"])
  # The fixture's BN gammas are not ones: they must have been carried over, not reset.
  assert np.abs(variables["batch_stats"]["block0_bn"]["scale"] - 1).max() > 1e-3


def test_encoder_training_mode_matches_pytorch(encoder_fixture):
  """train=True normalises with the batch statistics, like torch's BatchNorm2d in train()."""
  E, _, variables = encoder_fixture
  io_ = np.load(FIXTURES / "encoder64_io.npz")
  wp, _ = E.apply(variables, io_["x"], train=True, mutable=["batch_stats"])
  # Ill-conditioned: the fixture batch has 2 images, so the final BN divides each code
  # difference by sqrt(var + 1e-5) >= 3e-3 and amplifies float32 rounding up to ~300x. Measured 1.5e-4 (5e-5 with
  # the weight scaled before the product); running statistics instead of batch ones would be off by O(1).
  _assert_close("encoder train mode 64px", wp, io_["wp_train"], rtol=5e-4)


# ------------------------------------------------------------------------------------------------ round trip


def _assert_same_state_dict(ours, ref):
  assert set(ours) == set(ref), sorted(set(ours) ^ set(ref))
  for key in ref:
    assert ours[key].dtype == ref[key].dtype and ours[key].shape == ref[key].shape, key
    np.testing.assert_array_equal(ours[key], ref[key], err_msg=key)


def test_generator_round_trip_equals_official_state_dict(generator_fixture):
  G, state_dict, variables = generator_fixture
  _assert_same_state_dict(convert_generator.variables_to_official_generator(variables, G), state_dict)


def test_encoder_round_trip_equals_official_state_dict(encoder_fixture):
  E, state_dict, variables = encoder_fixture
  _assert_same_state_dict(convert_encoder.variables_to_official_encoder(variables, E), state_dict)


def test_saved_pth_round_trip_through_torch(tmp_path, encoder_fixture):
  _, state_dict, _ = encoder_fixture
  path = tmp_path / "encoder.pth"
  pth.save_state_dict(state_dict, path)
  reloaded = {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}
  _assert_same_state_dict(reloaded, state_dict)
  _assert_same_state_dict(pth.load_state_dict(path), state_dict)


# ---------------------------------------------------------------------------------------------- bad inputs


def test_unknown_missing_and_misshaped_keys_are_named(generator_fixture):
  G, state_dict, _ = generator_fixture
  bad = dict(state_dict)
  bad["synthesis.layer99.conv.weight"] = np.zeros((1,), np.float32)
  del bad["mapping.dense3.fc.weight"]
  bad["synthesis.output2.bias"] = np.zeros((4,), np.float32)
  with pytest.raises(common.StateDictMismatchError) as info:
    convert_generator.official_generator_to_variables(bad, G)
  message = str(info.value)
  assert "\n" not in message
  assert "unknown keys: synthesis.layer99.conv.weight" in message
  assert "missing keys: mapping.dense3.fc.weight" in message
  assert "mis-shaped keys: synthesis.output2.bias (4,) (expected (3,))" in message


def test_wrong_architecture_config_is_reported(generator_fixture, encoder_fixture):
  _, gen_state_dict, _ = generator_fixture
  wider = generator_lib.Generator(**{**GEN_KW, "fmaps_max": 32})
  with pytest.raises(common.StateDictMismatchError, match=r"mis-shaped keys: .*--config"):
    convert_generator.official_generator_to_variables(gen_state_dict, wider)
  _, enc_state_dict, _ = encoder_fixture
  with pytest.raises(common.StateDictMismatchError, match="block5.fc.weight"):
    convert_encoder.official_encoder_to_variables(enc_state_dict, encoder_lib.Encoder(**{**ENC_KW, "w_dim": 8}))


def test_derived_buffers_are_checked(generator_fixture):
  G, state_dict, _ = generator_fixture
  with pytest.raises(common.StateDictMismatchError, match="synthesis.lod"):
    convert_generator.official_generator_to_variables({**state_dict, "synthesis.lod": np.float32(1.0)}, G)
  blur = state_dict["synthesis.layer2.blur.kernel"] * 2
  with pytest.raises(common.StateDictMismatchError, match="synthesis.layer2.blur.kernel"):
    convert_generator.official_generator_to_variables({**state_dict, "synthesis.layer2.blur.kernel": blur}, G)


def test_missing_bn_scale_defaults_to_one(encoder_fixture):
  E, state_dict, _ = encoder_fixture
  without = {k: v for k, v in state_dict.items() if not k.endswith("bn.weight")}
  variables = convert_encoder.official_encoder_to_variables(without, E)
  np.testing.assert_array_equal(variables["batch_stats"]["block1"]["bn2"]["scale"], 1.0)


# ----------------------------------------------------------------------------------------------------- CLI


def _write_config(path: Path, resolution: int, **generator_fields):
  lines = ["from configs import common", "", "def get_config():",
           "  import ml_collections", "  config = ml_collections.ConfigDict()",
           f"  config.model = common.get_model_config({resolution})",
           "  config.model.encoder.channels_base = 8", "  config.model.encoder.channels_max = 32"]
  lines += [f"  config.model.generator.{k} = {v!r}" for k, v in generator_fields.items()]
  lines += ["  return config", ""]
  path.write_text("\n".join(lines))
  return str(path)


def test_cli_converts_to_checkpoint_and_exports_back(tmp_path, generator_fixture, encoder_fixture):
  from idinvert_jax import export
  from idinvert_jax.convert import __main__ as cli
  small = dict(z_dim=16, w_dim=16, mapping_fmaps=16, fmaps_base=512, fmaps_max=16)
  gen_config = _write_config(tmp_path / "gen128.py", 128, **small)
  assert cli.main(["--generator", str(FIXTURES / "generator128.pth"), "--output", str(tmp_path / "ckpt_g"),
                   "--config", gen_config]) == 0
  models = export.load_models(tmp_path / "ckpt_g")
  assert models.names() == ("generator",)
  io_ = np.load(FIXTURES / "generator128_io.npz")
  _assert_close("checkpoint generate(z)", generator_lib.generate(models.generator, models.generator_vars,
                                                                  io_["z"]), io_["image_from_z"])
  assert cli.main(["--export", str(tmp_path / "ckpt_g"), "--to", str(tmp_path / "out")]) == 0
  _, gen_state_dict, _ = generator_fixture
  _assert_same_state_dict(pth.load_state_dict(tmp_path / "out" / "generator.pth"), gen_state_dict)

  enc_config = _write_config(tmp_path / "enc64.py", 64, w_dim=16)
  assert cli.main(["--encoder", str(FIXTURES / "encoder64_legacy.pth"), "--output", str(tmp_path / "ckpt_e"),
                   "--config", enc_config]) == 0
  assert cli.main(["--export", str(tmp_path / "ckpt_e"), "--to", str(tmp_path / "out")]) == 0
  _, enc_state_dict, _ = encoder_fixture
  _assert_same_state_dict(pth.load_state_dict(tmp_path / "out" / "encoder.pth"), enc_state_dict)


def test_cli_reports_user_errors_in_one_line(tmp_path, capsys):
  from idinvert_jax.convert import __main__ as cli
  config = _write_config(tmp_path / "gen64.py", 64)  # the 128-px fixture does not fit a 64-px config
  assert cli.main(["--generator", str(FIXTURES / "generator128.pth"), "--output", str(tmp_path / "c"),
                   "--config", config]) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "generator128.pth" in err and "\n" not in err
  assert not (tmp_path / "c" / "config.json").exists()
  assert cli.main(["--generator", str(tmp_path / "absent.pth"), "--output", str(tmp_path / "c"),
                   "--config", config]) == 1
  assert "absent.pth" in capsys.readouterr().err
  with pytest.raises(SystemExit) as usage:  # a usage error is 'nothing could be done' (1), not argparse's 2
    cli.main(["--output", str(tmp_path / "c")])
  assert usage.value.code == 1 and "pass at least one of --generator" in capsys.readouterr().err


def test_pth_reader_rejects_out_of_bounds_tensor_views(tmp_path):
  path = tmp_path / "bounds.pth"
  torch.save({"weight": torch.zeros(4)}, path)
  with zipfile.ZipFile(path) as src:
    members = {n: src.read(n) for n in src.namelist()}
  pkl_name = next(n for n in members if n.endswith("data.pkl"))
  original = members[pkl_name]
  for bad_size, bad_stride in (((100,), (1,)), ((4,), (-1,))):
    # Rewrite the pickled size/stride tuples (4,) / (1,) of the tensor.
    data = original.replace(b"K\x04\x85", b"Kd\x85" if bad_size == (100,) else b"K\x04\x85", 1)
    if bad_stride == (-1,):
      data = data.replace(b"K\x01\x85", b"J\xff\xff\xff\xff\x85", 1)
    assert data != original
    members[pkl_name] = data
    with zipfile.ZipFile(path, "w") as dst:
      for name, content in members.items():
        dst.writestr(name, content)
    with pytest.raises(pth.PthFormatError, match=r"bounds.pth: .*(overruns|malformed)"):
      pth.load_state_dict(path)
