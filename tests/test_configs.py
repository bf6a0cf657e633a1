"""configs/ffhq256.py, the reference config, states exactly the defaults the library applies, and the smaller
experiments are that config with a few fields changed."""
from configs import common, demo64, ffhq256, synthetic64, tiny
from idinvert_jax import data, inversion, models, training
from idinvert_jax.models import encoder as encoder_lib
from idinvert_jax.models import vgg16 as vgg16_lib


def test_the_reference_config_spells_out_the_library_defaults():
  config = ffhq256.get_config()
  # The architecture: the modules' own defaults are the official styleganinv_ffhq256 models.
  assert models.build_generator(config.model) == models.Generator()
  assert models.build_discriminator(config.model) == models.Discriminator()
  assert models.build_encoder(config.model) == encoder_lib.Encoder()
  assert models.build_perceptual(config.model) == vgg16_lib.VGG16Features()
  # Training, inversion and data sections: the values each package uses when a config leaves a field out.
  assert set(config.train) == set(training.STAGES)
  for stage in training.STAGES:
    assert config.train[stage].to_dict() == training.get_train_config(stage).to_dict(), stage
  assert config.invert.to_dict() == inversion.get_invert_config("indomain").to_dict()
  assert inversion.InvertSettings.from_config(config) == inversion.InvertSettings()
  assert config.data.to_dict() == data.get_data_config().to_dict()


def test_smaller_experiments_change_only_sizes_and_schedules():
  reference = ffhq256.get_config().to_dict()
  for module in (tiny, synthetic64, demo64):
    config = module.get_config().to_dict()
    assert config.keys() == reference.keys(), module.__name__
    assert config["invert"]["method"] == "indomain" and config["mesh"] == reference["mesh"]
    g = config["model"]["generator"]
    assert g["z_dim"] == g["w_dim"] == g["mapping_fmaps"]
    assert config["model"]["discriminator"]["fmaps_base"] == g["fmaps_base"]
  assert common.get_config(64).model.to_dict() == dict(reference["model"], resolution=64)
