"""The demo model (`make demo`): 64 px StyleGAN-v1 + domain-guided encoder, slim enough to train on 2 CPU cores.

The official architecture with fewer channels: w_dim 128 (8 mapping layers), generator/discriminator channels
min(1024 / res, 64) (64 up to 16 px, 32 at 32 px, 16 at 64 px), encoder 16..128 channels; batch 16, GAN learning
rate 0.0015, encoder learning rate 1e-3. Trained on the embedded synthetic faces (10,000 images of seed 0; the
demo's examples use seed 12345):

  python train.py --config configs/demo64.py --workdir runs/demo64          # GAN 7500 steps, then encoder 2500
  rm -rf assets/demo_checkpoint && cp -r runs/demo64/export assets/demo_checkpoint
  python tools/make_demo_assets.py boundaries --checkpoint assets/demo_checkpoint

The shipped encoder was retrained twice on the shipped generator (boundaries unchanged: they live in the
generator's W space). 2026-12-02: this config's 1e-3 rate instead of the official 1e-4 (encoder PSNR on 32
held-out faces 21.3 -> 24.0 dB). 2026-12-03: every BatchNorm scale trained as in the official TF code
(`train_bn_scale`, the best row of the encoder study, bench/results/encoder_study.md), measured with
`python evaluate.py --checkpoint CKPT --images synthetic:32 --methods encoder,indomain --lambda_enc=0,2`:
encoder 23.95 -> 24.42 dB (SSIM 0.747 -> 0.762), in-domain lambda_enc 0 29.48 -> 29.75 dB, lambda_enc 2
26.22 -> 26.37 dB, interpolation SWD (lambda_enc 2) 50.1 -> 49.9; the encoder's codes of generated faces moved
closer to the generator's W (`bench/encoder_code_scale.py`: std of E(G(w)) 2.81 -> 1.60 against 0.54 for w):

  python train.py --config configs/demo64.py --workdir runs/demo64_enc --stage encoder \
      --config.train.encoder.generator_checkpoint=$PWD/assets/demo_checkpoint

Expected (2-core Intel Xeon): GAN ~36 img/s (37.8 GFLOP/step), encoder ~33 img/s, i.e. ~55 + ~20 minutes on an
otherwise idle machine (the shipped checkpoint took longer: other jobs shared the cores). The checkpoint
(generator, encoder, discriminator, float32) is 15 MB, most of it the encoder's last dense layer (2048 x 1536).
Shipped example faces then invert to PSNR 24.4-29.8 dB after 100 in-domain steps (encoder alone 22.8-27.9 dB); see
tests/test_demo_checkpoint.py. No VGG16 weights: the perceptual terms are off in training and inversion (warned),
as everywhere without the file.
"""
from configs import common


def get_config():
  config = common.get_config(resolution=64)
  # 4..16 px: 64 channels, 32 px: 32, 64 px: 16.
  common.set_widths(config, w_dim=128, mapping_layers=8, fmaps_base=1024, fmaps_max=64, encoder_channels=(16, 128))
  config.train.gan.num_steps = 7500            # 120 kimg
  config.train.gan.g_learning_rate = 0.0015
  config.train.gan.d_learning_rate = 0.0015
  config.train.encoder.num_steps = 2500        # 40 kimg
  # The official encoder rate (1e-4) is meant for millions of images; in this 40k-image budget 1e-3 gets there
  # ~5x sooner (500 steps on this generator, 32 held-out faces: encoder PSNR 17.2 dB at 1e-4, 20.6 dB at 1e-3).
  config.train.encoder.learning_rate = 1e-3
  # Not the PyTorch port's layout (it freezes gamma): the official TF code trains every BatchNorm scale, which lets
  # the encoder match the generator's code scale (bench/results/encoder_study.md; +0.5 dB encoder PSNR here).
  config.train.encoder.train_bn_scale = True
  common.set_train(config, batch_size=16, log_every=25, sample_every=250, checkpoint_every=250)
  return config
