"""The in-domain inversion objective and its Adam steps match the official PyTorch inverter.

Fixture (tools/make_parity_fixtures.py --indomain, see tests/fixtures/README.md): a 32-px official generator and
encoder with random weights, the synthetic official VGG16 (conv4_3), targets x and W+ codes w. Torch computed,
image by image as the official utils/inverter.py `invert`,

  loss = mean((x - G(w))^2) + 5e-5 * mean((F(x) - F(G(w)))^2) + 2.0 * mean((w - E(G(w)))^2),

its three terms, d loss / d w (float32 autograd; float64 as a reference) and the codes after 1 and 5
torch.optim.Adam(lr=0.01) steps. Here the weights go through the project's converters and the numbers come from
the inversion engine itself (`inversion.loss_and_grad`, the compiled Adam step, `inversion.invert`).
"""
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from idinvert_jax import export
from idinvert_jax import inversion
from idinvert_jax.convert import encoder as convert_encoder
from idinvert_jax.convert import generator as convert_generator
from idinvert_jax.convert import pth
from idinvert_jax.convert import vgg16 as convert_vgg16
from idinvert_jax.models import encoder as encoder_lib
from idinvert_jax.models import generator as generator_lib
from idinvert_jax.models import vgg16 as vgg16_lib

FIXTURES = Path(__file__).parent / "fixtures"
RTOL = 1e-4  # max |ours - torch| / max |torch|, float32
# Adam moves every coordinate by about lr = 0.01 per step whatever the gradient's size, so codes are compared
# absolutely. Adam divides by |gradient|, which amplifies float32 rounding where a gradient is tiny: torch's own
# float32 codes differ from its float64 codes by 3e-8 (1 step) and 1.7e-5 (5 steps) here. Limits: 1e-5 after one
# step (0.1% of a step), 5e-5 after five (0.5% of a step, ~3x the float32 floor).
CODE_ATOL = {1: 1e-5, 5: 5e-5}

# The fixture architectures (tools/make_parity_fixtures.py INDOMAIN_GENERATOR / INDOMAIN_ENCODER).
GEN_KW = dict(resolution=32, z_dim=16, w_dim=16, mapping_layers=8, mapping_fmaps=16, fmaps_base=512,
              fmaps_max=16, repeat_w=False, final_tanh=True, truncation_psi=0.7, truncation_layers=8,
              noise_mode="const")
ENC_KW = dict(resolution=32, w_dim=16, channels_base=8, channels_max=16)
TERMS = ("pix", "feat", "enc", "total")  # Column order of the fixture's `terms`.


def _errors(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  abs_err = float(np.abs(ours - ref).max())
  return abs_err, abs_err / float(np.abs(ref).max())


def _assert_relative(name, ours, ref, rtol=RTOL):
  abs_err, rel_err = _errors(ours, ref)
  message = f"{name}: max abs err {abs_err:.3e}, rel err {rel_err:.3e} (limit {rtol})"
  assert rel_err <= rtol, message
  print(message)


def _assert_absolute(name, ours, ref, atol):
  abs_err, rel_err = _errors(ours, ref)
  message = f"{name}: max abs err {abs_err:.3e} (limit {atol}), rel err {rel_err:.3e}"
  assert abs_err <= atol, message
  print(message)


@pytest.fixture(scope="module")
def io():
  return dict(np.load(FIXTURES / "indomain32_io.npz"))


@pytest.fixture(scope="module")
def models(io):
  """A export.Models bundle of the converted official weights, as the converter CLI would build."""
  G = generator_lib.Generator(**GEN_KW)
  E = encoder_lib.Encoder(**ENC_KW)
  F = vgg16_lib.VGG16Features()  # conv4_3, as the official PerceptualModel.
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(resolution=32, generator=dict(w_dim=16)))
  vgg_state = convert_vgg16.synthetic_official_vgg16_state_dict(int(io["vgg_seed"]))
  return export.Models(
      config=config,
      generator=G, generator_vars=convert_generator.official_generator_to_variables(
          pth.load_state_dict(FIXTURES / "indomain32_generator.pth"), G),
      encoder=E, encoder_vars=convert_encoder.official_encoder_to_variables(
          pth.load_state_dict(FIXTURES / "indomain32_encoder.pth"), E),
      perceptual=F, perceptual_vars=convert_vgg16.official_vgg16_to_variables(vgg_state))


@pytest.fixture(scope="module")
def inverter(models):
  """One Inverter for the module: the calls below share its compiled engine (same program, one device)."""
  return inversion.Inverter(models)


@pytest.fixture(scope="module")
def config(io):
  c = inversion.get_invert_config("indomain")
  c.learning_rate = float(io["learning_rate"])
  c.loss_weight_feat = float(io["loss_weight_feat"])
  c.loss_weight_enc = float(io["loss_weight_enc"])
  c.num_results = 0
  c.batch_size = 2
  return c


DEVICES = jax.devices()[:1]  # One device: every call below then shares one compiled engine.


def test_fixture_is_consistent(io):
  """The file is self-consistent: total = weighted terms, and torch float32 agrees with its float64 rerun."""
  terms, terms64 = io["terms"], io["terms64"]
  np.testing.assert_allclose(terms[:, 3], terms[:, 0] + io["loss_weight_feat"] * terms[:, 1]
                             + io["loss_weight_enc"] * terms[:, 2], rtol=1e-6)
  assert (terms[:, :3] > 0).all()
  _assert_relative("torch float32 vs float64 terms", terms, terms64, rtol=1e-6)
  _assert_relative("torch float32 vs float64 grad", io["grad"], io["grad64"], rtol=1e-5)
  for name in ("adam_from_w", "adam_from_encoder"):
    for step in CODE_ATOL:
      _assert_absolute(f"torch {name} after {step} step(s): float32 vs float64", io[name][step - 1],
                       io[name.replace("adam", "adam64")][step - 1], CODE_ATOL[step])


def test_loss_terms_and_gradient_match_pytorch(io, inverter, config):
  losses, grad = inversion.loss_and_grad(io["w"], io["x"], inverter, config, devices=DEVICES)
  for column, name in enumerate(TERMS):
    _assert_relative(f"in-domain loss term {name!r} vs torch float32", losses[name], io["terms"][:, column])
    _assert_relative(f"in-domain loss term {name!r} vs torch float64", losses[name], io["terms64"][:, column])
  _assert_relative("d total / d w vs torch float32 autograd", grad, io["grad"])
  _assert_relative("d total / d w vs torch float64 autograd", grad, io["grad64"])


def test_engine_adam_steps_match_torch_adam(io, inverter, config):
  """The engine's compiled step (vmapped optax Adam) from the fixture's w vs torch.optim.Adam, 1 and 5 steps."""
  settings = inversion.InvertSettings.from_config(config)
  engine = inverter.engine(settings, DEVICES)
  x = jax.device_put(io["x"], engine.batch_sharding)
  masks = jax.device_put(np.ones(io["x"].shape[:3] + (1,), np.float32), engine.batch_sharding)
  batch = engine.batch(settings, x, engine.prepare(x, masks)["feats"], masks)
  w = jax.device_put(io["w"], engine.batch_sharding)
  state = dict(w=w, opt_state=jax.vmap(engine.optimizer.init)(w))
  reference = io["adam_from_w"]  # [steps, N, L, D]
  assert reference.shape[0] == max(CODE_ATOL), reference.shape
  for step in range(1, max(CODE_ATOL) + 1):
    state, _ = engine.step(state, batch)
    if step in CODE_ATOL:
      ours = np.asarray(state["w"])
      _assert_absolute(f"code after {step} Adam step(s) from w vs torch float32", ours, reference[step - 1],
                       CODE_ATOL[step])
      _assert_absolute(f"code after {step} Adam step(s) from w vs torch float64", ours,
                       io["adam64_from_w"][step - 1], CODE_ATOL[step])
  # Our steps moved the code by about lr per step (not a no-op that a loose tolerance would hide).
  moved = np.abs(ours - io["w"]).mean()
  assert moved > 0.5 * reference.shape[0] * float(io["learning_rate"]), moved


def test_invert_from_encoder_matches_the_official_loop(io, inverter, config):
  """The public invert(): E(x) init, then 1 and 5 Adam steps, as the official inverter from E(x)."""
  reference = io["adam_from_encoder"]
  for steps in CODE_ATOL:
    c = ml_collections.ConfigDict(config.to_dict())
    c.num_iterations = steps
    result = inversion.invert(io["x"], inverter, c, progress=False, devices=DEVICES)
    _assert_relative("invert() encoder codes E(x) vs torch", result.encoder_codes, io["w_encoder"])
    _assert_absolute(f"invert() codes after {steps} Adam step(s) from E(x) vs torch float32", result.codes,
                     reference[steps - 1], CODE_ATOL[steps])
    _assert_absolute(f"invert() codes after {steps} Adam step(s) from E(x) vs torch float64", result.codes,
                     io["adam64_from_encoder"][steps - 1], CODE_ATOL[steps])
