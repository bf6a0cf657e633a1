r"""configs/ffhq256.py laid out for a TPU v5e pod (v5e:16x16, 256 chips): global batch 1024, bfloat16 compute.

Same official architecture and losses; only the layout and the numerics change:
  batch 1024 = 4 images per chip (the official runs used 32 in all). Not trained at this batch here: it is what the
  compile check proves fits; the learning rates are the official ones (GAN: 0.002 of the official 256-px run).
  precision bfloat16: G, D, E and VGG16 compute in bfloat16, parameters / EMA / Adam state / BN statistics stay
  float32 (idinvert_jax/precision.py). float32 stays the reference in configs/ffhq256.py.
  mesh: one `data` axis over every chip; `configs/ffhq256_pod.py:fsdp` also shards the kernels of the trained
  models and their Adam moments over it (FSDP through config.mesh.param_rules; gathered per step).

Check it on any machine with libtpu (no TPU needed; minutes per stage on a CPU):
  python train.py --config configs/ffhq256_pod.py --workdir /tmp/aot --compile_only --topology v5e:16x16
prints per chip the HBM each stage needs (README, "TPU pods and GPUs": GAN and encoder fit v5e's 15.75 GiB) and
ends each stage with a JSON line ("fits": true). Train on every worker of the pod (the README has the gcloud
command): python train.py --config configs/ffhq256_pod.py --workdir /mnt/shared/runs/ffhq256 \
    --config.data.source=folder --config.data.path=/data/ffhq
"""
from configs import ffhq256

GLOBAL_BATCH = 1024  # 256 chips x 4

# FSDP: the first rule whose regex matches a parameter path and whose spec fits its shape wins (training/mesh.py);
# conv kernels [kh, kw, in, out] and dense kernels [in, out] split their output features over the data axis, in
# the trained models and in the Adam moments (same paths). Shapes that do not divide (e.g. 3 RGB channels) stay
# replicated.
FSDP_RULES = (
    (r"kernel$", (None, None, None, "data")),
    (r"kernel$", (None, "data")),
)


def get_config(arg: str | None = None):
  """`arg` 'fsdp' shards parameters and optimiser state over the data axis (configs/ffhq256_pod.py:fsdp)."""
  config = ffhq256.get_config()
  for stage in ("gan", "encoder"):
    config.train[stage].batch_size = GLOBAL_BATCH
    config.train[stage].precision = "bfloat16"
  config.train.gan.g_learning_rate = config.train.gan.d_learning_rate = 0.002
  config.invert.precision = "bfloat16"
  if arg == "fsdp":
    config.mesh.param_rules = FSDP_RULES
  elif arg:
    raise ValueError(f"configs/ffhq256_pod.py:{arg}: unknown option; use configs/ffhq256_pod.py or "
                     "configs/ffhq256_pod.py:fsdp")
  return config
