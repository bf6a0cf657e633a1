"""Metrics (import the module you need; nothing heavy is imported here):

- `reconstruction`: per-image mse / mse_uint8 ([-1, 1] scale), psnr ([0, 255], range 255), ssim (Gaussian 11 /
  1.5), perceptual_distance (VGG16 conv4_3; None without weights).
- `swd`: ProGAN's sliced Wasserstein distance over Laplacian-pyramid patches (x 1e3 per level and average).
- `frechet`: Frechet distance between Gaussian fits of NAMED features (never FID: no Inception weights here).
- `attributes`: synthetic-faces attribute predictor, editing success, boundary precision/recall/AUC.
"""
