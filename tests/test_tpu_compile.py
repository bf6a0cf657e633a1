"""TPU compile checks without a TPU: the real TPU compiler (libtpu) builds the training steps for pod topologies.

Skipped, with the reason, where libtpu is not installed (`pip install -e '.[tpu]'`; Linux x86_64 wheels only).

Cost, measured on the 2-core CI-class machine (CPU seconds of the TPU compiler): the official 256-px steps take
7-20 CPU-minutes and 4-11 GB each to compile (v5e:4x4: GAN 609 s, encoder 1073-1167 s; bench/results/compile_*.txt),
so the suite compiles the real code paths at the tiny config, checks the 256-px programs by lowering them
(seconds: which operations, which shardings), and compiles the 256-px steps themselves only with
IDINVERT_TPU_COMPILE_256=1 (`make test-tpu256`). The inversion step is compiled through invert.py itself at a 16-px
tiny config (one compile, 1-3 minutes on a busy 2-core machine) and lowered at 256 px. Compiles here use JAX's
default matmul precision, as the CLIs do (conftest's float32 would compile multi-pass float32 convolutions on TPU:
another program, ~6x slower to compile).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

pytest.importorskip("libtpu", reason="libtpu is not installed (pip install -e '.[tpu]', Linux x86_64 only): the "
                    "TPU topology compile checks need the TPU compiler")

from configs import ffhq256  # noqa: E402
from configs import tiny  # noqa: E402
from idinvert_jax import compile_check  # noqa: E402
from idinvert_jax import export  # noqa: E402
from idinvert_jax import inversion  # noqa: E402
from idinvert_jax import invert_job  # noqa: E402
from idinvert_jax import training  # noqa: E402
from idinvert_jax.training import mesh as mesh_lib  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
V5E = "v5e:4x4"
V5E_HBM = int(15.75 * 2**30)
COMPILE_256 = os.environ.get("IDINVERT_TPU_COMPILE_256") == "1"
needs_256 = pytest.mark.skipif(not COMPILE_256, reason="the 256-px TPU compiles take 7-20 CPU-minutes and up to 11 GiB "
                               "each: run them with IDINVERT_TPU_COMPILE_256=1 (make test-tpu256)")


@pytest.fixture(scope="module", autouse=True)
def cli_matmul_precision():
  with jax.default_matmul_precision(None):
    yield


def tiny_config(stage, batch=16):
  config = tiny.get_config()
  config.model.resolution = 8
  config.train[stage].batch_size = batch
  return config


def topology_mesh(name):
  return mesh_lib.make_mesh(None, compile_check.topology_devices(name))


def ffhq256_config(stage, per_chip=1, chips=16):
  config = ffhq256.get_config()
  config.train[stage].batch_size = per_chip * chips
  return config


def op_counts(text):
  return {op: text.count(f"stablehlo.{op}") for op in ("convolution", "dot_general")}


def test_topology_devices_are_the_pod_slices_chips():
  devices = compile_check.topology_devices("v5e:16x16")
  assert len(devices) == 256 and devices[0].device_kind == "TPU v5 lite" and devices[0].platform == "tpu"
  v4 = compile_check.topology_devices("v4:2x2x1")  # one device per chip ("megacore"), as on a v4 pod
  assert len(v4) == 4 and compile_check.devices_per_chip(v4) == 1
  with pytest.raises(compile_check.CompileCheckError, match="v5e:16x16"):
    compile_check.topology_devices("v5e-256")


@pytest.mark.parametrize("stage", ["gan", "encoder"])
def test_ffhq256_train_steps_lowered_for_tpu_use_convolutions_not_the_cpu_products(stage):
  # The CPU fast paths (im2col products) must not leak into a program compiled for TPU chips on a CPU host.
  config = training.stage_config(ffhq256_config(stage), stage)
  frozen = training.abstract_frozen_models(config) if stage == "encoder" else None
  counts = {}
  for name, mesh in (("tpu", topology_mesh(V5E)), ("cpu", mesh_lib.make_mesh(None, jax.devices()[:1]))):
    counts[name] = op_counts(training.build_trainer(config, stage, mesh, frozen_models=frozen).lower().as_text())
  assert counts["tpu"]["convolution"] > counts["cpu"]["convolution"] > 0, counts
  assert counts["tpu"]["dot_general"] < counts["cpu"]["dot_general"], counts


@pytest.mark.parametrize("stage", ["gan", "encoder"])
def test_train_steps_compile_for_a_v5e_slice_with_the_cli_report(stage):
  report = training.compile_report(tiny_config(stage), stage, topology_mesh(V5E), topology=V5E)
  assert report.devices == 16 and report.device_kind == "TPU v5 lite" and report.hbm_bytes == V5E_HBM
  assert report.fits and 0 < report.per_device_bytes < V5E_HBM and not report.error, report.lines()
  assert report.flops_per_device > 0 and report.estimated_step_s > 0
  assert report.collectives.get("all-reduce", {}).get("bytes", 0) > 0  # gradients averaged over the 16 chips
  line = json.loads(report.json_line())
  assert line["topology"] == V5E and line["stage"] == stage and line["fits"] is True and line["devices"] == 16
  assert line["flops_per_step"] == pytest.approx(16 * report.flops_per_device)


@needs_256
def test_ffhq256_inversion_step_fits_a_v5e_chip():
  first, found = invert_job.compile_check(None, ffhq256.get_config(), {"batch_size": 16}, topology="v5e:2x2")
  assert first.fits and first.global_batch == 16 and first.flops_per_device > 1e11, first.lines()
  assert found.largest and found.largest >= 4 and found.reports[found.largest].fits


@needs_256
@pytest.mark.parametrize("stage", ["gan", "encoder"])
def test_ffhq256_train_steps_fit_a_v5e_chip(stage):
  report = training.compile_report(ffhq256_config(stage), stage, topology_mesh(V5E), topology=V5E)
  assert report.fits and 0.5 * 2**30 < report.per_device_bytes < V5E_HBM, report.lines()
  # The official architecture's parameters and Adam state are replicated on every chip (no param_rules).
  assert report.memory["argument_size_in_bytes"] > 0.3 * 2**30
  assert report.flops_per_device > 1e11 and report.estimated_step_s > 0
  assert report.collective_bytes_per_device > 0


def test_ffhq256_inversion_step_lowered_for_tpu_uses_convolutions_not_the_cpu_products():
  config = ffhq256.get_config()
  models = export.abstract_models(config)  # shapes only: no weights
  settings = inversion.InvertSettings.from_config(config)
  counts = {}
  for name, devices in (("tpu", compile_check.topology_devices(V5E)), ("cpu", jax.devices()[:1])):
    counts[name] = op_counts(inversion.lower_step(models, settings, devices, len(devices)).as_text())
  assert counts["tpu"]["convolution"] > counts["cpu"]["convolution"] > 0, counts
  assert counts["tpu"]["dot_general"] < counts["cpu"]["dot_general"], counts


def test_invert_py_compile_only_shards_the_batch_over_a_v5e_slice():
  # The CLI's code path from a config alone (no checkpoint, no weights): the in-domain step for 16 images over
  # the 4 chips of v5e:2x2, with G, E and VGG16 in it.
  proc = subprocess.run(
      [sys.executable, "invert.py", "--config", "configs/tiny.py", "--config.model.resolution=16", "--compile_only",
       "--topology", "v5e:2x2", "--batch_size", "16", "--nobatch_search"],
      cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  record = json.loads(lines[-1])
  assert record["topology"] == "v5e:2x2" and record["stage"] == "invert" and record["devices"] == 4
  assert record["fits"] is True and record["global_batch"] == 16 and record["hbm_bytes"] == V5E_HBM
  assert record["flops_per_step"] > 0 and record["estimated_step_s"] > 0
  assert "4 per device" in lines[0] and lines[-2].startswith("largest batch per device that fits: at least 4 "), lines


def test_v4_topology_compiles_with_v4_memory():
  report = training.compile_report(tiny_config("gan", 4), "gan", topology_mesh("v4:2x2x1"), topology="v4:2x2x1")
  assert report.device_kind == "TPU v4" and report.devices == 4 and report.hbm_bytes == int(30.75 * 2**30)
  assert report.fits and report.estimated_step_s > 0


def test_train_py_exits_non_zero_naming_the_fixes_when_a_step_does_not_fit(tmp_path):
  proc = subprocess.run(
      [sys.executable, "train.py", "--config", "configs/tiny.py", "--workdir", str(tmp_path), "--stage", "gan",
       "--compile_only", "--topology", "v5e:2x2", "--config.model.resolution=8",
       "--config.train.gan.batch_size=4194304"],
      cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 1, proc.stderr[-3000:]
  record = json.loads(proc.stdout.strip().splitlines()[-1])
  assert record["fits"] is False and record["per_device_bytes"] > record["hbm_bytes"], record
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("train.py: the gan step needs") and "smaller batch" in last and "bfloat16" in last, last
