"""The demo job end to end on tiny models: the random fallback (no shipped checkpoint) and a given checkpoint."""
import html
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from configs import tiny
from idinvert_jax import demo, export
from idinvert_jax.editing import boundaries

NUM_ITERATIONS = 2


def _linked_images(index: Path) -> list[Path]:
  page = index.read_text()
  return [index.parent / html.unescape(src) for src in re.findall(r'<img src="([^"]+)"', page)]


def _text(index: Path) -> str:
  return html.unescape(re.sub(r"<[^>]+>", " ", index.read_text()))


@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
  """No checkpoint at the default location: the demo falls back to a random tiny model and placeholder
  boundaries."""
  patch = pytest.MonkeyPatch()
  patch.setattr(demo, "DEFAULT_CHECKPOINT", tmp_path_factory.mktemp("nothing") / "demo_checkpoint")
  patch.setattr(demo, "PLACEHOLDER_SAMPLES", 64)
  try:
    out = tmp_path_factory.mktemp("demo") / "out"
    summary = demo.run_demo(out, num_iterations=NUM_ITERATIONS, skip_diffusion=True, seed=3, progress=False)
  finally:
    patch.undo()
  return out, summary


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  """A tiny checkpoint with generator + encoder and two boundaries in its boundaries/ folder."""
  config = tiny.get_config()
  models = export.create_models(config, jax.random.key(1), names=("generator", "encoder"))
  path = export.save_models(tmp_path_factory.mktemp("ckpt") / "ckpt", config, models.variables())
  num_layers, w_dim = models.generator.num_layers, models.generator.w_dim
  rng = np.random.default_rng(0)
  for name in ("smile", "eyeglasses"):
    direction = rng.standard_normal((num_layers, w_dim)).astype(np.float32)
    boundaries.save_boundary(path / "boundaries" / f"{name}.npz",
                             boundaries.Boundary(direction=direction / np.linalg.norm(direction), layers=None,
                                                 accuracy=0.9, attribute=name))
  return path


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory, tiny_checkpoint):
  out = tmp_path_factory.mktemp("demo_ckpt") / "out"
  return out, demo.run_demo(out, checkpoint=tiny_checkpoint, num_iterations=NUM_ITERATIONS, progress=False)


def test_random_fallback_writes_a_report_whose_images_all_exist(random_run):
  out, summary = random_run
  index = out / "index.html"
  assert summary.index == index and index.is_file()
  linked = _linked_images(index)
  # Inversion overview, 2 interpolation pairs, 2 manipulations, style mixing (diffusion skipped).
  assert len(linked) == 6, linked
  for path in linked:
    assert path.is_file(), path
    assert np.asarray(Image.open(path)).ndim == 3
  assert {p.parent.name for p in linked} >= {"interpolation_0_1", "interpolation_2_3", "style_mixing",
                                              "manipulation_random_direction_a", "manipulation_random_direction_b"}


def test_random_fallback_says_so_loudly(random_run, capsys):
  out, summary = random_run
  text = _text(out / "index.html")
  assert not summary.model.trained
  assert f"WARNING: {demo.NO_CHECKPOINT_BANNER}" in text
  assert "random tiny model" in text and "PLACEHOLDER boundaries" in text
  assert "Skipped (--skip_diffusion)" in text
  # The stand-in model is a real checkpoint on disk, so every stage (and the user) can reuse it.
  assert export.load_config(out / demo.RANDOM_CHECKPOINT_DIR).model.resolution == 32
  assert [name for _, name in summary.boundaries] == list(demo.PLACEHOLDER_ATTRIBUTES)


def test_random_fallback_inverts_every_example_in_the_official_layout(random_run):
  out, summary = random_run
  examples = sorted(demo.DEFAULT_IMAGES.glob("*.png"))
  assert len(examples) == 6
  codes = np.load(out / "inversion" / "inverted_codes.npy")
  assert codes.shape == (6, 8, 32)
  listed = (out / "inversion" / "image_list.txt").read_text().split()
  assert [Path(p).name for p in listed] == [p.name for p in examples]
  assert np.isfinite(summary.inversion_metrics["mse"]) and summary.inversion_metrics["mse"] > 0
  # The overview is enlarged from 32 px so its labels fit: 6 rows of >= 64 px cells.
  assert np.asarray(Image.open(out / "inversion_overview.png")).shape[0] >= 6 * 64


def test_timings_cover_every_stage_and_the_machine(random_run):
  out, summary = random_run
  stages = [name for name, _ in summary.timings]
  assert stages == ["model", "boundaries (placeholder, random directions)", "inversion", "interpolation",
                    "manipulation", "style mixing"]
  assert all(seconds > 0 for _, seconds in summary.timings)
  text = _text(out / "index.html")
  assert "Timings and machine" in text and "CPU cores" in text and "total" in text


def test_checkpoint_run_uses_its_model_and_boundaries_and_diffuses(checkpoint_run, tiny_checkpoint):
  out, summary = checkpoint_run
  assert summary.model.trained and summary.model.checkpoint == tiny_checkpoint
  text = _text(out / "index.html")
  assert f"checkpoint {tiny_checkpoint}" in text and "WARNING" not in text
  assert [name for _, name in summary.boundaries] == ["eyeglasses", "smile"]
  assert "eyeglasses: eyeglasses.npz, validation accuracy 0.90" in text
  linked = _linked_images(out / "index.html")
  assert len(linked) == 7 and all(p.is_file() for p in linked), linked
  assert (out / "diffusion" / "diffusion.png") in linked
  assert np.load(out / "diffusion" / "diffused_codes.npy").shape == (1, 3, 8, 32)
  assert "Pixel loss only" in text  # The tiny checkpoint has no VGG16.
  assert not (out / demo.RANDOM_CHECKPOINT_DIR).exists()
  assert [name for name, _ in summary.timings][-1] == "diffusion"


def test_cli_errors_are_one_line(tmp_path, capsys):
  assert demo.main(["--output", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "missing")]) == 2
  err = capsys.readouterr().err.strip().splitlines()[-1]  # After the progress line of the first stage.
  assert err.startswith("demo: checkpoint ") and str(tmp_path / "missing") in err
  assert demo.main(["--output", str(tmp_path / "o"), "--num_iterations", "0"]) == 2
  assert "--num_iterations=0" in capsys.readouterr().err


def test_help_explains_every_flag(capsys):
  with pytest.raises(SystemExit):
    demo.main(["--help"])
  help_text = capsys.readouterr().out
  for flag in ("--output", "--checkpoint", "--images", "--num_iterations", "--skip_diffusion", "--seed"):
    assert flag in help_text


def test_default_iterations_are_official_except_big_models_on_cpu():
  assert jax.default_backend() == "cpu"
  assert demo.default_num_iterations(32) == demo.OFFICIAL_NUM_ITERATIONS == 100
  assert demo.default_num_iterations(64) == 100  # the shipped demo model
  assert demo.default_num_iterations(128) == demo.CPU_NUM_ITERATIONS < 100


def test_shipped_examples_are_what_the_tool_renders(tmp_path):
  """assets/examples is reproducible: the tool renders the same pixels and README (held-out seed 12345)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("make_demo_assets", demo.REPO / "tools" / "make_demo_assets.py")
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  assert tool.EXAMPLES_SEED != tiny.get_config().data.synthetic_seed  # Not a training face.
  made = tool.make_examples(tmp_path)
  shipped = sorted(demo.DEFAULT_IMAGES.glob("*.png"))
  assert [p.name for p in made] == [p.name for p in shipped]
  for new, old in zip(made, shipped):
    np.testing.assert_array_equal(np.asarray(Image.open(new)), np.asarray(Image.open(old)))
  assert (tmp_path / "README.md").read_text() == (demo.DEFAULT_IMAGES / "README.md").read_text()
