"""WORKDIR/export across stages: re-running the GAN stage after the encoder stage keeps the encoder in export/,
records where each model came from (export/training.json) and warns that the kept encoder was trained on an older
generator. Tiny config at 8 px, one device, in-memory batches."""
import json

import jax
import numpy as np
import pytest

from configs import tiny
from idinvert_jax import export
from idinvert_jax import training
from idinvert_jax.training import arrays
from idinvert_jax.training import checkpoints
from idinvert_jax.training import loop
from idinvert_jax.training import mesh as mesh_lib


def two_stage_config(gan_steps):
  config = tiny.get_config()
  config.model.resolution = 8
  for stage in training.STAGES:
    config.train[stage].num_steps = 2
    config.train[stage].checkpoint_every = 2
  config.train.gan.num_steps = gan_steps
  return config


def train_stage(config, workdir, stage, mesh):
  images = np.random.RandomState(0).uniform(-1, 1, (16, 8, 8, 3)).astype(np.float32)
  return training.train(config, str(workdir), stage, mesh=mesh, data_iterator=arrays.ArrayBatches(images, 8, mesh),
                        show_progress=False)


def origins(workdir):
  return json.loads((workdir / "export" / loop.EXPORT_ORIGINS_FILE).read_text())["models"]


def test_gan_rerun_keeps_the_encoder_in_export_and_says_it_is_stale(tmp_path, caplog):
  mesh = mesh_lib.make_mesh(None, jax.devices()[:1])
  train_stage(two_stage_config(gan_steps=2), tmp_path, "gan", mesh)
  assert export.load_models(tmp_path).names() == ("generator", "discriminator")
  train_stage(two_stage_config(gan_steps=2), tmp_path, "encoder", mesh)
  after_encoder = export.load_models(tmp_path)
  assert after_encoder.names() == ("generator", "encoder", "discriminator")
  assert origins(tmp_path)["encoder"] == {"stage": "encoder", "step": 2, "generator": {"stage": "gan", "step": 2}}

  caplog.clear()
  result = train_stage(two_stage_config(gan_steps=3), tmp_path, "gan", mesh)  # one more GAN step, new export
  assert result.start_step == 2 and result.step == 3
  after_gan = export.load_models(tmp_path)
  assert after_gan.names() == ("generator", "encoder", "discriminator")  # the encoder was not lost
  for a, b in zip(jax.tree.leaves(after_gan.encoder_vars), jax.tree.leaves(after_encoder.encoder_vars)):
    np.testing.assert_array_equal(a, b)
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after_gan.generator_vars),
                                                     jax.tree.leaves(after_encoder.generator_vars))]
  assert any(moved)  # the generator really is newer, so the warning below is due
  recorded = origins(tmp_path)
  assert recorded["generator"] == {"stage": "gan", "step": 3}
  assert recorded["encoder"] == {"stage": "encoder", "step": 2, "generator": {"stage": "gan", "step": 2}}
  assert ("export/ keeps the encoder of the previous export (encoder step 2), trained on the generator of gan "
          "step 2; the generator is now gan step 3") in caplog.text


def test_stale_model_warnings_only_for_another_or_unknown_generator():
  gan2, gan3 = {"stage": "gan", "step": 2}, {"stage": "gan", "step": 3}
  encoder = {"stage": "encoder", "step": 5, "generator": gan2}
  assert loop.stale_model_warnings({"encoder": encoder}, {"generator": gan2}) == []
  assert len(loop.stale_model_warnings({"encoder": encoder}, {"generator": gan3})) == 1
  # An export written before training.json existed: the encoder's generator is unknown, so it is flagged.
  (line,) = loop.stale_model_warnings({"encoder": None}, {"generator": gan3})
  assert "(an unrecorded source), trained on the generator of an unrecorded source" in line
  assert loop.stale_model_warnings({"encoder": encoder}, {"discriminator": gan3}) == []


def test_resume_with_another_model_config_stops_before_touching_the_run(tmp_path, caplog):
  """A checkpoint that does not fit the run's config is not corruption: nothing is moved, export/ stays, and the
  error names the differing entries and the fix."""
  mesh = mesh_lib.make_mesh(None, jax.devices()[:1])
  train_stage(two_stage_config(gan_steps=2), tmp_path, "gan", mesh)
  steps_before = sorted(p.name for p in (tmp_path / "checkpoints" / "gan").iterdir())
  export_before = (tmp_path / "export" / export.CONFIG_FILE).read_bytes()
  changed = two_stage_config(gan_steps=4)
  changed.model.generator.mapping_layers += 1  # another structure: entries the checkpoint does not have
  changed.model.discriminator.fmaps_max = 16  # and other shapes
  with pytest.raises(checkpoints.CheckpointMismatchError) as error:
    train_stage(changed, tmp_path, "gan", mesh)
  message = str(error.value)
  assert "\n" not in message and "does not match this run's config" in message
  assert "not in the checkpoint" in message and "shape" in message and "same config" in message and "new --workdir" in message
  assert sorted(p.name for p in (tmp_path / "checkpoints" / "gan").iterdir()) == steps_before
  assert not (tmp_path / "checkpoints" / "gan_corrupt").exists() and "corrupt" not in caplog.text
  assert (tmp_path / "export" / export.CONFIG_FILE).read_bytes() == export_before
