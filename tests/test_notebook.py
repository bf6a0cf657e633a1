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


def test_only_the_install_cell_is_skipped_and_it_holds_every_shell_line():
  code_cells = [c for c in _load()["cells"] if c["cell_type"] == "code"]
  skipped = [c for c in code_cells if _skipped(c)]
  assert len(skipped) == 1 and "pip install" in _source(skipped[0])
  for cell in code_cells:
    if not _skipped(cell):
      shell = [line for line in _source(cell).splitlines() if line.lstrip().startswith(("!", "%"))]
      assert not shell, shell  # IPython-only syntax must live in tagged cells.
  assert len(code_cells) - len(skipped) >= 8


def test_cells_invert_and_edit_the_example(namespace):
  ns = namespace
  resolution, layers, w_dim = ns["RESOLUTION"], ns["NUM_LAYERS"], ns["W_DIM"]
  assert ns["TRAINED"] == (REPO / "assets" / "demo_checkpoint" / "config.json").is_file()
  assert REPO / ns["IMAGE_PATH"] == sorted((REPO / "assets" / "examples").glob("*.png"))[0]  # No Colab: example.
  assert ns["NUM_ITERATIONS"] == 3  # QUICK shrank the settings.
  assert ns["code_wp"].shape == (1, layers, w_dim) and np.isfinite(ns["code_wp"]).all()
  assert not np.allclose(ns["code_wp"], ns["result"].encoder_codes)  # The optimisation ran.
  assert len(ns["BOUNDARIES"]) == 2
  if not ns["TRAINED"]:
    assert all(name.endswith("(placeholder)") for name in ns["BOUNDARIES"])
  for images in ns["EDITED"].values():
    assert images.shape == (len(ns["DISTANCES"]), resolution, resolution, 3)
    assert not np.allclose(images[0], images[-1])  # Different strengths give different pictures.
  middle = ns["EDITED"][next(iter(ns["EDITED"]))][len(ns["DISTANCES"]) // 2]
  np.testing.assert_allclose(middle, ns["result"].reconstructions[0], atol=1e-4)  # d = 0 is the inversion.
  # Grids: one row per boundary, and source + path + target; enlarged 2x by show().
  assert ns["manipulation_grid"].size[1] >= 2 * 2 * resolution
  assert ns["interpolation_grid"].size[0] >= (2 + len(ns["path_codes"])) * 2 * resolution
  np.testing.assert_allclose(ns["path_codes"][0], ns["code_wp"][0], atol=1e-6)


def test_placeholder_scores_are_fixed_random_directions():
  images = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
  a = demo.random_direction_a(images)
  np.testing.assert_array_equal(a, demo.random_direction_a(images))  # Fixed: same scores every call.
  assert a.shape == (4,) and not np.allclose(a, demo.random_direction_b(images))
  np.testing.assert_allclose(demo.random_direction_a(2 * images), 2 * a, rtol=1e-5)  # A linear projection.
