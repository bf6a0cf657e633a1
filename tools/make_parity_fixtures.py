"""Builds the PyTorch parity fixtures in tests/fixtures/ from a checkout of the official idinvert_pytorch code.

The official code is NOT part of this repository: export it somewhere else and pass its path, e.g.

  git -C /work/.mirror/genforce+idinvert_pytorch/repo archive HEAD models | tar -x -C /tmp/idinvert_pytorch
  .venv/bin/python tools/make_parity_fixtures.py --official /tmp/idinvert_pytorch --out tests/fixtures

Its modules (models/stylegan_generator_network.py, models/stylegan_encoder_network.py,
models/perceptual_model.py) are imported from that path; they are instantiated with seeded random weights and
their state_dicts, inputs and outputs are saved. Needs torch (CPU is enough).

  --indomain  instead writes the in-domain inversion fixture (indomain32_*): a 32-px generator and encoder, the
              synthetic VGG16, targets x and W+ codes w, the official inverter's loss terms, d loss / d w
              (float32 and float64) and torch.optim.Adam codes after 1 and 5 steps.
  --full256   instead compares the full 256-px official generator + encoder (random weights) against ours and
              prints the max errors (slow; nothing is written).
"""
from __future__ import annotations

import argparse
import io
import math
import os
import sys

import numpy as np
import torch

# Run from anywhere: this repository's package is imported for the VGG weights and the --full256 comparison.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

# Small architectures that still cover every code path (fused up-conv at 128 px, shortcut and identity blocks).
GENERATOR = dict(resolution=128, z_dim=16, w_dim=16, mapping_layers=8, fmaps_base=512, fmaps_max=16,
                 truncation_psi=0.7, truncation_layers=8)
ENCODER = dict(resolution=64, w_dim=16, channels_base=8, channels_max=32)
VGG_SEED, VGG_SIZE, VGG_OUTPUTS = 1234, 32, {"conv3_3": 16, "conv4_3": 23}  # name -> official output_layer_idx
BATCH = 2
# In-domain inversion fixture: generator and encoder at the same resolution (encoder 8->16->16 channels covers
# the shortcut and the identity blocks); the official inverter's weights and Adam settings.
INDOMAIN_GENERATOR = dict(GENERATOR, resolution=32)
INDOMAIN_ENCODER = dict(resolution=32, w_dim=16, channels_base=8, channels_max=16)
INDOMAIN_WEIGHTS = dict(feat=5e-5, enc=2.0)
INDOMAIN_LR, INDOMAIN_STEPS = 0.01, 5


def _import_official(path: str):
  if not os.path.isfile(os.path.join(path, "models", "stylegan_generator_network.py")):
    raise SystemExit(f"{path}: no models/stylegan_generator_network.py; pass the idinvert_pytorch checkout")
  sys.path.insert(0, path)
  from models import perceptual_model, stylegan_encoder_network, stylegan_generator_network  # pylint: disable=g-import-not-at-top
  return stylegan_generator_network, stylegan_encoder_network, perceptual_model


def official_generator(net_lib, cfg):
  return net_lib.StyleGANGeneratorNet(
      resolution=cfg["resolution"], z_space_dim=cfg["z_dim"], w_space_dim=cfg["w_dim"],
      num_mapping_layers=cfg["mapping_layers"], repeat_w=False, final_tanh=True, fused_scale="auto",
      truncation_psi=cfg["truncation_psi"], truncation_layers=cfg["truncation_layers"], randomize_noise=False,
      fmaps_base=cfg["fmaps_base"], fmaps_max=cfg["fmaps_max"]).eval()


def randomise_generator(net, gen: torch.Generator):
  """N(0, 1) weights (equalised LR scales them at run time), non-zero biases, noise strengths and w_avg."""
  with torch.no_grad():
    for name, p in net.named_parameters():
      if name == "synthesis.lod":
        continue
      if p.ndim >= 2:
        p.copy_(torch.randn(p.shape, generator=gen))
      elif name.endswith("apply_noise.weight"):
        p.copy_(0.3 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    for name, b in net.named_buffers():
      if name.endswith("apply_noise.noise"):
        b.copy_(torch.randn(b.shape, generator=gen))
      elif name == "truncation.w_avg":
        b.copy_(0.5 * torch.randn(b.shape, generator=gen))


def official_encoder(enc_lib, cfg):
  return enc_lib.StyleGANEncoderNet(
      resolution=cfg["resolution"], w_space_dim=cfg["w_dim"], encoder_channels_base=cfg["channels_base"],
      encoder_channels_max=cfg["channels_max"], use_wscale=False, use_bn=True).eval()


def randomise_encoder(net, gen: torch.Generator):
  """He-normal convs, N(0, 1) last dense (runtime-scaled), random biases, BN gammas and running statistics."""
  with torch.no_grad():
    for name, p in net.named_parameters():
      if p.ndim == 4:
        p.copy_(torch.randn(p.shape, generator=gen) * math.sqrt(2.0 / (p.shape[1] * p.shape[2] * p.shape[3])))
      elif p.ndim == 2:
        p.copy_(torch.randn(p.shape, generator=gen))
      elif name.endswith("bn.weight"):
        p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    for name, b in net.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(0.2 * torch.randn(b.shape, generator=gen))
      elif name.endswith("running_var"):
        b.copy_(0.5 + 1.5 * torch.rand(b.shape, generator=gen))


def nhwc(x: torch.Tensor) -> np.ndarray:
  return x.detach().numpy().transpose(0, 2, 3, 1)


def _save_npz(path: str, **arrays):
  buf = io.BytesIO()
  np.savez_compressed(buf, **arrays)
  with open(path, "wb") as f:
    f.write(buf.getvalue())


def make_fixtures(official: str, out: str):
  net_lib, enc_lib, vgg_lib = _import_official(official)
  os.makedirs(out, exist_ok=True)
  gen = torch.Generator().manual_seed(0)
  torch.manual_seed(0)  # the official noise buffers are drawn in the constructors

  G = official_generator(net_lib, GENERATOR)
  randomise_generator(G, gen)
  z = torch.randn(BATCH, GENERATOR["z_dim"], generator=gen)
  wp = torch.randn(BATCH, G.num_layers, GENERATOR["w_dim"], generator=gen)
  with torch.no_grad():
    image_from_wp = G.synthesis(wp)
    wp_from_z = G.truncation(G.mapping(z))
    image_from_z = G.synthesis(wp_from_z)
  torch.save(G.state_dict(), os.path.join(out, "generator128.pth"))
  _save_npz(os.path.join(out, "generator128_io.npz"), z=z.numpy(), wp=wp.numpy(),
            image_from_wp=nhwc(image_from_wp), wp_from_z=wp_from_z.numpy(), image_from_z=nhwc(image_from_z))

  E = official_encoder(enc_lib, ENCODER)
  randomise_encoder(E, gen)
  x = torch.rand(BATCH, 3, ENCODER["resolution"], ENCODER["resolution"], generator=gen) * 2 - 1
  with torch.no_grad():
    code = E(x).view(BATCH, E.num_layers, ENCODER["w_dim"])
  # The legacy (pre-1.6) serialisation, as the 2020 official release, so the reader's legacy path is covered.
  torch.save(E.state_dict(), os.path.join(out, "encoder64_legacy.pth"), _use_new_zipfile_serialization=False)
  # Training mode (BN with batch statistics), after the state_dict is saved: it updates the running stats.
  with torch.no_grad():
    code_train = E.train()(x).view(BATCH, E.num_layers, ENCODER["w_dim"])
  _save_npz(os.path.join(out, "encoder64_io.npz"), x=nhwc(x), wp=code.numpy(), wp_train=code_train.numpy())

  from idinvert_jax.convert import vgg16 as convert_vgg16  # pylint: disable=g-import-not-at-top
  state_dict = {k: torch.from_numpy(v) for k, v in
                convert_vgg16.synthetic_official_vgg16_state_dict(VGG_SEED).items()}
  images = torch.rand(BATCH, 3, VGG_SIZE, VGG_SIZE, generator=gen) * 2 - 1
  features = {}
  for name, index in VGG_OUTPUTS.items():
    net = vgg_lib.VGG16(output_layer_idx=index).eval()
    net.load_state_dict(state_dict)
    with torch.no_grad():
      features[name] = nhwc(net(images))
  _save_npz(os.path.join(out, "vgg16_io.npz"), seed=np.int64(VGG_SEED), x=nhwc(images), **features)
  for name in sorted(os.listdir(out)):
    print(f"{name}: {os.path.getsize(os.path.join(out, name))} bytes")


def indomain_losses(G, E, F, x, w):
  """The official utils/inverter.py `invert` loss for ONE image (batch of 1, as the official loop).

  x [1, 3, H, W], w [1, L, D] (requires grad). Returns (pix, feat, enc, total) torch scalars.
  """
  x_rec = G.synthesis(w)
  pix = torch.mean((x - x_rec) ** 2)
  feat = torch.mean((F(x) - F(x_rec)) ** 2)  # The official PerceptualModel does not resize.
  enc = torch.mean((w - E(x_rec).view(1, *w.shape[1:])) ** 2)
  return pix, feat, enc, pix + INDOMAIN_WEIGHTS["feat"] * feat + INDOMAIN_WEIGHTS["enc"] * enc


def indomain_terms_and_grad(G, E, F, x, w):
  """Per-image loss terms [N, 4] (pix, feat, enc, total) and d total / d w [N, L, D], image by image."""
  terms, grads = [], []
  for i in range(x.shape[0]):
    wi = w[i:i + 1].clone().requires_grad_(True)
    values = indomain_losses(G, E, F, x[i:i + 1], wi)
    grads.append(torch.autograd.grad(values[-1], wi)[0][0])
    terms.append(torch.stack([v.detach() for v in values]))
  return torch.stack(terms).numpy(), torch.stack(grads).numpy()


def indomain_adam(G, E, F, x, w, steps):
  """Codes after each of `steps` torch.optim.Adam updates (lr 0.01), one optimiser per image as the official."""
  codes = []
  for i in range(x.shape[0]):
    wi = w[i:i + 1].clone().requires_grad_(True)
    optimizer = torch.optim.Adam([wi], lr=INDOMAIN_LR)
    per_step = []
    for _ in range(steps):
      loss = indomain_losses(G, E, F, x[i:i + 1], wi)[-1]
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
      per_step.append(wi.detach()[0].clone())
    codes.append(torch.stack(per_step))
  return torch.stack(codes, dim=1).numpy()  # [steps, N, L, D]


def make_indomain_fixture(official: str, out: str):
  """indomain32_generator.pth, indomain32_encoder.pth and indomain32_io.npz (see tests/fixtures/README.md)."""
  net_lib, enc_lib, vgg_lib = _import_official(official)
  os.makedirs(out, exist_ok=True)
  gen = torch.Generator().manual_seed(2)
  torch.manual_seed(2)
  G = official_generator(net_lib, INDOMAIN_GENERATOR)
  randomise_generator(G, gen)
  E = official_encoder(enc_lib, INDOMAIN_ENCODER)
  randomise_encoder(E, gen)
  assert G.num_layers == E.num_layers, (G.num_layers, E.num_layers)
  from idinvert_jax.convert import vgg16 as convert_vgg16  # pylint: disable=g-import-not-at-top
  F = vgg_lib.VGG16(output_layer_idx=VGG_OUTPUTS["conv4_3"]).eval()
  F.load_state_dict({k: torch.from_numpy(v) for k, v in
                     convert_vgg16.synthetic_official_vgg16_state_dict(VGG_SEED).items()})
  for p in list(G.parameters()) + list(E.parameters()) + list(F.parameters()):
    p.requires_grad_(False)
  res = INDOMAIN_GENERATOR["resolution"]
  x = torch.rand(BATCH, 3, res, res, generator=gen) * 2 - 1
  w = torch.randn(BATCH, G.num_layers, INDOMAIN_GENERATOR["w_dim"], generator=gen)
  with torch.no_grad():
    w_encoder = E(x).view(BATCH, G.num_layers, INDOMAIN_GENERATOR["w_dim"])
  torch.save(G.state_dict(), os.path.join(out, "indomain32_generator.pth"))
  torch.save(E.state_dict(), os.path.join(out, "indomain32_encoder.pth"))

  terms, grad = indomain_terms_and_grad(G, E, F, x, w)
  adam_from_w = indomain_adam(G, E, F, x, w, INDOMAIN_STEPS)
  adam_from_encoder = indomain_adam(G, E, F, x, w_encoder, INDOMAIN_STEPS)
  # float64 reference of the same computation: how much of any difference is float32 rounding.
  G.double(), E.double(), F.double()
  F.mean = F.mean.double()
  terms64, grad64 = indomain_terms_and_grad(G, E, F, x.double(), w.double())
  adam64_from_w = indomain_adam(G, E, F, x.double(), w.double(), INDOMAIN_STEPS)
  adam64_from_encoder = indomain_adam(G, E, F, x.double(), w_encoder.double(), INDOMAIN_STEPS)
  _save_npz(os.path.join(out, "indomain32_io.npz"), vgg_seed=np.int64(VGG_SEED), x=nhwc(x), w=w.numpy(),
            w_encoder=w_encoder.numpy(), terms=terms, grad=grad, terms64=terms64, grad64=grad64,
            adam_from_w=adam_from_w, adam_from_encoder=adam_from_encoder,
            adam64_from_w=adam64_from_w, adam64_from_encoder=adam64_from_encoder,
            learning_rate=np.float32(INDOMAIN_LR), loss_weight_feat=np.float32(INDOMAIN_WEIGHTS["feat"]),
            loss_weight_enc=np.float32(INDOMAIN_WEIGHTS["enc"]))
  print("terms (pix, feat, enc, total):\n", terms)
  print("float32 vs float64 torch:", _errors(terms, terms64), "| grad", _errors(grad, grad64))
  for step in (1, INDOMAIN_STEPS):
    print(f"Adam codes after {step} step(s), float32 vs float64 torch: from w",
          _errors(adam_from_w[step - 1], adam64_from_w[step - 1]), "| from E(x)",
          _errors(adam_from_encoder[step - 1], adam64_from_encoder[step - 1]))
  for name in sorted(os.listdir(out)):
    if name.startswith("indomain"):
      print(f"{name}: {os.path.getsize(os.path.join(out, name))} bytes")


def _errors(ours, ref) -> str:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  err = np.abs(ours - ref).max()
  return f"max abs err {err:.3e}, max |ref| {np.abs(ref).max():.3e}, rel {err / np.abs(ref).max():.3e}"


def full256(official: str):
  """Prints torch-vs-ours errors for the full official 256-px generator and encoder with random weights."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_default_matmul_precision", "float32")
  from idinvert_jax.convert import encoder as convert_encoder  # pylint: disable=g-import-not-at-top
  from idinvert_jax.convert import generator as convert_generator  # pylint: disable=g-import-not-at-top
  from idinvert_jax.models import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
  from idinvert_jax.models import generator as generator_lib  # pylint: disable=g-import-not-at-top
  net_lib, enc_lib, _ = _import_official(official)
  gen = torch.Generator().manual_seed(1)
  torch.manual_seed(1)
  cfg = dict(resolution=256, z_dim=512, w_dim=512, mapping_layers=8, fmaps_base=16384, fmaps_max=512,
             truncation_psi=0.7, truncation_layers=8)
  G = official_generator(net_lib, cfg)
  randomise_generator(G, gen)
  z = torch.randn(2, 512, generator=gen)
  wp = torch.randn(2, 14, 512, generator=gen)
  with torch.no_grad():
    ref_wp_image = nhwc(G.synthesis(wp))
    ref_z_image = nhwc(G(z))
  ours_G = generator_lib.Generator(resolution=256)
  variables = convert_generator.official_generator_to_variables(
      {k: v.numpy() for k, v in G.state_dict().items()}, ours_G)
  print("generator 256 synthesize(wp):", _errors(generator_lib.synthesize(ours_G, variables, wp.numpy()),
                                                 ref_wp_image))
  print("generator 256 generate(z):   ", _errors(generator_lib.generate(ours_G, variables, z.numpy()), ref_z_image))
  # How much of that is float32 noise: both float32 results against torch in float64.
  with torch.no_grad():
    ref64 = nhwc(G.double().synthesis(wp.double()))
  G.float()
  print("  float64 torch vs float32 torch:", _errors(ref_wp_image, ref64))
  print("  float64 torch vs float32 ours: ", _errors(generator_lib.synthesize(ours_G, variables, wp.numpy()), ref64))
  E = official_encoder(enc_lib, dict(resolution=256, w_dim=512, channels_base=64, channels_max=1024))
  randomise_encoder(E, gen)
  x = torch.rand(2, 3, 256, 256, generator=gen) * 2 - 1
  with torch.no_grad():
    ref_code = E(x).view(2, 14, 512).numpy()
  ours_E = encoder_lib.Encoder(resolution=256)
  enc_vars = convert_encoder.official_encoder_to_variables(
      {k: v.numpy() for k, v in E.state_dict().items()}, ours_E)
  print("encoder 256 encode(x):       ", _errors(encoder_lib.encode(ours_E, enc_vars, nhwc(x)), ref_code))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--official", required=True, help="path of an idinvert_pytorch checkout (outside this repo)")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
  parser.add_argument("--indomain", action="store_true", help="write the in-domain inversion fixture instead")
  parser.add_argument("--full256", action="store_true", help="compare the full 256-px models instead")
  args = parser.parse_args()
  if args.full256:
    full256(args.official)
  elif args.indomain:
    make_indomain_fixture(args.official, args.out)
  else:
    make_fixtures(args.official, args.out)


if __name__ == "__main__":
  main()
