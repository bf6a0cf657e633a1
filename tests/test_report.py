"""Report module: grid geometry, padding, labels, atomic PNG output, and HTML escaping/linking."""
import numpy as np
import pytest
from PIL import Image

from idinvert_jax import report


def _cells(rows, cols, h=5, w=7):
  """Distinct constant-colour uint8 cells so positions can be checked."""
  return [[np.full((h, w, 3), 10 * (r * cols + c) + 1, np.uint8) for c in range(cols)] for r in range(rows)]


def test_grid_shape_pad_and_cell_positions():
  grid = report.image_grid(_cells(2, 3), pad=2, pad_value=255)
  assert grid.dtype == np.uint8
  assert grid.shape == (2 * 5 + 3 * 2, 3 * 7 + 4 * 2, 3)
  for r in range(2):
    for c in range(3):
      y, x = 2 + r * 7, 2 + c * 9
      assert np.all(grid[y:y + 5, x:x + 7] == 10 * (r * 3 + c) + 1)
  # Border and gutters are pad_value.
  assert np.all(grid[:2] == 255) and np.all(grid[:, :2] == 255) and np.all(grid[7:9] == 255)
  assert np.all(grid[:, 9:11] == 255)


def test_grid_array_input_float_mapping_and_zero_pad():
  array = np.zeros((2, 2, 4, 4, 3), np.float32)
  array[0, 0] = -1.0
  array[1, 1] = 1.0
  grid = report.image_grid(array, pad=0)
  assert grid.shape == (8, 8, 3)
  assert np.all(grid[:4, :4] == 0) and np.all(grid[4:, 4:] == 255) and np.all(grid[:4, 4:] == 128)


def test_grid_ragged_rows_fill_with_pad_value_and_gray_cells():
  rows = [[np.zeros((3, 3), np.uint8)], [np.zeros((3, 3, 1), np.uint8)] * 2]
  grid = report.image_grid(rows, pad=1, pad_value=77)
  assert grid.shape == (2 * 3 + 3, 2 * 3 + 3, 3)
  assert np.all(grid[1:4, 5:8] == 77)  # Missing cell of the short first row.
  assert np.all(grid[5:8, 5:8] == 0)


def test_grid_labels_add_margins_with_ink():
  plain = report.image_grid(_cells(2, 2, 16, 16), pad=2)
  labelled = report.image_grid(_cells(2, 2, 16, 16), pad=2, row_labels=["target", "inverted"],
                               col_labels=["a", "b"])
  dh, dw = labelled.shape[0] - plain.shape[0], labelled.shape[1] - plain.shape[1]
  assert dh > 0 and dw > 0
  # The cells are unchanged, just shifted by the label margins; the margins hold dark text pixels.
  np.testing.assert_array_equal(labelled[dh:, dw:], plain)
  assert labelled[:dh].min() < 128 and labelled[:, :dw].min() < 128


def test_grid_rejects_bad_input():
  with pytest.raises(ValueError, match="different sizes"):
    report.image_grid([[np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)]])
  with pytest.raises(ValueError, match="row_labels"):
    report.image_grid(_cells(2, 2), row_labels=["one"])
  with pytest.raises(ValueError, match="no images"):
    report.image_grid([])


def test_save_grid_writes_png_atomically(tmp_path):
  path = report.save_grid(tmp_path / "sub" / "grid.png", _cells(1, 2), pad=3)
  loaded = np.asarray(Image.open(path))
  np.testing.assert_array_equal(loaded, report.image_grid(_cells(1, 2), pad=3))
  assert [p.name for p in (tmp_path / "sub").iterdir()] == ["grid.png"]  # No temp files left behind.


def test_html_escapes_text_and_links_images(tmp_path):
  sections = [
      report.Section("Results <b>&", text="a < b\n\nsecond & para",
                     images=[("grids/my grid.png", 'caption "x" <y>')],
                     table=(["method", "mse"], [["<indomain>", 0.123456], ["optimize", 2]])),
      report.Section("Empty")]
  path = report.write_html(tmp_path / "index.html", "Report <title>", sections)
  text = path.read_text()
  assert "<title>Report &lt;title&gt;</title>" in text
  assert "<h2>Results &lt;b&gt;&amp;</h2>" in text
  assert "<p>a &lt; b</p>" in text and "<p>second &amp; para</p>" in text
  assert 'src="grids/my%20grid.png"' in text and 'href="grids/my%20grid.png"' in text
  assert "caption &quot;x&quot; &lt;y&gt;" in text
  assert "<td>&lt;indomain&gt;</td><td>0.1235</td>" in text
  assert "<h2>Empty</h2>" in text
  assert "<b>" not in text and "<indomain>" not in text
  assert "http" not in text  # Self-contained: no external resources.


def test_html_refuses_absolute_image_paths(tmp_path):
  for bad in ("/tmp/x.png", "http://example.com/x.png"):
    with pytest.raises(ValueError, match="relative"):
      report.write_html(tmp_path / "i.html", "t", [report.Section("s", images=[(bad, "c")])])


def test_long_column_headers_wrap_instead_of_overlapping():
  """The style-mixing grid's headers ('content face_12345_000' above 64-px cells) used to run into each other."""
  from PIL import ImageDraw
  labels = ["style", "content face_12345_000", "content face_12345_001"]
  grid = report.image_grid(_cells(1, 3, 64, 64), pad=2, col_labels=labels)
  draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), report._font()
  for label in labels:
    wrapped = report.wrap_label(label, 64, draw, font)
    assert "".join(wrapped.split()) == "".join(label.split())  # Nothing lost, only line breaks added.
    assert report._text_size(draw, wrapped, font)[0] <= 64
  assert "\n" in report.wrap_label(labels[1], 64, draw, font)
  # Header band: ink above every column, none in the padding between columns (headers never touch).
  top = grid.shape[0] - (64 + 2 * 2)
  band = grid[:top].min(axis=(0, 2))
  for c in range(3):
    assert band[2 + c * 66:2 + c * 66 + 64].min() < 128
    assert band[c * 66:c * 66 + 2].min() == 255


def test_html_enlarges_small_images_nearest_neighbour(tmp_path):
  Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "tile.png")
  Image.fromarray(np.zeros((140, 540, 3), np.uint8)).save(tmp_path / "grid.png")
  Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(tmp_path / "big.png")
  report.save_grid(tmp_path / "cells.png", _cells(1, 7, 64, 64), pad=2)  # 464 x 68 px of 64-px cells
  path = report.write_html(tmp_path / "index.html", "t", [report.Section(
      "s", text="outside the domain", warning=True,
      images=[("tile.png", "a"), ("grid.png", "b"), ("big.png", "c"), ("missing.png", "d"), ("cells.png", "e")])])
  text = path.read_text()
  assert 'src="tile.png" alt="a" width="256" height="256"' in text  # 64 px -> 4x.
  assert 'src="grid.png" alt="b" width="1080" height="280"' in text  # A plain image is one tile: 140 px -> 2x.
  assert 'src="cells.png" alt="e" width="1392" height="204"' in text  # 64-px cells: 3x (4x is wider than 1800).
  assert 'src="big.png" alt="c" width="256" height="256"' in text
  assert 'src="missing.png" alt="d">' in text
  assert "image-rendering: pixelated" in text
  assert '<p class="warning">outside the domain</p>' in text
