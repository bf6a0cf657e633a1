"""tools/face_statistics: the pixel scorers used to fit boundaries for models trained without labels."""
import numpy as np

from tools import face_statistics


def _faces(top: float, centre: float) -> np.ndarray:
  """Two 16-px grey crops: the top rows at `top`, the centre at `centre`, the rest at 0 (all in [-1, 1])."""
  x = np.zeros((2, 16, 16, 3), np.float32)
  x[:, :2] = top
  x[:, 4:12, 4:12] = centre
  return x


def test_face_lighting_follows_the_centre_and_ignores_the_top():
  dark, bright = face_statistics.face_lighting(_faces(0.0, -0.5)), face_statistics.face_lighting(_faces(0.0, 0.5))
  assert dark.shape == (2,) and np.all(bright > dark)
  np.testing.assert_allclose(face_statistics.face_lighting(_faces(1.0, 0.5)), bright)
  np.testing.assert_allclose(face_statistics.face_lighting(-np.ones((1, 8, 8, 3), np.float32)), [0.0], atol=1e-6)


def test_hair_lightness_is_the_top_relative_to_the_face():
  light, dark = face_statistics.hair_lightness(_faces(0.8, 0.0)), face_statistics.hair_lightness(_faces(-0.8, 0.0))
  assert np.all(light > dark)
  # A global exposure change moves top and face together: the score stays.
  np.testing.assert_allclose(face_statistics.hair_lightness(_faces(0.5, 0.5)),
                             face_statistics.hair_lightness(_faces(0.2, 0.2)), atol=1e-6)
