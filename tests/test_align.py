"""FFHQ alignment: the recipe's geometry (no dlib needed) and real public-domain portraits that packages ship.

Photos: matplotlib's `grace_hopper.jpg` (US Navy portrait, public domain) and scikit-image's `astronaut()`
(NASA portrait of Eileen Collins, public domain); both only ever written to tmp_path.
"""
import json
import sys

import numpy as np
import pytest
from PIL import Image

from idinvert_jax import align
from optional_deps import missing, require

SIZE = 256
EYE_TOLERANCE_PX = 3.0   # dlib's landmarks on the aligned crop vs FFHQ's target, at 256 px.
LEVEL_TOLERANCE_PX = 2.5  # measured 0-2.0 px on the three photos


def _face_landmarks(eye_left, eye_right, mouth_left, mouth_right) -> np.ndarray:
  """68 points whose eye centres and mouth corners are the given ones (the other points do not matter)."""
  points = np.zeros((68, 2))
  points[36:42] = eye_left
  points[42:48] = eye_right
  points[48], points[54] = mouth_left, mouth_right
  return points


def _canonical_eyes(eye_distance: float, eye_to_mouth: float, size: int) -> np.ndarray:
  """FFHQ's eye targets for a level face, from the recipe's numbers alone (half side = max(2.0 e, 1.8 m),
  centre 0.1 m below the eye midpoint)."""
  half_side = max(2.0 * eye_distance, 1.8 * eye_to_mouth)
  scale = size / (2 * half_side)
  y = size / 2 - 0.1 * eye_to_mouth * scale
  dx = eye_distance / 2 * scale
  return np.array([[size / 2 - dx, y], [size / 2 + dx, y]]) - 0.5


def test_quad_of_a_level_face_is_the_recipe_square():
  lm = _face_landmarks([100, 200], [160, 200], [110, 260], [150, 260])  # e = 60, m = 60
  quad, side = align.ffhq_quad(lm)
  assert side == pytest.approx(2 * 120)  # half side = max(2 * 60, 1.8 * 60)
  np.testing.assert_allclose(quad, [[10, 86], [10, 326], [250, 326], [250, 86]], atol=1e-9)
  np.testing.assert_allclose(align.aligned_eyes(lm, SIZE), _canonical_eyes(60, 60, SIZE), atol=1e-9)
  # A face with a long chin: the eye-to-mouth term sets the size, the eyes move closer together.
  lm = _face_landmarks([100, 200], [160, 200], [110, 300], [150, 300])  # m = 100 -> half side 180
  np.testing.assert_allclose(align.aligned_eyes(lm, SIZE), _canonical_eyes(60, 100, SIZE), atol=1e-9)


def test_zoom_shrinks_the_square_about_the_same_centre():
  lm = _face_landmarks([100, 200], [160, 200], [110, 260], [150, 260])
  quad, side = align.ffhq_quad(lm)
  tight, tight_side = align.ffhq_quad(lm, zoom=0.8)
  assert tight_side == pytest.approx(0.8 * side)
  np.testing.assert_allclose(tight.mean(axis=0), quad.mean(axis=0), atol=1e-9)
  np.testing.assert_allclose(tight - tight.mean(axis=0), 0.8 * (quad - quad.mean(axis=0)), atol=1e-9)
  # The face fills more of the aligned crop: a photo's pixel row is sampled 1 / 0.8 times larger.
  photo = np.zeros((400, 300, 3), np.uint8)
  photo[:, 130:] = 255  # Right half white: the edge sits at the face centre, so it stays at the crop centre.
  photo[300:] = 128     # Below the chin (the FFHQ square ends at row 326, zoom 0.5's at 266): grey.
  wide, close = align.align_face(photo, lm, 64), align.align_face(photo, lm, 64, zoom=0.5)
  grey = lambda rows: np.abs(rows.astype(int) - 128) <= 2
  assert grey(wide[-2:]).all() and not grey(close[-8:]).any()


def test_quad_turns_with_the_face():
  lm = _face_landmarks([100, 200], [160, 200], [110, 260], [150, 260])
  angle = np.deg2rad(25)
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  turned = (lm - 130) @ rot.T + 130
  quad, _ = align.ffhq_quad(lm)
  turned_quad, _ = align.ffhq_quad(turned)
  np.testing.assert_allclose(turned_quad, (quad - 130) @ rot.T + 130, atol=1e-9)
  np.testing.assert_allclose(align.aligned_eyes(turned, SIZE), align.aligned_eyes(lm, SIZE), atol=1e-9)


@pytest.mark.parametrize("shift, size", [(0, 128), (0, 64), (-200, 128)],
                         ids=["crop", "shrink_3x", "blur_pad"])
def test_align_face_maps_points_where_aligned_landmarks_says(shift, size):
  """Sub-pixel geometry of align_face (pre-shrink, crop, blur-pad, quad transform) on a photo with two dots."""
  lm = _face_landmarks([300, 400], [420, 400], [320, 520], [400, 520]) + [shift, 0]
  photo = np.zeros((900, 800, 3), np.uint8)
  dots = np.array([[300.0, 400.0], [400.0, 520.0]]) + [shift, 0]
  for x, y in dots.astype(int):
    photo[y - 6:y + 7, x - 6:x + 7] = 255
  out = align.align_face(photo, lm, size).astype(np.float64).mean(axis=-1)
  expected = align.aligned_landmarks(lm, dots, size)
  for (ex, ey) in expected:
    x0, y0 = int(round(ex)), int(round(ey))
    patch = out[y0 - 5:y0 + 6, x0 - 5:x0 + 6]
    yy, xx = np.mgrid[y0 - 5:y0 + 6, x0 - 5:x0 + 6]
    centroid = np.array([(patch * xx).sum(), (patch * yy).sum()]) / patch.sum()
    np.testing.assert_allclose(centroid, [ex, ey], atol=0.25)


# ----------------------------------------------------------------------------------------------------------
# Real photos (needs the align extra).


@pytest.fixture(scope="module")
def dlib_ready():
  require("dlib", "pip install -e .[align]")
  if not align.available():
    missing("the 68-point landmark model is not installed; install it with `pip install -e .[align]`")


def _grace_hopper() -> np.ndarray:
  from matplotlib import cbook
  with cbook.get_sample_data("grace_hopper.jpg") as f:
    return np.asarray(Image.open(f).convert("RGB"))


def _astronaut() -> np.ndarray:
  data = require("skimage.data", "pip install scikit-image (in the test extra)")
  return np.asarray(data.astronaut())


def _eyes_after_alignment(photo: np.ndarray):
  """(FFHQ's target eye positions, dlib's eye centres re-detected on the aligned crop), both [2, 2] at 256 px."""
  faces = align.detect_faces(photo)
  assert faces, "no face found"
  aligned = align.align_face(photo, faces[0].landmarks, SIZE)
  assert aligned.shape == (SIZE, SIZE, 3) and aligned.dtype == np.uint8
  again = align.detect_faces(aligned)
  assert len(again) == 1
  p = align.eye_and_mouth_points(again[0].landmarks)
  return align.aligned_eyes(faces[0].landmarks, SIZE), np.stack([p["eye_left"], p["eye_right"]])


@pytest.mark.parametrize("photo", ["grace_hopper", "astronaut", "grace_hopper_turned_20deg"])
def test_eyes_land_where_ffhq_puts_them(dlib_ready, photo):
  if photo == "astronaut":
    image = _astronaut()
  else:
    image = _grace_hopper()
    if photo.endswith("turned_20deg"):
      image = np.asarray(Image.fromarray(image).rotate(20, resample=Image.Resampling.BICUBIC, expand=True))
  target, found = _eyes_after_alignment(image)
  error = np.abs(found - target).max()
  print(f"{photo}: target {target.round(1).tolist()}, found {found.round(1).tolist()}, max error {error:.2f} px")
  assert error <= EYE_TOLERANCE_PX
  assert abs(found[1, 1] - found[0, 1]) <= LEVEL_TOLERANCE_PX  # Level.
  # The targets are FFHQ's canonical frontal positions: x at 3/8 and 5/8 of the side, y a little above the middle.
  np.testing.assert_allclose(target[:, 0], [0.375 * SIZE - 0.5, 0.625 * SIZE - 0.5], atol=2.0)
  assert 0.45 * SIZE < target[:, 1].mean() < 0.5 * SIZE


def test_align_cli_writes_every_face_or_the_largest_and_names_photos_without_one(dlib_ready, tmp_path, capsys):
  photos = tmp_path / "photos"
  photos.mkdir()
  gh, astronaut = _grace_hopper(), _astronaut()
  Image.fromarray(gh).save(photos / "grace_hopper.jpg", quality=95)
  # Two people in one picture: Grace Hopper (face ~190 px) beside the astronaut (face ~90 px).
  Image.fromarray(np.concatenate([gh[:512], astronaut], axis=1)).save(photos / "two.png")
  Image.fromarray(np.full((200, 300, 3), 128, np.uint8)).save(photos / "wall.png")

  assert align.main([str(photos), "--output", str(tmp_path / "all"), "--no_progress"]) == 0
  out = capsys.readouterr().out
  assert f"no face found in {photos / 'wall.png'}: skipped" in out
  assert sorted(p.name for p in (tmp_path / "all").glob("*.png")) == ["grace_hopper.png", "two_face0.png",
                                                                      "two_face1.png"]
  record = json.loads((tmp_path / "all" / "alignment.json").read_text())
  by_file = {r["file"]: r for r in record["faces"]}
  assert by_file["two_face0.png"]["box"][0] < 512 <= by_file["two_face1.png"]["box"][0]  # Largest first.
  assert len(by_file["grace_hopper.png"]["landmarks"]) == 68

  assert align.main([str(photos / "two.png"), "--output", str(tmp_path / "largest"), "--largest_face",
                     "--size", "64", "--no_progress"]) == 0
  written = sorted((tmp_path / "largest").glob("*.png"))
  assert [p.name for p in written] == ["two.png"] and Image.open(written[0]).size == (64, 64)
  np.testing.assert_array_equal(  # The largest face is Grace Hopper's: same crop as from her own photo.
      np.asarray(Image.open(written[0])),
      align.align_face(gh[:512], align.detect_faces(gh[:512])[0].landmarks, 64))

  assert align.main([str(photos / "wall.png"), "--output", str(tmp_path / "none"), "--no_progress"]) == 1


def test_without_the_extra_one_line_names_the_install(monkeypatch, tmp_path):
  align._detector_and_predictor.cache_clear()
  monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
  try:
    assert not align.available()
    with pytest.raises(align.AlignUnavailable, match=r"pip install -e \.\[align\]"):
      align.detect_faces(np.zeros((32, 32, 3), np.uint8))
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    with pytest.raises(SystemExit) as exit_info:
      align.main([str(image), "--output", str(tmp_path / "out")])
    message = str(exit_info.value)
    assert "\n" not in message and "pip install -e .[align]" in message
  finally:
    align._detector_and_predictor.cache_clear()
