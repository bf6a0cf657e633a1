"""Image decoding and preprocessing: colour modes, 16-bit, EXIF orientation, resize modes, bad files."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from idinvert_jax.data import preprocess
from idinvert_jax.data.preprocess import ImageError


def _png16_rgb(array: np.ndarray) -> bytes:
  """A minimal 48-bit RGB PNG writer (PIL cannot write one)."""
  height, width, _ = array.shape
  raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

  header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _rgb_noise(height=24, width=24, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_rgb_png_round_trips_exactly(tmp_path):
  image = _rgb_noise()
  Image.fromarray(image).save(tmp_path / "a.png")
  np.testing.assert_array_equal(preprocess.read_rgb(tmp_path / "a.png"), image)


def test_grayscale_becomes_three_equal_channels(tmp_path):
  gray = _rgb_noise()[..., 0]
  Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
  rgb = preprocess.read_rgb(tmp_path / "g.png")
  assert rgb.shape == (24, 24, 3)
  for c in range(3):
    np.testing.assert_array_equal(rgb[..., c], gray)


def test_palette_image_gives_its_palette_colours(tmp_path):
  image = _rgb_noise()
  palette_image = Image.fromarray(image).quantize(colors=16)
  palette_image.save(tmp_path / "p.png")
  np.testing.assert_array_equal(preprocess.read_rgb(tmp_path / "p.png"), np.asarray(palette_image.convert("RGB")))


def test_rgba_is_composited_on_the_background(tmp_path):
  rgba = np.zeros((8, 8, 4), np.uint8)
  rgba[..., 0] = 200  # Red-ish colour.
  rgba[:4, :, 3] = 0  # Top half fully transparent.
  rgba[4:, :, 3] = 255  # Bottom half opaque.
  rgba[4:6, :, 3] = 128  # Two half-transparent rows.
  Image.fromarray(rgba, mode="RGBA").save(tmp_path / "t.png")
  white = preprocess.read_rgb(tmp_path / "t.png")
  np.testing.assert_array_equal(white[:4], 255)
  np.testing.assert_array_equal(white[6:], np.broadcast_to([200, 0, 0], (2, 8, 3)))
  np.testing.assert_allclose(white[4, 0], [200 * 128 / 255 + 255 * 127 / 255, 127, 127], atol=1.5)
  black = preprocess.read_rgb(tmp_path / "t.png", background=(0, 0, 0))
  np.testing.assert_array_equal(black[:4], 0)


def test_la_and_palette_transparency_are_composited(tmp_path):
  la = np.zeros((4, 4, 2), np.uint8)
  la[..., 0] = 10
  la[:2, :, 1] = 255
  Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
  rgb = preprocess.read_rgb(tmp_path / "la.png", background=(0, 255, 0))
  np.testing.assert_array_equal(rgb[:2], 10)
  np.testing.assert_array_equal(rgb[2:], np.broadcast_to([0, 255, 0], (2, 4, 3)))
  palette = Image.new("P", (4, 4), 1)
  palette.putpalette([0, 0, 0, 50, 60, 70] + [0] * 762)
  palette.info["transparency"] = 1
  palette.save(tmp_path / "pt.png", transparency=1)
  np.testing.assert_array_equal(preprocess.read_rgb(tmp_path / "pt.png"), 255)


def test_16bit_grayscale_is_scaled_to_8bit(tmp_path):
  levels = np.array([0, 257, 257 * 128, 257 * 200 + 100, 65535], np.uint16)
  Image.fromarray(np.tile(levels, (5, 1))).save(tmp_path / "g16.png")
  assert Image.open(tmp_path / "g16.png").mode.startswith("I")
  rgb = preprocess.read_rgb(tmp_path / "g16.png")
  np.testing.assert_array_equal(rgb[0, :, 0], [0, 1, 128, 200, 255])


def test_48bit_png_is_within_one_level_of_exact_scaling(tmp_path):
  values = np.random.default_rng(1).integers(0, 65536, (6, 7, 3)).astype(np.uint16)
  (tmp_path / "c48.png").write_bytes(_png16_rgb(values))
  rgb = preprocess.read_rgb(tmp_path / "c48.png")
  exact = np.rint(values / 257.0)
  assert rgb.dtype == np.uint8 and rgb.shape == (6, 7, 3)
  assert np.abs(rgb.astype(float) - exact).max() <= 1


def test_cmyk_jpeg_becomes_rgb(tmp_path):
  cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # Pure red in CMYK.
  cmyk.save(tmp_path / "c.jpg", quality=95)
  rgb = preprocess.read_rgb(tmp_path / "c.jpg")
  assert rgb.shape == (16, 16, 3)
  np.testing.assert_allclose(rgb.reshape(-1, 3).mean(0), [255, 0, 0], atol=12)


def test_exif_orientation_is_applied(tmp_path):
  # Stored 32 wide x 16 high: left half red, right half blue. Orientation 6 means "rotate 90 degrees clockwise
  # to display", so the upright image is 16 wide x 32 high with red on top.
  stored = np.zeros((16, 32, 3), np.uint8)
  stored[:, :16] = (255, 0, 0)
  stored[:, 16:] = (0, 0, 255)
  image = Image.fromarray(stored)
  exif = image.getexif()
  exif[0x0112] = 6
  image.save(tmp_path / "rot.jpg", exif=exif, quality=95)
  upright = preprocess.read_rgb(tmp_path / "rot.jpg")
  assert upright.shape == (32, 16, 3)
  assert upright[4, 8, 0] > 200 and upright[4, 8, 2] < 50  # Top: red.
  assert upright[28, 8, 2] > 200 and upright[28, 8, 0] < 50  # Bottom: blue.


def test_resize_modes_plain_resize_vs_centre_crop():
  # A 64 wide x 32 high image: green centre square, red strips left and right.
  image = np.zeros((32, 64, 3), np.uint8)
  image[:, :16] = (255, 0, 0)
  image[:, 48:] = (255, 0, 0)
  image[:, 16:48] = (0, 255, 0)
  cropped = preprocess.resize_image(image, 16, "center_crop")
  np.testing.assert_array_equal(cropped, np.broadcast_to([0, 255, 0], (16, 16, 3)))
  squeezed = preprocess.resize_image(image, 16, "resize")
  assert squeezed.shape == (16, 16, 3)
  assert squeezed[8, 0, 0] == 255 and squeezed[8, 8, 1] == 255  # Red strips survive a plain resize.


def test_area_resampling_matches_block_mean_reference():
  image = _rgb_noise(32, 32, seed=2)
  area = preprocess.resize_image(image, 16, resample="area").astype(np.float32)
  reference = image.astype(np.float32).reshape(16, 2, 16, 2, 3).mean(axis=(1, 3))
  assert np.abs(area - reference).max() <= 0.5 + 1e-6  # Only the final rounding differs.
  constant = np.full((40, 40, 3), 77, np.uint8)
  np.testing.assert_array_equal(preprocess.resize_image(constant, 16, resample="lanczos"), 77)


def test_load_image_gives_float_in_minus_one_one(tmp_path):
  image = np.zeros((32, 32, 3), np.uint8)
  image[:, :16] = 255
  Image.fromarray(image).save(tmp_path / "bw.png")
  loaded = preprocess.load_image(tmp_path / "bw.png", 32)
  assert loaded.dtype == np.float32 and loaded.shape == (32, 32, 3)
  assert loaded[0, 0, 0] == 1.0 and loaded[0, 31, 0] == -1.0
  np.testing.assert_allclose(preprocess.to_float(np.array([0, 127, 255], np.uint8)), [-1, 127 / 127.5 - 1, 1])


def _bad_files(folder):
  (folder / "empty.png").write_bytes(b"")
  buffer = io.BytesIO()
  Image.fromarray(_rgb_noise(64, 64)).save(buffer, format="PNG")
  (folder / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
  (folder / "text.png").write_text("this is not an image\n")
  Image.fromarray(_rgb_noise(4, 4)).save(folder / "tiny.png")
  return {"empty.png": "empty file", "truncated.png": "truncated", "text.png": "not an image",
          "tiny.png": "too small"}


def test_bad_files_raise_image_error_naming_path_and_reason(tmp_path):
  for name, reason in _bad_files(tmp_path).items():
    with pytest.raises(ImageError) as info:
      preprocess.load_image(tmp_path / name, 32)
    message = str(info.value)
    assert str(tmp_path / name) in message and reason in message, message
    assert "\n" not in message and isinstance(info.value, ValueError)
  with pytest.raises(ImageError, match="file not found"):
    preprocess.load_image(tmp_path / "missing.png", 32)


def test_min_size_is_configurable(tmp_path):
  Image.fromarray(_rgb_noise(6, 6)).save(tmp_path / "small.png")
  with pytest.raises(ImageError, match="too small"):
    preprocess.load_image(tmp_path / "small.png", 32)  # Default: side >= 32 / 4 = 8.
  assert preprocess.load_image(tmp_path / "small.png", 32, min_size=4).shape == (32, 32, 3)


def test_load_images_skips_bad_files_and_reports_them(tmp_path):
  bad = _bad_files(tmp_path)
  Image.fromarray(_rgb_noise(40, 40, 3)).save(tmp_path / "good1.png")
  Image.fromarray(_rgb_noise(40, 30, 4)).save(tmp_path / "good2.jpg")
  paths = [tmp_path / "good1.png"] + [tmp_path / n for n in bad] + [tmp_path / "good2.jpg"]
  names, images, failures = preprocess.load_images(paths, 32)
  assert names == ["good1", "good2"]
  assert images.shape == (2, 32, 32, 3) and images.dtype == np.float32
  np.testing.assert_array_equal(images[0], preprocess.load_image(tmp_path / "good1.png", 32))
  assert [path for path, _ in failures] == [str(tmp_path / n) for n in bad]


def test_unknown_resize_mode_is_a_clear_error():
  with pytest.raises(ValueError, match="center_crop"):
    preprocess.resize_image(_rgb_noise(), 16, "stretch")
  with pytest.raises(ValueError, match="lanczos"):
    preprocess.resize_image(_rgb_noise(), 16, resample="nearest-ish")


def test_load_images_makes_names_unique(tmp_path):
  for folder in ("a", "b"):
    (tmp_path / folder).mkdir()
    Image.fromarray(_rgb_noise(32, 32)).save(tmp_path / folder / "x.png")
  Image.fromarray(_rgb_noise(32, 32)).save(tmp_path / "x_2.png")
  names, images, failures = preprocess.load_images(
      [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "x_2.png"], 32)
  assert names == ["x", "x_2", "x_2_2"] and len(images) == 3 and not failures
