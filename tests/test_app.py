"""The app's engine without a browser: compiled once at start, official boundaries as sliders, clear upload errors.

(The page itself is driven in a real browser by tests/test_app_browser.py.)
"""
import logging
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from configs import tiny
from idinvert_jax import app, export, inversion


@pytest.fixture(scope="module")
def editor(tmp_path_factory):
  """A tiny random model (32 px, 8 W+ layers) with one official-format boundary in a --boundaries folder."""
  config = tiny.get_config()
  models = export.create_models(config, jax.random.key(0), names=("generator", "encoder"))
  ckpt = export.save_models(tmp_path_factory.mktemp("ckpt"), config, models.variables())
  folder = tmp_path_factory.mktemp("boundaries")
  num_layers, w_dim = int(models.generator.num_layers), int(models.generator.w_dim)
  direction = np.random.default_rng(0).normal(size=(1, num_layers, w_dim)).astype(np.float32)
  # Exactly how the official boundaries are stored: np.save of a pickled dict (read with the restricted reader).
  np.save(folder / "age.npy", np.array({"boundary": direction, "meta_data": {"manipulate_layers": [0, 1, 2]}},
                                       dtype=object), allow_pickle=True)
  return app.Editor(ckpt, folder, num_iterations=3)


def _photo(tmp_path, shape=(40, 30, 3), name="photo.png"):
  path = tmp_path / name
  Image.fromarray(np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)).save(path)
  return path


def test_requests_compile_nothing_after_start(editor, tmp_path, caplog):
  """Inversion, edits, mixing and interpolation of new photos run only programs compiled at start-up."""
  assert list(editor.directions) == ["age"]
  with jax.log_compiles(True), caplog.at_level(logging.DEBUG):
    faces = []
    for seed in range(2):
      name, image, notes = editor.load_photo(_photo(tmp_path, name=f"p{seed}.png"), align_face=False)
      faces.append(editor.invert(name, image, progress=False))
    edited = editor.edit(faces[0].code, {"age": 2.5})
    shown = [editor.image(edited), editor.image(editor.mix(faces[0].code, faces[1].code, 3)),
             editor.image(editor.interpolate(faces[0].code, faces[1].code, 0.25))]
  compiled = [r.getMessage() for r in caplog.records if "ompil" in r.getMessage()]
  assert compiled == [], compiled[:3]
  assert faces[0].code.shape == (1, editor.num_layers, editor.w_dim) and all(s.shape == (32, 32, 3) for s in shown)
  assert notes == ["Not square: stretched to a square as the official code does."]
  # The edit moves only the boundary's layers 0..2, by 2.5 x its direction.
  direction, layers = editor.directions["age"]
  np.testing.assert_allclose(edited[0, :3], faces[0].code[0, :3] + 2.5 * direction[:3], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(edited[0, 3:], faces[0].code[0, 3:])
  # The same engine and settings as invert.py: the code equals a direct inversion.invert call.
  x = (image.astype(np.float32) / 127.5 - 1)[None]
  direct = inversion.invert(x, editor.models, editor.settings, progress=False, devices=editor.devices)
  np.testing.assert_allclose(faces[1].code, direct.codes, atol=1e-6)


def test_uploads_that_are_not_usable_get_one_line(editor, tmp_path):
  text = tmp_path / "notes.png"
  text.write_text("not a photo")
  with pytest.raises(app.AppError, match=r"^notes.png: not an image PIL can read; upload a photo"):
    editor.load_photo(text)
  huge = tmp_path / "huge.png"
  Image.new("L", (8000, 6000)).save(huge)  # 48 megapixels (compresses to a few kB)
  with pytest.raises(app.AppError, match=r"huge.png is 8000x6000 px \(48 megapixels\); downscale it"):
    editor.load_photo(huge)
  with pytest.raises(app.AppError, match="upload a larger image"):
    editor.load_photo(_photo(tmp_path, shape=(4, 4, 3), name="tiny.png"), align_face=False)
  if editor.can_align:
    with pytest.raises(app.AppError, match="^no face found in photo.png; upload a photo with a visible face"):
      editor.load_photo(_photo(tmp_path))
  name, image, notes = editor.load_photo(_photo(tmp_path), align_face=False, crop="center")
  assert image.shape == (32, 32, 3) and notes == ["Not square: centre square cut out."]


def test_downloads_hold_the_png_and_a_1_l_d_code(editor, tmp_path):
  code = np.zeros((1, editor.num_layers, editor.w_dim), np.float32)
  png, npy = app.save_downloads(tmp_path, "edited", editor.image(code), code)
  assert np.load(npy).shape == (1, editor.num_layers, editor.w_dim)
  np.testing.assert_array_equal(np.asarray(Image.open(png)), editor.image(code))


def test_the_page_builds_with_a_slider_per_boundary(editor):
  from optional_deps import require
  gr = require("gradio", "pip install -e .[app]")
  blocks = app.build_app(editor)
  sliders = [b for b in blocks.blocks.values() if isinstance(b, gr.Slider) and b.elem_id
             and b.elem_id.startswith("slider_")]
  assert [s.label for s in sliders] == ["age"] and (sliders[0].minimum, sliders[0].maximum) == (-5, 5)


def test_without_gradio_main_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "gradio", None)
  with pytest.raises(SystemExit, match=r"pip install -e \.\[app\]"):
    app.main([])


def test_bad_checkpoint_or_boundaries_folder_is_one_line(tmp_path, monkeypatch):
  from optional_deps import require
  require("gradio", "pip install -e .[app]")
  with pytest.raises(SystemExit, match="does not exist"):
    app.main(["--checkpoint", str(tmp_path / "nope")])
  with pytest.raises(app.AppError, match="is not a folder"):
    app.find_boundaries(app.DEFAULT_CHECKPOINT, tmp_path / "missing")
