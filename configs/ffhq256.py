"""The reference experiment: the official `styleganinv_ffhq256` models, every setting spelled out.

256 px StyleGAN-v1 generator (29,500,757 parameters), D_basic discriminator, domain-guided encoder, VGG16 conv4_3
perceptual features; training and inversion settings of the official code. The other configs start from this one
(configs/common.py) and change a few fields. Sources quoted below: the paper (Zhu et al., "In-Domain GAN Inversion
for Real Image Editing", ECCV 2020), genforce/idinvert (TF: train_encoder.py, training/training_loop_encoder.py),
genforce/idinvert_pytorch (models/model_settings.py, models/*_network.py, invert.py, utils/inverter.py, diffuse.py)
and NVlabs StyleGAN (the GAN training idinvert uses). Where this project differs it says so.

Convert the released weights, then invert real faces (100 in-domain iterations per image):
  python -m idinvert_jax.convert --generator styleganinv_ffhq256_generator.pth \
      --encoder styleganinv_ffhq256_encoder.pth --vgg vgg16.pth --config configs/ffhq256.py --output ckpt_ffhq256
  python invert.py --checkpoint ckpt_ffhq256 --images examples/ --output out_ffhq256
produces out_ffhq256/ with per-image reconstructions, W+ codes (.npy) and an HTML summary.
Training from scratch (needs an accelerator pod and the FFHQ images in a folder):
  python train.py --config configs/ffhq256.py --workdir runs/ffhq256 --config.data.source=folder \
      --config.data.path=/data/ffhq
"""
import ml_collections


def get_model_config() -> ml_collections.ConfigDict:
  """config.model: the architecture of the released styleganinv_ffhq256 weights."""
  model = ml_collections.ConfigDict()
  model.resolution = 256                # MODEL_POOL['styleganinv_ffhq256']['resolution']
  model.image_channels = 3              # RGB

  g = model.generator = ml_collections.ConfigDict()
  g.z_dim = 512                         # StyleGANGeneratorNet z_space_dim
  g.w_dim = 512                         # w_space_dim
  g.mapping_layers = 8                  # StyleGAN: 8 fully connected mapping layers
  g.mapping_fmaps = 512                 # hidden width of the mapping (the official net uses fmaps_max here)
  g.mapping_lr_mul = 0.01               # mapping learning-rate multiplier (equalised LR)
  g.fmaps_base = 16384                  # fmaps_base 16 << 10: min(fmaps_base // res, fmaps_max) channels at res
  g.fmaps_max = 512                     # fmaps_max: 512 channels up to 32 px, 256 at 64, 128 at 128, 64 at 256
  g.fused_scale = "auto"                # fused_scale 'auto': transposed-conv upsampling from fused_scale_min_res
  g.fused_scale_min_res = 128           # StyleGAN: fused up/down-sampling at >= 128 px
  g.final_tanh = True                   # MODEL_POOL final_tanh: images in (-1, 1)
  g.repeat_w = False                    # MODEL_POOL repeat_w False: the mapping emits all L = 14 codes (W+)
  g.noise_mode = "const"                # STYLEGAN_RANDOMIZE_NOISE = False: the stored noise maps
  g.truncation_psi = 0.7                # STYLEGAN_TRUNCATION_PSI (z -> image path only; W+ codes are not truncated)
  g.truncation_layers = 8               # STYLEGAN_TRUNCATION_LAYERS

  d = model.discriminator = ml_collections.ConfigDict()
  d.fmaps_base = 16384                  # StyleGAN D_basic fmap_base 8192 (its convention is half of ours)
  d.fmaps_max = 512                     # fmap_max 512
  d.mbstd_group_size = 4                # minibatch-stddev group size
  d.mbstd_num_features = 1              # minibatch-stddev features
  d.fused_scale = "auto"                # fused conv + downscale from fused_scale_min_res
  d.fused_scale_min_res = 128

  e = model.encoder = ml_collections.ConfigDict()
  e.channels_base = 64                  # idinvert_pytorch StyleGANEncoderNet encoder_channels_base 64
  e.channels_max = 1024                 # encoder_channels_max 1024 (the TF encoder of genforce/idinvert is laid
  #                                       out differently; the released .pth files are this architecture)
  e.normalization = "batch"             # BatchNorm after every conv, as both official encoders ('none': the
  #                                       encoder study's ablation, each BatchNorm replaced by a bias)

  p = model.perceptual = ml_collections.ConfigDict()
  p.weights = ""                        # vgg16.pth or Keras ..._notop.h5 ('' = none: perceptual terms off, warned)
  p.layers = ("conv4_3",)               # PerceptualModel output: conv4_3 after ReLU (paper: VGG feature F)
  return model


def get_train_config() -> ml_collections.ConfigDict:
  """config.train: the GAN (stage 1) and the domain-guided encoder (stage 2).

  Batch sizes and step counts are this project's defaults (sized for a small pod); the official runs used
  8 GPUs: StyleGAN's progressive schedule for the GAN, and for the encoder 16 images per GPU (batch 128) for
  14,000 kimg at 256 px (train_encoder.py), i.e. --config.train.encoder.batch_size=128
  --config.train.encoder.num_steps=109375.
  """
  train = ml_collections.ConfigDict()
  gan = train.gan = ml_collections.ConfigDict()
  gan.batch_size = 32                   # global batch, split over hosts and the `data` mesh axis
  gan.num_steps = 10000
  gan.seed = 0
  gan.mirror = True                     # StyleGAN FFHQ: mirror_augment=True
  gan.adam_eps = 1e-8                   # StyleGAN Adam: beta1 0, beta2 0.99, epsilon 1e-8
  gan.r1_gamma = 10.0                   # D_logistic_simplegp r1_gamma 10
  gan.checkpoint_every = 1000           # steps between Orbax checkpoints + export/ (and at the end or on SIGTERM)
  gan.keep_checkpoints = 3
  gan.log_every = 50                    # steps between metrics.jsonl lines
  gan.sample_every = 1000               # steps between sample grids in samples/ (0 = never)
  gan.num_samples = 8
  gan.g_learning_rate = 0.001           # StyleGAN G learning rate 0.001 (its FFHQ schedule used 0.002 at 256 px)
  gan.d_learning_rate = 0.001           # D learning rate, as G
  gan.adam_b1 = 0.0
  gan.adam_b2 = 0.99
  gan.style_mixing_prob = 0.9           # style mixing regularisation probability
  gan.ema_kimg = 10.0                   # G_smoothing_kimg: EMA half-life of the generator weights
  gan.w_avg_beta = 0.995                # dlatent_avg_beta: decay of the tracked w_avg (truncation centre)
  gan.precision = "float32"             # compute dtype of G and D (official: float32); 'bfloat16' keeps parameters,
  #                                       EMA and Adam state float32 (idinvert_jax/precision.py, configs/ffhq256_pod.py)

  enc = train.encoder = ml_collections.ConfigDict()
  enc.batch_size = 32                   # official: 16 per GPU x 8 GPUs = 128
  enc.num_steps = 10000                 # official: 14,000 kimg at 256 px
  enc.seed = 0
  enc.mirror = True                     # train_encoder.py --mirror_augment (default True)
  enc.adam_eps = 1e-8                   # E_opt / D_opt epsilon 1e-8
  enc.r1_gamma = 10.0                   # D_loss D_logistic_simplegp r1_gamma 10.0
  enc.checkpoint_every = 1000
  enc.keep_checkpoints = 3
  enc.log_every = 50
  enc.sample_every = 1000
  enc.num_samples = 8
  enc.learning_rate = 1e-4              # lr learning_rate 0.0001, for E and D
  enc.lr_schedule = "staircase"         # 'staircase' (below) | 'constant' | 'cosine' (encoder study options)
  enc.warmup_steps = 0                  # linear warm-up before the schedule (official: none)
  enc.lr_decay_rate = 0.8               # decay_rate 0.8 ...
  enc.lr_decay_every_fraction = 0.25    # ... every max_iters // 4 steps (official: a smooth exponential decay,
  #                                       staircase=False; here one x0.8 step per quarter of training)
  enc.adam_b1 = 0.9                     # E_opt / D_opt beta1 0.9
  enc.adam_b2 = 0.99                    # beta2 0.99
  enc.lambda_vgg = 5e-5                 # E_loss feature_scale 0.00005 (paper: lambda_vgg); 0 without VGG16 weights
  enc.lambda_adv = 0.08                 # E_loss D_scale 0.08 (paper: lambda_adv)
  enc.lambda_dfeat = 0.0                # not in the paper: distance in the frozen stage-1 D's features (0 = off)
  enc.lambda_code = 0.0                 # not in the paper: mean((E(G(w)) - w)^2) on sampled codes (0 = off)
  enc.code_batch_size = 0               # codes sampled per step for lambda_code (0 = the batch size)
  enc.train_bn_scale = False            # official TF trains every BatchNorm gamma; the PyTorch port freezes it
  enc.health_adv_share = 0.5            # warn when the weighted adversarial term is over this share of the loss
  enc.health_stall_fraction = 0.2       # warn when the pixel loss has not improved over this last part of the run
  enc.precision = "float32"             # compute dtype of E, G, D and VGG16, as gan.precision
  enc.generator_checkpoint = ""         # the frozen generator: '' = this workdir's export/ of stage 1
  return train


def get_invert_config() -> ml_collections.ConfigDict:
  """config.invert: in-domain inversion with the official invert.py defaults (fields of InvertSettings)."""
  inv = ml_collections.ConfigDict()
  inv.method = "indomain"               # encoder init + domain-regularised optimisation (paper Sec. 3.2)
  inv.num_iterations = 100              # invert.py --num_iterations 100
  inv.learning_rate = 0.01              # --learning_rate 0.01 (Adam, torch defaults b1 0.9, b2 0.999, eps 1e-8)
  inv.loss_weight_pix = 1.0             # StyleGANInverter reconstruction_loss_weight 1.0
  inv.loss_weight_feat = 5e-5           # --loss_weight_feat 5e-5 (paper: lambda_vgg)
  inv.loss_weight_enc = 2.0             # --loss_weight_enc 2.0 (paper: lambda_dom)
  inv.init = "encoder"                  # start at E(x)
  inv.batch_size = 8                    # images optimised together, each with its own Adam state (official: 1)
  inv.num_results = 5                   # --num_results 5 intermediate images
  inv.precision = "float32"
  inv.chunk_size = 10                   # optimisation steps between progress updates
  return inv


def get_mesh_config() -> ml_collections.ConfigDict:
  """config.mesh: one data-parallel axis over all devices."""
  mesh = ml_collections.ConfigDict()
  mesh.axes = ("data",)
  mesh.shape = (-1,)
  return mesh


def get_config() -> ml_collections.ConfigDict:
  from idinvert_jax import data  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict()
  config.model = get_model_config()
  # Images: the embedded synthetic faces by default (no download); FFHQ with --config.data.source=folder
  # --config.data.path=DIR. Every field is documented in idinvert_jax/data/__init__.py.
  config.data = data.get_data_config()
  config.train = get_train_config()
  config.invert = get_invert_config()
  config.mesh = get_mesh_config()
  return config
