"""Synthetic faces: deterministic per image, attributes change the pixels they claim and nothing else."""
import numpy as np
import pytest

from idinvert_jax.data import __main__ as data_cli
from idinvert_jax.data import synthetic_faces as sf

RES = 64
# Regions of a 64 px face with yaw = 0 (rows, cols); the jitter moves a face by at most ~2 px.
MOUTH = (slice(36, 48), slice(24, 39))
EYES = (slice(22, 38), slice(12, 52))
HAIR_TOP = (slice(13, 20), slice(26, 38))
BESIDE_HEAD = (slice(38, 46), slice(14, 16))  # Left of the jaw, above the shoulders.
CORNERS = [(slice(0, 3), slice(0, 3)), (slice(0, 3), slice(-3, None))]  # The shirt covers the bottom ones.
FACE_INDICES = [0, 1, 2, 3]


def _pair(name, low, high, **fixed):
  """Faces FACE_INDICES rendered with attribute `name` = low and = high (everything else identical)."""
  attrs = {"yaw": 0.0, **fixed}
  n = len(FACE_INDICES)
  attrs[name] = np.array([low] * n + [high] * n, np.float32)
  images, labels = sf.render_with(attrs, RES, seed=11, indices=FACE_INDICES * 2)
  return images[:n].astype(np.int32), images[n:].astype(np.int32), labels


def _changed(a, b):
  return np.abs(a - b).max(axis=-1) > 0


def _outside(mask, region):
  inside = np.zeros(mask.shape[1:], bool)
  inside[region] = True
  return mask[:, ~inside]


def test_render_is_deterministic_per_image():
  images, labels = sf.render(10, RES, seed=3)
  again, _ = sf.render(10, RES, seed=3)
  np.testing.assert_array_equal(images, again)
  part, part_labels = sf.render(4, RES, seed=3, start=6)
  np.testing.assert_array_equal(part, images[6:])  # Image i does not depend on the batch it is in.
  one, one_labels = sf.render_one(7, RES, seed=3)
  np.testing.assert_array_equal(one, images[7])
  for name in sf.ATTRIBUTES:
    assert one_labels[name] == labels[name][7]
    np.testing.assert_array_equal(part_labels[name], labels[name][6:])
  other, _ = sf.render(10, RES, seed=4)
  assert np.abs(other.astype(int) - images).mean() > 10
  assert len({img.tobytes() for img in images}) == 10


@pytest.mark.parametrize("resolution", [32, 48, 256])
def test_resolutions_and_label_ranges(resolution):
  images, labels = sf.render(3, resolution, seed=0)
  assert images.shape == (3, resolution, resolution, 3) and images.dtype == np.uint8
  assert set(labels) == set(sf.ATTRIBUTES)
  for name, attr in sf.ATTRIBUTES.items():
    assert labels[name].shape == (3,) and labels[name].dtype == np.float32
    assert np.all((labels[name] >= attr.low) & (labels[name] <= attr.high)), name
  with pytest.raises(ValueError, match="32...256"):
    sf.render(1, 16, seed=0)


def test_attribute_table_has_required_kinds():
  required = {"smile", "eyeglasses", "hair_color", "hair_length", "skin_tone", "yaw", "eye_openness",
              "background_hue", "light_direction"}
  assert required <= set(sf.ATTRIBUTES)
  kinds = {attr.kind for attr in sf.ATTRIBUTES.values()}
  assert kinds == {"binary", "continuous"} and sf.ATTRIBUTES["eyeglasses"].kind == "binary"
  for name in sf.ATTRIBUTES:
    assert name in sf.__doc__  # Documented in the module docstring.


def test_labels_are_independent_and_cover_their_ranges():
  labels = sf.sample_attributes(4000, seed=1)
  matrix = np.stack([labels[name] for name in sf.ATTRIBUTES])
  correlation = np.corrcoef(matrix)
  off_diagonal = correlation[~np.eye(len(matrix), dtype=bool)]
  assert np.abs(off_diagonal).max() < 0.06
  assert set(np.unique(labels["eyeglasses"])) == {0.0, 1.0}
  assert 0.26 < labels["eyeglasses"].mean() < 0.34
  for name, attr in sf.ATTRIBUTES.items():
    if attr.kind == "continuous":
      assert labels[name].min() < attr.low + 0.01 * (attr.high - attr.low)
      assert labels[name].max() > attr.high - 0.01 * (attr.high - attr.low)
  np.testing.assert_array_equal(sf.sample_attributes(5, seed=1, start=3)["smile"], labels["smile"][3:8])


def test_smile_changes_only_the_mouth():
  frown, smile, labels = _pair("smile", -1.0, 1.0)
  changed = _changed(frown, smile)
  assert changed[(slice(None),) + MOUTH].sum(axis=(1, 2)).min() >= 15
  assert not _outside(changed, MOUTH).any()
  for name in sf.ATTRIBUTES:  # The other attributes are untouched.
    if name != "smile":
      np.testing.assert_array_equal(labels[name][:4], labels[name][4:])
  # Smiling raises the mouth corners (smaller row index) relative to the centre; frowning lowers them.
  def corner_lift(images):
    lifts = []
    for image in images:
      mouth = image[MOUTH]
      lips = (mouth[..., 0] - mouth[..., 1] > 50) & (mouth[..., 0] - mouth[..., 2] > 50)
      rows, cols = np.nonzero(lips)
      centre = np.abs(cols - cols.mean()) < 0.2 * np.ptp(cols)
      corners = np.abs(cols - cols.mean()) > 0.35 * np.ptp(cols)
      lifts.append(rows[centre].mean() - rows[corners].mean())
    return np.array(lifts)
  assert np.all(corner_lift(smile) > 0.5) and np.all(corner_lift(frown) < -0.5)


def test_eyeglasses_add_dark_pixels_around_the_eyes_only():
  bare, glasses, _ = _pair("eyeglasses", 0.0, 1.0)
  changed = _changed(bare, glasses)
  assert not _outside(changed, EYES).any()
  dark = lambda images: (images[(slice(None),) + EYES].max(axis=-1) < 60).sum(axis=(1, 2))
  assert np.all(dark(glasses) >= dark(bare) + 20)


def test_hair_colour_changes_hair_pixels_not_the_mouth_or_background():
  black, blonde, _ = _pair("hair_color", 0.0, 1.0)
  top = (slice(None),) + HAIR_TOP
  assert np.all(blonde[top].mean(axis=(1, 2, 3)) > black[top].mean(axis=(1, 2, 3)) + 80)
  changed = _changed(black, blonde)
  assert not changed[(slice(None),) + MOUTH].any()
  for corner in CORNERS:
    assert not changed[(slice(None),) + corner].any()


def test_background_hue_changes_corners_not_the_face():
  first, second, _ = _pair("background_hue", 0.0, 0.5)
  for corner in CORNERS:
    assert np.all(_changed(first, second)[(slice(None),) + corner].mean(axis=(1, 2)) == 1.0)
  assert not _changed(first, second)[:, 20:44, 24:40].any()


def test_hair_length_changes_pixels_beside_the_neck():
  short, long, _ = _pair("hair_length", 0.0, 1.0, hair_color=0.0)
  region = (slice(None),) + BESIDE_HEAD
  assert np.all(_changed(short, long)[region].mean(axis=(1, 2)) > 0.5)
  assert np.all(long[region].mean(axis=(1, 2, 3)) < 40)  # Black hair now fills it.
  assert not _changed(short, long)[(slice(None),) + MOUTH].any()


def test_skin_tone_darkens_the_cheeks():
  light, dark, _ = _pair("skin_tone", 0.0, 1.0)
  cheek = (slice(None), slice(34, 38), slice(18, 22))
  assert np.all(light[cheek].mean(axis=(1, 2, 3)) > dark[cheek].mean(axis=(1, 2, 3)) + 50)


def test_eye_openness_shows_more_eye_white():
  closed, open_, _ = _pair("eye_openness", 0.0, 1.0)
  # At 64 px an open eye is a few pixels of white beside the iris; a closed eye is a dark line with none.
  white = lambda images: (images[(slice(None),) + EYES].min(axis=-1) > 200).sum(axis=(1, 2))
  assert np.all(white(closed) == 0) and np.all(white(open_) >= 2)
  assert np.all(_changed(closed, open_)[(slice(None),) + EYES].sum(axis=(1, 2)) >= 12)
  assert not _outside(_changed(closed, open_), EYES).any()


def test_light_direction_lights_the_side_it_comes_from():
  from_left, from_right, _ = _pair("light_direction", -1.0, 1.0)
  left_cheek, right_cheek = (slice(None), slice(34, 40), slice(20, 23)), (slice(None), slice(34, 40), slice(41, 44))
  brightness = lambda images, region: images[region].mean(axis=(1, 2, 3))
  assert np.all(brightness(from_left, left_cheek) > 1.3 * brightness(from_left, right_cheek))
  assert np.all(brightness(from_right, right_cheek) > 1.3 * brightness(from_right, left_cheek))


def test_yaw_moves_the_features_horizontally():
  left, right, _ = _pair("yaw", -1.0, 1.0, eyeglasses=1.0, hair_color=1.0, skin_tone=0.0)
  # Column centroid of the dark glasses rims in the eye band moves right with positive yaw.
  def dark_centroid(images):
    dark = images[(slice(None),) + EYES].max(axis=-1) < 60
    cols = np.arange(dark.shape[-1])
    return (dark * cols).sum(axis=(1, 2)) / dark.sum(axis=(1, 2))
  assert np.all(dark_centroid(right) > dark_centroid(left) + 4)


def test_windowed_rendering_equals_full_frame_reference():
  rng = np.random.default_rng(0)
  uniforms = rng.random((40, sf._NUM_DRAWS))
  uniforms[:20] = np.round(uniforms[:20])  # Extreme values: the parts reach their boxes' limits.
  factors = sf._factors(uniforms)
  for resolution in (32, 45, 64):
    np.testing.assert_array_equal(sf._draw(factors, resolution), sf._draw(factors, resolution, windowed=False))


def test_edges_are_anti_aliased():
  images, _ = sf.render_with({"background_hue": 0.0, "hair_length": 0.0}, RES, seed=2, indices=[0])
  # Between the (flat-ish) background and the head, a hard-edged render would have only two colours per row;
  # coverage gives in-between values: count distinct colours along a row through the head's side.
  row = images[0, 32].astype(int)
  steps = np.abs(np.diff(row, axis=0)).max(axis=-1)
  assert (steps > 0).sum() > 20 and steps.max() < 200


def test_render_with_validates_inputs():
  with pytest.raises(ValueError, match="unknown synthetic face attributes"):
    sf.render_with({"beard": [1.0]}, RES, seed=0)
  with pytest.raises(ValueError, match="different lengths"):
    sf.render_with({"smile": [0.0, 1.0], "yaw": [0.0, 0.1, 0.2]}, RES, seed=0)
  images, labels = sf.render_with({"smile": 5.0}, RES, seed=0, indices=[3])
  assert labels["smile"][0] == 1.0  # Clipped to the attribute's range.
  default, _ = sf.render(4, RES, seed=0)
  _, default_labels = sf.render(4, RES, seed=0)
  same, _ = sf.render_with({"smile": default_labels["smile"][3]}, RES, seed=0, indices=[3])
  np.testing.assert_array_equal(same[0], default[3])


def test_export_cli_writes_folder_and_npz(tmp_path, capsys):
  assert data_cli.main(["export-synthetic", "--num", "3", "--resolution", "32", "--seed", "2", "--start", "4",
                        "--output", str(tmp_path / "faces")]) == 0
  images, labels = sf.render(3, 32, seed=2, start=4)
  csv = (tmp_path / "faces" / "labels.csv").read_text().splitlines()
  assert csv[0].split(",") == ["file"] + list(sf.ATTRIBUTES) and len(csv) == 4
  assert csv[1].startswith("synthetic_2_000004.png,")
  from PIL import Image
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "faces" / "synthetic_2_000006.png")), images[2])
  assert data_cli.main(["export-synthetic", "--num", "3", "--resolution", "32", "--seed", "2", "--start", "4",
                        "--output", str(tmp_path / "faces.npz")]) == 0
  with np.load(tmp_path / "faces.npz", allow_pickle=False) as archive:
    np.testing.assert_array_equal(archive["images"], images)
    np.testing.assert_array_equal(archive["indices"], [4, 5, 6])
    for name in sf.ATTRIBUTES:
      np.testing.assert_array_equal(archive[name], labels[name])
  assert not list(tmp_path.glob(".*.tmp"))  # Atomic writes leave no temporaries.
  assert data_cli.main(["export-synthetic", "--num", "2", "--resolution", "8", "--output", str(tmp_path / "x")]) == 1
  assert "32...256" in capsys.readouterr().err
  with pytest.raises(SystemExit) as info:
    data_cli.main(["export-synthetic", "--help"])
  assert info.value.code == 0
  help_text = capsys.readouterr().out
  for flag in ("--num", "--resolution", "--seed", "--start", "--output"):
    assert flag in help_text
