"""The demo model's architecture (configs/demo64.py) trained on real faces: 64 px CelebA crops.

Research-only data that is never committed (nor any model trained on it): `../shared/data/celeba_crops64_train.npz`
(5,023 uint8 face crops; see ../shared/README.md). Images 0..4922 train; the last 100 are held out for evaluation:

  python train.py --config configs/celeba64.py --workdir runs/celeba64
  python -m idinvert_jax.data export --path ../shared/data/celeba_crops64_train.npz --subset 4923: \
      --output runs/celeba64_heldout
  python evaluate.py --checkpoint runs/celeba64 --images runs/celeba64_heldout --output reports/celeba64

Expected (measured 2026-12-02, 2-core Intel Xeon, ~75 min GAN + ~22 min encoder alone; evaluate with
--num_images 48): PSNR on held-out faces encoder 17.7 dB, in-domain (100 steps) 24.3 dB at lambda_enc 0 and
20.9 dB at 2, optimize 1000 steps 26.2 dB; interpolation mid-point SWD in-domain 50.8-53.7 vs optimize 60.8-66.3.
The README's real-photo table holds the full run. Since 2026-12-03 the encoder recipe inherited from demo64 also
trains every BatchNorm scale (`train_bn_scale`): in the encoder study on the 100 held-out crops
(bench/results/encoder_study.md, same GAN) that row measured encoder 17.49 dB / SSIM 0.411 and in-domain 24.35 dB
at lambda_enc 0, 20.97 dB at 2 (without it: 17.45 / 0.398, 24.30, 20.77), in 30 instead of 37 CPU minutes.
"""
from configs import demo64


def get_config():
  config = demo64.get_config()
  config.data.source = "array"
  config.data.path = "../shared/data/celeba_crops64_train.npz"
  config.data.npz_key = "images"
  config.data.subset = ":4923"
  config.data.resize = "resize"  # The crops are already square 64 px.
  return config
