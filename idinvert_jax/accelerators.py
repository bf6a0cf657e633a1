"""Published per-chip figures of the accelerators the project targets: HBM, peak FLOP/s, HBM bandwidth.

Used for ESTIMATES only (the compile check's roofline bound, the benchmarks' fraction of peak); nothing here is
measured. `lookup(device_kind)` matches `jax.Device.device_kind`, e.g. 'TPU v5 lite' or 'NVIDIA H100 80GB HBM3'.

Sources (vendor pages, read 2026-12-02; "dense" = without structured sparsity, which the datasheets double):
  TPU v4   cloud.google.com/tpu/docs/v4:  275 TFLOP/s bf16 per chip, 32 GiB HBM2, 1200 GB/s
  TPU v5e  cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16 per chip, 16 GB HBM2, 819 GB/s
  TPU v5p  cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16 per chip, 95 GB HBM2e, 2765 GB/s
  TPU v6e  cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16 per chip, 32 GB, 1638 GB/s
  NVIDIA datasheets (H100, H200, A100, L4), dense tensor-core rates: H100 SXM 989 bf16 / 495 TF32 TFLOP/s, 80 GB,
  3.35 TB/s; H100 PCIe 756 / 378, 80 GB, 2.0 TB/s; H200 SXM 989 / 495, 141 GB, 4.8 TB/s; A100 SXM 312 / 156,
  80 GB 2.039 TB/s (40 GB: 1.555 TB/s); L4 121 / 60, 24 GB, 300 GB/s.
float32 peaks: JAX's default precision runs float32 matmuls and convolutions as one bf16 pass on TPU (the bf16 rate)
and on TF32 tensor cores on NVIDIA Ampere and later (`peak_f32_flops`); with jax_default_matmul_precision='float32'
NVIDIA GPUs use their FP32 units (`peak_f32_full_flops`: H100 SXM 67, H100 PCIe 51, H200 67, A100 19.5, L4 30.3
TFLOP/s) and TPUs several bf16 passes (no single published figure: None).
HBM capacities of TPUs are the usable bytes the TPU compiler of libtpu 0.0.42 reports when a program does not fit
(v5e 15.75 GiB of 16; v4 30.75 of 32; v5p 95.74; v6e 31.25), so "fits" agrees with the compiler. One JAX device
per chip (v4 and v5p in "megacore" mode, as on the real pods); a chip's figures are shared by the devices on it
when there are several (`devices_per_chip`).
"""
from __future__ import annotations

import dataclasses

GiB = 2 ** 30
TERA = 1e12


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip's published figures (per chip; see `devices_per_chip` in compile_check)."""
  name: str
  kind_tokens: tuple[str, ...]       # all must occur in jax's device_kind
  hbm_bytes: int
  peak_bf16_flops: float             # FLOP/s, dense
  peak_f32_flops: float              # FLOP/s of float32 matmuls at JAX's default precision (TPU bf16 pass, TF32)
  hbm_bytes_per_s: float
  peak_f32_full_flops: float | None = None  # FLOP/s with jax_default_matmul_precision='float32'

  def peak_flops(self, precision: str, matmul_precision: str = "default") -> float | None:
    """Peak FLOP/s for models computing in `precision` ('float32' | 'bfloat16') at a JAX matmul precision."""
    if precision == "bfloat16":
      return self.peak_bf16_flops
    return self.peak_f32_flops if matmul_precision in ("default", "bfloat16", "") else self.peak_f32_full_flops


# More specific entries first (token sets are matched in order).
CHIPS = (
    Chip("TPU v4", ("TPU v4",), int(30.75 * GiB), 275 * TERA, 275 * TERA, 1200e9),
    Chip("TPU v5e", ("TPU v5 lite",), int(15.75 * GiB), 197 * TERA, 197 * TERA, 819e9),
    Chip("TPU v5p", ("TPU v5",), int(95.74 * GiB), 459 * TERA, 459 * TERA, 2765e9),
    Chip("TPU v6e", ("TPU v6 lite",), int(31.25 * GiB), 918 * TERA, 918 * TERA, 1638e9),
    Chip("NVIDIA H200", ("H200",), 141 * 10 ** 9, 989 * TERA, 494.7 * TERA, 4.8e12, 67 * TERA),
    Chip("NVIDIA H100 PCIe", ("H100", "PCIe"), 80 * 10 ** 9, 756 * TERA, 378 * TERA, 2.0e12, 51 * TERA),
    Chip("NVIDIA H100 SXM", ("H100",), 80 * 10 ** 9, 989 * TERA, 494.7 * TERA, 3.35e12, 67 * TERA),
    Chip("NVIDIA A100 80GB", ("A100", "80GB"), 80 * 10 ** 9, 312 * TERA, 156 * TERA, 2.039e12, 19.5 * TERA),
    Chip("NVIDIA A100 40GB", ("A100",), 40 * 10 ** 9, 312 * TERA, 156 * TERA, 1.555e12, 19.5 * TERA),
    Chip("NVIDIA L4", ("L4",), 24 * 10 ** 9, 121 * TERA, 60 * TERA, 300e9, 30.3 * TERA),
)


def lookup(device_kind: str) -> Chip | None:
  """The table entry for a jax device_kind ('TPU v5 lite', 'NVIDIA A100-SXM4-80GB', ...), or None if unknown."""
  kind = device_kind.lower()
  for chip in CHIPS:
    if all(token.lower() in kind for token in chip.kind_tokens):
      return chip
  return None


def roofline_seconds(chip: Chip, flops: float, bytes_accessed: float, precision: str = "bfloat16",
                     devices_per_chip: int = 1) -> float:
  """Lower bound on one device's step time: the slower of its compute at peak and its HBM traffic at full
  bandwidth (a device gets 1 / devices_per_chip of its chip).

  An ESTIMATE from published peaks: real steps are slower (kernels below peak, collectives, host input).
  """
  share = 1.0 / devices_per_chip
  return max(flops / (chip.peak_flops(precision) * share), bytes_accessed / (chip.hbm_bytes_per_s * share))
