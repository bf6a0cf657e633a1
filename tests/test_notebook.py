"""The Colab notebook cannot rot: every code cell (except those tagged skip-in-test) runs on the tiny model."""
import json
from pathlib import Path

import numpy as np
import pytest

from idinvert_jax import demo

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "idinvert_jax_colab.ipynb"
SKIP_TAG = "skip-in-test"


def _load():
  with open(NOTEBOOK) as f:
    return json.load(f)


def _source(cell) -> str:
  source = cell["source"]
  return source if isinstance(source, str) else "".join(source)


def _skipped(cell) -> bool:
  return SKIP_TAG in cell.get("metadata", {}).get("tags", [])


@pytest.fixture(scope="module")
def namespace():
  """Executes the notebook's code cells in order, in one namespace, from the repository root."""
  patch = pytest.MonkeyPatch()
  patch.chdir(REPO)
  ns = {"__name__": "__main__", "QUICK": True}
  try:
    for i, cell in enumerate(_load()["cells"]):
      if cell["cell_type"] == "code" and not _skipped(cell):
        exec(compile(_source(cell), f"{NOTEBOOK.name}[cell {i}]", "exec"), ns)  # noqa: S102
  finally:
    patch.undo()
  return ns


def test_notebook_is_valid_colab_json():
  nb = _load()
  assert nb["nbformat"] == 4 and "colab" in nb["metadata"] and nb["metadata"]["kernelspec"]["language"] == "python"
  ids = [cell["id"] for cell in nb["cells"]]
  assert len(set(ids)) == len(ids)
  for cell in nb["cells"]:
    assert cell["cell_type"] in ("markdown", "code")
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None  # Stored without outputs.


def test_install_cell_has_a_source_form_and_no_placeholder():
  """The repository URL is a Colab form field (empty = upload a wheel/zip), never a placeholder to edit."""
  text = NOTEBOOK.read_text()
  install = _source([c for c in _load()["cells"] if _skipped(c)][0])
  assert 'REPO_URL = ""  #@param {type:"string"}' in install
  assert "Nothing to install: set REPO_URL" in install  # The message when neither a URL nor an upload is given.
  assert "keep_colab_jax.txt" in install and '"-c"' in install  # Colab's JAX is pinned, not replaced.
  assert "REPLACE_ME" not in text and "<your" not in text
  compile(install, "install cell", "exec")  # Plain Python (no IPython syntax): at least it parses.


def test_only_the_install_cell_is_skipped_and_it_holds_every_shell_line():
  code_cells = [c for c in _load()["cells"] if c["cell_type"] == "code"]
  skipped = [c for c in code_cells if _skipped(c)]
  assert len(skipped) == 1 and '"pip", "install"' in _source(skipped[0])
  for cell in code_cells:
    if not _skipped(cell):
      shell = [line for line in _source(cell).splitlines() if line.lstrip().startswith(("!", "%"))]
      assert not shell, shell  # IPython-only syntax must live in tagged cells.
  assert len(code_cells) - len(skipped) >= 8


def test_cells_invert_and_edit_the_example(namespace):
  ns = namespace
  editor, resolution, layers, w_dim = ns["editor"], ns["RESOLUTION"], ns["NUM_LAYERS"], ns["W_DIM"]
  assert ns["TRAINED"] == (REPO / "assets" / "demo_checkpoint" / "config.json").is_file()
  assert REPO / ns["IMAGE_PATH"] == sorted((REPO / "assets" / "examples").glob("*.png"))[0]  # No Colab: example.
  assert ns["NUM_ITERATIONS"] == 3 and editor.settings.num_iterations == 3  # QUICK shrank the settings.
  assert ns["code_wp"].shape == (1, layers, w_dim) and np.isfinite(ns["code_wp"]).all()
  face = ns["face"]
  assert face.psnr != face.encoder_psnr  # The optimisation ran.
  assert len(ns["BOUNDARIES"]) == 2
  if not ns["TRAINED"]:
    assert all(name.endswith("(placeholder)") for name in ns["BOUNDARIES"])
  for images in ns["EDITED"].values():
    assert images.shape == (len(ns["DISTANCES"]), resolution, resolution, 3)
    assert not np.array_equal(images[0], images[-1])  # Different strengths give different pictures.
  middle = ns["EDITED"][next(iter(ns["EDITED"]))][len(ns["DISTANCES"]) // 2]
  assert np.abs(middle.astype(int) - face.inverted.astype(int)).max() <= 1  # d = 0 is the inversion.
  # Grids: one row per boundary, and source + path + target; enlarged 3x by show().
  assert ns["manipulation_grid"].size[1] >= 2 * 3 * resolution
  assert ns["interpolation_grid"].size[0] >= (2 + len(ns["path_images"])) * 3 * resolution
  np.testing.assert_array_equal(ns["path_images"][0], editor.image(ns["code_wp"]))  # t = 0 is the first face.
  assert ns["mixed"].shape == (resolution, resolution, 3)


def test_real_photo_is_aligned_and_judged_against_the_domain(namespace):
  """Grace Hopper's portrait, aligned the FFHQ way, is flagged as outside the synthetic-faces model's domain."""
  ns = namespace
  editor, photo_face = ns["editor"], ns["photo_face"]
  assert ns["PHOTO"].name == "grace_hopper.jpg" and ns["ALIGN"]
  if editor.can_align:
    from idinvert_jax import align
    from idinvert_jax.data import preprocess
    expected = align.align_image(preprocess.read_rgb(ns["PHOTO"]), ns["RESOLUTION"], largest_only=True)[0].image
    np.testing.assert_array_equal(ns["photo_image"], expected)
  if ns["TRAINED"] and editor.calibration is not None:
    assert photo_face.outside is True and ns["face"].outside is False
    assert "outside the model's domain" in photo_face.summary(editor.calibration)


def test_app_cell_builds_the_app_on_the_notebook_models(namespace):
  if namespace["gradio"] is None:
    from optional_deps import missing
    missing("gradio is not installed; install it with `pip install -e .[app]`")
  assert namespace["blocks"] is not None and not namespace["IN_COLAB"]


def test_conversion_cell_converts_official_files(namespace, tmp_path):
  """The cell's function on the official-format parity fixtures (a 32-px in-domain model)."""
  import shutil
  from configs import tiny
  from idinvert_jax import export
  fixtures = REPO / "tests" / "fixtures"
  weights = tmp_path / "weights"
  weights.mkdir()
  shutil.copy(fixtures / "indomain32_generator.pth", weights / "styleganinv_ffhq256_generator.pth")
  shutil.copy(fixtures / "indomain32_encoder.pth", weights / "styleganinv_ffhq256_encoder.pth")
  config = tiny.get_config()  # The fixtures' architecture (tools/make_parity_fixtures.py INDOMAIN_*).
  g = config.model.generator
  g.z_dim = g.w_dim = g.mapping_fmaps = 16
  g.mapping_layers, g.fmaps_max = 8, 16
  config.model.encoder.channels_max = 16
  path = namespace["convert_official_weights"](weights, tmp_path / "ckpt", config)
  models = export.load_models(path)
  assert models.names() == ("generator", "encoder")
  with pytest.raises(FileNotFoundError, match="lacks styleganinv_ffhq256_encoder.pth"):
    (weights / "styleganinv_ffhq256_encoder.pth").unlink()
    namespace["convert_official_weights"](weights, tmp_path / "ckpt2", config)


def test_placeholder_scores_are_fixed_random_directions():
  images = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
  a = demo.random_direction_a(images)
  np.testing.assert_array_equal(a, demo.random_direction_a(images))  # Fixed: same scores every call.
  assert a.shape == (4,) and not np.allclose(a, demo.random_direction_b(images))
  np.testing.assert_allclose(demo.random_direction_a(2 * images), 2 * a, rtol=1e-5)  # A linear projection.
