"""The editing app in a real browser: Debian's chromium driven by playwright, against the shipped demo model.

Upload a face (matplotlib's public-domain grace_hopper.jpg, aligned), wait for the inversion, drag a boundary
slider, check that the edited image on the page changes, download the W+ code and the PNG and check them, and
check that a file that is not an image gets a message in the page. A screenshot of the page is saved in tmp_path;
with IDINVERT_APP_SCREENSHOT=docs/images/app.png it is also written there (the README's picture).

Needs chromium (`apt-get install chromium`; playwright's own browser download is not reachable, so the test passes
its executable_path), playwright, gradio and the align extra: `.ci/run` installs all of them.
"""
import io
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from optional_deps import missing, require

NUM_ITERATIONS = 10  # Enough for a recognisable reconstruction at 64 px; the test is about the page.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 120_000


def _chromium() -> str:
  for name in ("chromium", "chromium-browser"):
    path = shutil.which(name)
    if path:
      return path
  missing("Debian's chromium is not installed; install it with `apt-get install chromium`")


@pytest.fixture(scope="module")
def server():
  require("gradio", "pip install -e .[app]")
  require("dlib", "pip install -e .[align]")
  from idinvert_jax import app
  start = time.perf_counter()
  editor = app.Editor(app.DEFAULT_CHECKPOINT, num_iterations=NUM_ITERATIONS)
  blocks = app.build_app(editor)
  app.launch(blocks, host="127.0.0.1", port=None, prevent_thread_lock=True)
  print(f"app compiled and serving in {time.perf_counter() - start:.1f} s at {blocks.local_url}")
  yield editor, blocks.local_url
  blocks.close()


@pytest.fixture(scope="module")
def page(server):
  sync_api = require("playwright.sync_api", "pip install playwright (in the test extra)")
  executable = _chromium()
  with sync_api.sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("console", lambda message: print(f"browser console: {message.text[:300]}"))
    yield page
    browser.close()


def _element_pixels(locator) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB")).astype(np.int16)


def _drag_slider(page, elem_id: str, fraction: float) -> None:
  """Drags the range input of a gr.Slider from its thumb (at 0, the middle) to `fraction` of its width."""
  box = page.locator(f"#{elem_id} input[type=range]").bounding_box()
  y = box["y"] + box["height"] / 2
  page.mouse.move(box["x"] + box["width"] / 2, y)
  page.mouse.down()
  page.mouse.move(box["x"] + box["width"] * fraction, y, steps=5)
  page.mouse.up()


def test_upload_invert_edit_download_in_a_browser(server, page, tmp_path):
  from matplotlib import cbook
  editor, url = server
  start = time.perf_counter()
  page.goto(url)
  page.locator("#upload input[type=file]").wait_for(state="attached")  # The Gradio front end is up.
  page.locator("#upload input[type=file]").set_input_files(cbook.get_sample_data("grace_hopper.jpg",
                                                                                  asfileobj=False))
  status = page.locator("#status")
  status.get_by_text("PSNR").wait_for()  # The inversion finished and its summary is on the page.
  text = status.inner_text()
  assert "grace_hopper.jpg" in text and "inverted" in text
  if editor.calibration is not None:  # A photo far from the synthetic faces the demo model knows.
    assert "outside the model's domain" in text
  inverted_at = time.perf_counter()

  edited = page.locator("#edited img")
  edited.wait_for()
  before = _element_pixels(edited)
  with page.expect_response(lambda r: "/gradio_api/queue/data" in r.url or "/queue/data" in r.url):
    _drag_slider(page, "slider_1", 0.95)  # hair colour, towards +5
  deadline = time.perf_counter() + 60
  after = before
  while time.perf_counter() < deadline:
    page.wait_for_timeout(250)
    after = _element_pixels(edited)
    if after.shape == before.shape and np.abs(after - before).mean() > 2:
      break
  assert after.shape == before.shape and np.abs(after - before).mean() > 2, "the edited image did not change"
  strength = float(page.locator("#slider_1 input[type=number]").input_value())
  assert strength > 2.0

  with page.expect_download() as download_info:
    page.locator("#download_code").click()
  code_path = tmp_path / "code.npy"
  download_info.value.save_as(code_path)
  code = np.load(code_path, allow_pickle=False)
  assert code.shape == (1, editor.num_layers, editor.w_dim) and code.dtype == np.float32
  with page.expect_download() as download_info:
    page.locator("#download_png").click()
  png_path = tmp_path / "edited.png"
  download_info.value.save_as(png_path)
  # The downloaded image is the downloaded code rendered by the model.
  np.testing.assert_array_equal(np.asarray(Image.open(png_path).convert("RGB")), editor.image(code))
  shot = tmp_path / "app.png"
  page.screenshot(path=str(shot), full_page=False)
  destination = os.environ.get("IDINVERT_APP_SCREENSHOT")
  if destination:
    Image.open(shot).convert("RGB").resize((960, 750), Image.Resampling.LANCZOS).quantize(256).save(
        destination, optimize=True)

  # Not an image (as the second face; the first upload box now shows grace_hopper.jpg): a message in the page.
  bad = tmp_path / "notes.png"
  bad.write_text("these are my notes, not a photo")
  page.locator("#upload_b input[type=file]").set_input_files(str(bad))
  page.get_by_text("not an image PIL can read").first.wait_for()
  print(f"browser: inversion shown {inverted_at - start:.1f} s after opening the page; whole flow "
        f"{time.perf_counter() - start:.1f} s")


def test_real_face_figure_tool_on_the_demo_model(server, tmp_path):
  """tools/real_face_figure.py (the README's real-face figure) on Grace Hopper with the shipped demo model."""
  import importlib.util
  from idinvert_jax import app
  editor, _ = server
  spec = importlib.util.spec_from_file_location("real_face_figure", app.REPO / "tools" / "real_face_figure.py")
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  figure, numbers = tool.make_figure(app.DEFAULT_CHECKPOINT, tool.default_photo(), tool.DEFAULT_SOURCE,
                                     ["hair_color=3", "eyeglasses=-2"], editor=editor)
  assert figure.shape[1] >= 6 * tool.PANEL and figure.shape[0] > tool.PANEL  # Six panels and a caption.
  assert numbers["edits"] == [("hair_color", 3.0), ("eyeglasses", -2.0)]
  assert "grace_hopper.jpg" in numbers["caption"] and "public domain" in numbers["caption"]
  assert np.isfinite(numbers["psnr"]) and numbers["outside_domain"] is (editor.calibration is not None or None)
  with pytest.raises(SystemExit, match="no boundary 'smile'"):
    tool.parse_edits(["smile=3"], editor.directions)
