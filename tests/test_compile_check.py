"""Compile checks that need no libtpu: the inversion step lowered from shapes and sharded over 8 simulated devices,
and the search for the largest batch per device that fits (on reports of a known memory model)."""
import jax
import pytest

from configs import tiny
from idinvert_jax import compile_check
from idinvert_jax import export
from idinvert_jax import inversion
from idinvert_jax import invert_job

GiB = 2**30
HBM = int(15.75 * GiB)


def test_inversion_step_from_shapes_splits_every_per_image_input_over_all_devices():
  config = tiny.get_config()
  config.model.resolution = 16
  devices = jax.devices()
  assert len(devices) == 8
  compiled = inversion.lower_step(export.abstract_models(config), inversion.InvertSettings.from_config(config),
                                  devices, 16).compile()
  variables, state, batch = compiled.input_shardings[0]
  assert all(s.is_fully_replicated for s in jax.tree_util.tree_leaves(variables))
  for sharding in jax.tree_util.tree_leaves((state, batch)):
    assert sharding.spec[0] == "data" and len(sharding.device_set) == 8
  assert tuple(compiled.output_shardings[0]["w"].spec) == ("data",)
  with pytest.raises(inversion.InversionError, match="multiple of 8"):
    inversion.lower_step(export.abstract_models(config), inversion.InvertSettings(), devices, 12)


def test_compile_only_reports_the_host_devices_and_names_what_is_missing():
  config = tiny.get_config()
  config.model.resolution = 16
  report, found = invert_job.compile_check(None, config, {"batch_size": 8})
  assert report.topology == "host:cpu" and report.devices == 8 and report.stage == "invert" and report.fits
  assert report.flops_per_device > 0 and found.largest is None and "no memory limit" in found.line()
  with pytest.raises(invert_job.InvertJobError, match="--checkpoint CKPT or --config"):
    invert_job.compile_check(None, None, {})
  with pytest.raises(invert_job.InvertJobError, match="multiple of 8"):
    invert_job.compile_check(None, config, {"batch_size": 12})
  with pytest.raises(invert_job.InvertJobError, match="optimisation step"):
    invert_job.compile_check(None, config, {"method": "encoder"})


def memory_model(fixed, per_image, devices=4):
  """report_at(b) of a step needing fixed + per_image * b bytes per device (the TPU compiler refuses what does
  not fit, stating only the temporaries)."""
  calls = []

  def report_at(b):
    calls.append(b)
    need = int(fixed + per_image * b)
    fits = need <= HBM
    memory = {"argument_size_in_bytes": int(0.9 * fixed), "generated_code_size_in_bytes": int(0.1 * fixed)}
    return compile_check.CompileReport(
        topology="v5e:2x2", devices=devices, device_kind="TPU v5 lite", stage="invert", global_batch=b * devices,
        precision="float32", memory=memory if fits else {}, per_device_bytes=need if fits else int(per_image * b),
        hbm_bytes=HBM, fits=fits, flops_per_device=1.0, bytes_accessed_per_device=1.0, estimated_step_s=1.0,
        collectives={}, compile_s=0.0)

  return report_at, calls


@pytest.mark.parametrize("fixed, per_image", [(0.5 * GiB, 0.37 * GiB), (0.04 * GiB, 1.08 * 2**20),
                                              (2 * GiB, 1.3 * GiB), (15 * GiB, 0.3 * GiB)])
def test_the_batch_search_finds_the_largest_batch_that_fits_in_few_compiles(fixed, per_image):
  report_at, calls = memory_model(fixed, per_image)
  found = compile_check.largest_batch_per_device(report_at, report_at(1))
  assert found.largest == int((HBM - fixed) // per_image) and found.exact, (found.line(), calls)
  assert len(calls) <= 4, calls
  assert f"largest batch per device that fits: {found.largest} " in found.line()


def test_the_batch_search_when_the_first_batch_does_not_fit_or_memory_is_unknown():
  report_at, calls = memory_model(0.5 * GiB, 2 * GiB)
  found = compile_check.largest_batch_per_device(report_at, report_at(16))
  assert found.largest == 7 and found.exact and len(calls) <= 5, (found.line(), calls)
  report_at, _ = memory_model(20 * GiB, 1 * GiB)
  found = compile_check.largest_batch_per_device(report_at, report_at(2))
  assert found.largest is None and "not even the smallest" in found.line()
  unknown = report_at(2)
  unknown.hbm_bytes = None
  assert compile_check.largest_batch_per_device(report_at, unknown).largest is None
