"""Official `styleganinv_ffhq256` architecture: 256 px StyleGAN-v1 (29,500,757 generator parameters), D_basic,
domain-guided encoder, VGG16 conv4_3 perceptual features; official training and inversion defaults.

Convert the released weights, then invert real faces (100 in-domain iterations per image):
  python -m idinvert_jax.convert --generator styleganinv_ffhq256_generator.pth \
      --encoder styleganinv_ffhq256_encoder.pth --vgg vgg16.pth --config configs/ffhq256.py --output ckpt_ffhq256
  python invert.py --checkpoint ckpt_ffhq256 --images examples/ --output out_ffhq256
produces out_ffhq256/ with per-image reconstructions, W+ codes (.npy) and an HTML summary.
Training from scratch (needs an accelerator pod and the FFHQ images in a folder):
  python train.py --config configs/ffhq256.py --workdir runs/ffhq256 --config.data.source=folder \
      --config.data.path=/data/ffhq
"""
from configs import common


def get_config():
  return common.get_config(resolution=256)
