"""The demo model's architecture (configs/demo64.py) trained on real faces: 64 px CelebA crops.

Research-only data that is never committed (nor any model trained on it): `../shared/data/celeba_crops64_train.npz`
(5,023 uint8 face crops; see ../shared/README.md). Images 0..4922 train; the last 100 are held out for evaluation:

  python train.py --config configs/celeba64.py --workdir runs/celeba64
  python -m idinvert_jax.data export --path ../shared/data/celeba_crops64_train.npz --subset 4923: \
      --output runs/celeba64_heldout
  python evaluate.py --checkpoint runs/celeba64 --images runs/celeba64_heldout --output reports/celeba64

Encoder recipe (issue #19's study, bench/results/encoder_study.md, 100 held-out crops, one GAN for every row):
no BatchNorm and lr 1e-3 held constant for 2,500 steps (40k images), i.e. exactly the study's row `no_bn_const`.
Against the demo recipe it inherits (BatchNorm, lr 1e-3 decayed x0.8 per quarter; row lr1e-3): the encoder underfits
at this budget, so a decaying rate costs, and without BatchNorm it fits faster (+1.2 dB encoder at 2,500 steps with
the decay). The trade-off: the BatchNorm-free encoder's outputs spread less than the generator's codes (std of
E(G(w)) 0.22 against 0.55 for w, `bench/encoder_code_scale.py`), so in-domain codes gain PSNR and lose some of the
interpolation realism that BatchNorm gives (SWD 55.0 here against 46.3 for the previous recipe of this config,
BatchNorm + constant rate for 5,000 steps: `--config.model.encoder.normalization=batch
--config.train.encoder.num_steps=5000`, encoder 18.3 dB, in-domain lambda_enc 2 21.0 dB).

Expected (measured 2026-12-03, 2-core AMD EPYC: GAN 7,500 steps 71 min, encoder 2,500 steps ~25 min alone (36 CPU
min); 100 held-out crops, `python evaluate.py --checkpoint runs/celeba64 --images runs/celeba64_heldout --methods
encoder,indomain --lambda_enc=0,2`): PSNR encoder 18.4 dB (SSIM 0.45), in-domain (100 steps) 24.2 dB at
lambda_enc 0 and 21.97 dB at 2, against 20.97 dB for plain optimisation (100 steps), i.e. the issue's target of
optimisation + 1 dB, met by 0.005 dB (within noise); interpolation mid-point SWD of the lambda_enc 2 codes 55.0
against 59.0 for optimisation. The encoder alone stays far from 21 dB: +0.53 dB per doubling of training
(study plot) puts it past 160k steps. With BatchNorm and 2,500 steps decayed x0.8 per quarter (row lr1e-3) the
same GAN gave 17.6 / 24.3 / 20.9 dB, SWD 47.7.
"""
from configs import demo64


def get_config():
  config = demo64.get_config()
  config.data.source = "array"
  config.data.path = "../shared/data/celeba_crops64_train.npz"
  config.data.npz_key = "images"
  config.data.subset = ":4923"
  config.data.resize = "resize"  # The crops are already square 64 px.
  config.model.encoder.normalization = "none"   # Study row no_bn_const (see above).
  config.train.encoder.num_steps = 2500
  config.train.encoder.lr_schedule = "constant"
  config.train.encoder.train_bn_scale = False   # No BatchNorm scales to train.
  return config
