"""The one checkpoint format: save_models / load_models round trip and its error messages."""
import jax
import numpy as np
import pytest

from configs import tiny
from idinvert_jax import export
from idinvert_jax.models import synthesize


@pytest.fixture(scope="module")
def tiny_models():
  return export.create_models(tiny.get_config(), jax.random.PRNGKey(0), names=("generator", "encoder"))


def test_round_trip_restores_every_variable_exactly(tiny_models, tmp_path):
  export.save_models(tmp_path / "ckpt", tiny_models.config, tiny_models.variables())
  loaded = export.load_models(tmp_path / "ckpt")
  assert loaded.names() == ("generator", "encoder")
  saved_leaves = jax.tree_util.tree_leaves_with_path(tiny_models.variables())
  loaded_leaves = dict(jax.tree_util.tree_leaves_with_path(loaded.variables()))
  assert len(saved_leaves) == len(loaded_leaves)
  for path, value in saved_leaves:
    np.testing.assert_array_equal(np.asarray(value), loaded_leaves[path], err_msg=str(path))
  assert loaded.config.model.to_dict() == export.load_config(tmp_path / "ckpt").model.to_dict()
  wp = jax.random.normal(jax.random.PRNGKey(1), (2, loaded.generator.num_layers, loaded.generator.w_dim))
  np.testing.assert_array_equal(synthesize(tiny_models.generator, tiny_models.generator_vars, wp),
                                synthesize(loaded.generator, loaded.generator_vars, wp))


def test_relative_paths_save_and_load(tiny_models, tmp_path, monkeypatch):
  """`--checkpoint ckpt_ffhq256` (relative, as the README writes it) works: Orbax itself wants absolute paths."""
  monkeypatch.chdir(tmp_path)
  export.save_models("relative_ckpt", tiny_models.config, tiny_models.variables())
  loaded = export.load_models("relative_ckpt", names=("generator",))
  assert loaded.names() == ("generator",)


def test_training_workdir_resolves_to_its_export(tiny_models, tmp_path):
  export.save_models(tmp_path / "workdir" / "export", tiny_models.config, tiny_models.variables())
  assert export.find_checkpoint_dir(tmp_path / "workdir") == tmp_path / "workdir" / "export"


def test_missing_model_is_named(tiny_models, tmp_path):
  export.save_models(tmp_path / "g_only", tiny_models.config, {"generator": tiny_models.generator_vars})
  with pytest.raises(export.CheckpointError, match="has no encoder"):
    export.load_models(tmp_path / "g_only", names=("generator", "encoder"))


def test_missing_and_incomplete_checkpoints_give_a_fix(tiny_models, tmp_path):
  with pytest.raises(export.CheckpointError, match="does not exist.*convert"):
    export.load_models(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(export.CheckpointError, match="is not a checkpoint"):
    export.load_models(tmp_path / "empty")
  export.save_models(tmp_path / "half", tiny_models.config, tiny_models.variables())
  (tmp_path / "half" / export.CONFIG_FILE).unlink()  # as if killed before the config was written
  with pytest.raises(export.CheckpointError, match="incomplete"):
    export.load_models(tmp_path / "half")


def test_config_with_other_architecture_is_refused(tiny_models, tmp_path):
  export.save_models(tmp_path / "ckpt", tiny_models.config, tiny_models.variables())
  other = tiny.get_config()
  other.model.resolution = 16
  with pytest.raises(export.CheckpointError, match="resolution"):
    export.load_models(tmp_path / "ckpt", config=other)


def test_overwrite_false_protects_an_existing_checkpoint(tiny_models, tmp_path):
  export.save_models(tmp_path / "ckpt", tiny_models.config, tiny_models.variables())
  with pytest.raises(FileExistsError):
    export.save_models(tmp_path / "ckpt", tiny_models.config, tiny_models.variables(), overwrite=False)
