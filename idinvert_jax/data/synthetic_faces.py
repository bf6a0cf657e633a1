"""Synthetic faces: a procedural, labelled face dataset that needs no download.

Every image is drawn from its own seed (`seed`, `index`), so image i is the same whatever the batch it is
rendered in, at any resolution from 32 to 256 px. Shapes are signed-distance fields turned into anti-aliased
coverage (a one-pixel linear ramp), the head and hair are shaded as Lambertian ellipsoids lit from
`light_direction`, backgrounds are two-colour gradients, and the face position/scale jitter slightly, so a GAN
has real structure to learn while the ground-truth attributes below are known for every image.

Attributes (all sampled independently and uniformly; labels are float32 arrays, binary ones are 0./1.):

| name             | kind       | range    | what it changes                                                   |
|------------------|------------|----------|-------------------------------------------------------------------|
| smile            | continuous | [-1, 1]  | mouth curvature: -1 frown, 0 straight, 1 smile (mouth opens >0.4) |
| eyeglasses       | binary     | {0, 1}   | dark round rims around both eyes and a bridge, tinted lenses (p=0.3) |
| hair_color       | continuous | [0, 1]   | black (0) -> brown (0.5) -> blonde (1) hair and eyebrows          |
| hair_length      | continuous | [0, 1]   | short cap (0) -> hair down to the shoulders (1) beside the face   |
| skin_tone        | continuous | [0, 1]   | light (0) -> dark (1) skin                                        |
| yaw              | continuous | [-1, 1]  | head turn (+-0.5 rad): features slide along the head, foreshorten |
| eye_openness     | continuous | [0, 1]   | eye height: closed line (0) -> wide open (1)                      |
| background_hue   | continuous | [0, 1)   | hue of the background gradient (HSV hue)                          |
| light_direction  | continuous | [-1, 1]  | key light from the left (-1) to the right (1): shading of head/hair |

Nuisance factors (not labelled, also per-image random): face position (+-4% of the image) and scale (+-8%),
background gradient angle, saturation and brightness, shirt colour.

API: `render(num, resolution, seed, start=0)`, `render_one(index, resolution, seed)`,
`render_with(attrs, resolution, seed, indices=None)` (set attributes explicitly, e.g. the same face with
smile=0 and smile=1), `sample_attributes(num, seed, start=0)` (labels only, no pixels) and `ATTRIBUTES`.
Export with `python -m idinvert_jax.data export-synthetic --help`.
"""
from __future__ import annotations

import concurrent.futures
import os
from typing import Mapping, NamedTuple, Sequence

import numpy as np

MIN_RESOLUTION, MAX_RESOLUTION = 32, 256
_CHUNK = 16  # Images rendered at once: keeps the [chunk, H, W] temporaries inside the CPU caches.
_THREADS = min(4, os.cpu_count() or 1)


class Attribute(NamedTuple):
  kind: str  # 'binary' | 'continuous'
  low: float
  high: float
  description: str


ATTRIBUTES: dict[str, Attribute] = {
    "smile": Attribute("continuous", -1.0, 1.0, "mouth curvature: -1 frown, 0 straight, 1 smile"),
    "eyeglasses": Attribute("binary", 0.0, 1.0, "round dark glasses over both eyes"),
    "hair_color": Attribute("continuous", 0.0, 1.0, "black (0) -> brown (0.5) -> blonde (1)"),
    "hair_length": Attribute("continuous", 0.0, 1.0, "short (0) -> shoulder length (1)"),
    "skin_tone": Attribute("continuous", 0.0, 1.0, "light (0) -> dark (1)"),
    "yaw": Attribute("continuous", -1.0, 1.0, "head turn, -1 = facing image left, 1 = image right"),
    "eye_openness": Attribute("continuous", 0.0, 1.0, "closed (0) -> wide open (1)"),
    "background_hue": Attribute("continuous", 0.0, 1.0, "HSV hue of the background gradient"),
    "light_direction": Attribute("continuous", -1.0, 1.0, "light from the left (-1) to the right (1)"),
}
_EYEGLASSES_PROBABILITY = 0.3
_NUISANCE = ("face_x", "face_y", "face_scale", "bg_angle", "bg_saturation", "bg_value", "shirt_hue")
_NUM_DRAWS = len(ATTRIBUTES) + len(_NUISANCE)


def _uniforms(num: int, seed: int, start: int = 0, indices: Sequence[int] | None = None) -> np.ndarray:
  """[num, _NUM_DRAWS] uniforms; row i depends only on (seed, index i): batch-independent."""
  if indices is None:
    indices = range(start, start + num)
  return np.stack([np.random.default_rng([int(seed), int(i)]).random(_NUM_DRAWS) for i in indices]
                  ) if num else np.zeros((0, _NUM_DRAWS))


def _factors(uniforms: np.ndarray) -> dict[str, np.ndarray]:
  """Maps uniforms to attribute labels and nuisance factors (float32 [N] each)."""
  out = {}
  for column, (name, attr) in enumerate(ATTRIBUTES.items()):
    u = uniforms[:, column]
    if attr.kind == "binary":
      out[name] = (u < _EYEGLASSES_PROBABILITY).astype(np.float32)
    else:
      out[name] = (attr.low + (attr.high - attr.low) * u).astype(np.float32)
  for column, name in enumerate(_NUISANCE, start=len(ATTRIBUTES)):
    out[name] = uniforms[:, column].astype(np.float32)
  return out


def sample_attributes(num: int, seed: int, start: int = 0) -> dict[str, np.ndarray]:
  """The attribute labels of images start..start+num-1, without rendering them."""
  factors = _factors(_uniforms(num, seed, start))
  return {name: factors[name] for name in ATTRIBUTES}


def _check_resolution(resolution: int) -> None:
  if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
    raise ValueError(f"synthetic faces resolution {resolution} is out of range; use {MIN_RESOLUTION}..."
                     f"{MAX_RESOLUTION} (e.g. data.resolution or --resolution 64)")


# ---------------------------------------------------------------------------------------------------------
# Drawing primitives. Shapes are signed distances (negative inside) in image units, where the image spans
# [-1, 1]; `_cover` turns them into anti-aliased coverage with a ramp one pixel wide.


def _cover(distance: np.ndarray, pixel: float) -> np.ndarray:
  return np.clip(0.5 - distance / pixel, 0.0, 1.0)


def _ellipse(x, y, cx, cy, rx, ry):
  """Signed distance to an axis-aligned ellipse, to first order (f / |grad f| with f = r - 1): exact for
  circles and accurate near the outline of flat ellipses (a closed eye), which anti-aliasing and rims need."""
  dx, dy = (x - cx) / rx, (y - cy) / ry
  r = np.sqrt(dx**2 + dy**2)
  gradient = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)
  return (r - 1.0) * r / (gradient + 1e-6)


def _over(canvas: np.ndarray, color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  """Paints `color` ([N,1,1,3] or [N,H,W,3]) with coverage `alpha` [N,H,W] over `canvas` [N,H,W,3]."""
  canvas += (color - canvas) * alpha[..., None]
  return canvas


def _col(values: np.ndarray) -> np.ndarray:
  """[N] -> [N, 1, 1] for broadcasting against [N, H, W] grids."""
  return np.asarray(values, np.float32)[:, None, None]


def _rgb(colors: np.ndarray) -> np.ndarray:
  """[N, 3] -> [N, 1, 1, 3]."""
  return np.asarray(colors, np.float32)[:, None, None, :]


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Vectorised HSV -> RGB for [N] arrays; returns [N, 3]."""
  k = (np.array([5.0, 3.0, 1.0])[None, :] + 6.0 * h[:, None]) % 6.0
  return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _lerp_palette(t: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """Piecewise-linear colour ramp: t [N] in [0, 1], palette [K, 3] -> [N, 3]."""
  position = np.clip(t, 0.0, 1.0) * (len(palette) - 1)
  low = np.minimum(position.astype(int), len(palette) - 2)
  frac = (position - low)[:, None]
  return palette[low] * (1.0 - frac) + palette[low + 1] * frac


# Image-space boxes ((x range), (y range)) that contain every pixel a part can cover for all jitter, scale and
# yaw values drawn in `_draw` (2 pixels of margin are added for the anti-aliasing ramp). Evaluating parts only
# inside their box halves the rendering time; tests check the result equals full-frame evaluation.
_BOXES = {
    "long_hair": ((-0.7, 0.7), (-0.84, 0.92)),
    "shoulders": ((-1.0, 1.0), (0.42, 1.0)),
    "neck": ((-0.3, 0.3), (0.22, 1.0)),
    "ears": ((-0.7, 0.7), (-0.2, 0.28)),
    "head": ((-0.62, 0.62), (-0.74, 0.78)),
    "features": ((-0.68, 0.68), (-0.36, 0.56)),
    "cap": ((-0.66, 0.66), (-0.82, 0.2)),
}
_HAIR_PALETTE = np.array([[0.07, 0.05, 0.05], [0.38, 0.22, 0.11], [0.92, 0.78, 0.46]], np.float32)
_SKIN_PALETTE = np.array([[0.97, 0.82, 0.71], [0.80, 0.58, 0.42], [0.36, 0.22, 0.14]], np.float32)


def _draw(f: dict[str, np.ndarray], resolution: int, windowed: bool = True) -> np.ndarray:
  """Renders factors `f` (from `_factors`) -> float32 [N, H, W, 3] in [0, 1].

  `windowed=False` evaluates every part over the whole frame (slow reference for the `_BOXES` shortcut).
  """
  n = len(f["smile"])
  pixel = 2.0 / resolution
  coords = (np.arange(resolution, dtype=np.float32) + 0.5) * pixel - 1.0
  x, y = coords[None, None, :], coords[None, :, None]

  # Background: a two-colour gradient along a random direction, hue from the attribute.
  angle = _col(f["bg_angle"] * 2 * np.pi)
  t = np.clip(0.5 + 0.5 * (x * np.cos(angle) + y * np.sin(angle)), 0.0, 1.0)[..., None]
  saturation = 0.25 + 0.45 * f["bg_saturation"]
  value = 0.55 + 0.4 * f["bg_value"]
  near = _rgb(_hsv_to_rgb(f["background_hue"], saturation, value))
  far = _rgb(_hsv_to_rgb((f["background_hue"] + 0.06) % 1.0, saturation * 0.8, value * 0.65))
  canvas = near * (1.0 - t) + far * t

  # Head geometry with jitter; yaw turns features along the head surface.
  scale = 0.92 + 0.16 * f["face_scale"]  # Keep _BOXES in step with these sizes.
  cx = _col((f["face_x"] - 0.5) * 0.08)
  cy = _col(0.02 + (f["face_y"] - 0.5) * 0.08)
  s = _col(scale)
  rx, ry = 0.5 * s, 0.63 * s
  turn = _col(0.5 * f["yaw"])
  light = _col(0.9 * f["light_direction"])
  lx, ly, lz = np.sin(light), -0.35, np.cos(light)
  norm = np.sqrt(lx**2 + ly**2 + lz**2)
  lx, ly, lz = lx / norm, ly / norm, lz / norm

  def lambert(x, y, px, py, prx, pry, ambient=0.42):
    nx, ny = (x - px) / prx, (y - py) / pry
    nz = np.sqrt(np.clip(1.0 - nx**2 - ny**2, 0.0, 1.0))
    return (ambient + (1.0 - ambient) * np.clip(nx * lx + ny * ly + nz * lz, 0.0, 1.0))[..., None]

  def region(name):
    """Views of the canvas and coordinates inside box `name`: shapes are only evaluated where they can be."""
    if not windowed:
      return canvas, x, y
    (x0, x1), (y0, y1) = [(max(0, int(np.floor((lo + 1) / pixel)) - 2), int(np.ceil((hi + 1) / pixel)) + 2)
                          for lo, hi in _BOXES[name]]
    return canvas[:, y0:y1, x0:x1], x[..., x0:x1], y[:, y0:y1]

  hair = _rgb(_lerp_palette(f["hair_color"], _HAIR_PALETTE))
  skin = _rgb(_lerp_palette(f["skin_tone"], _SKIN_PALETTE))

  # Long hair behind the head: a rounded slab whose bottom edge follows hair_length.
  sub, bx, by = region("long_hair")
  length = _col(f["hair_length"])
  hair_bottom = cy + ry * (-0.05 + 1.25 * length)
  slab_half_height = (hair_bottom - (cy - 0.4 * ry)) / 2
  slab_cy = (hair_bottom + (cy - 0.4 * ry)) / 2
  slab = np.maximum(np.abs(bx - cx) - rx * 1.16, np.abs(by - slab_cy) - slab_half_height)
  long_hair = _cover(np.minimum(slab, _ellipse(bx, by, cx, cy - 0.08 * s, rx * 1.16, ry * 1.02)), pixel)
  _over(sub, hair * lambert(bx, by, cx, slab_cy, rx * 1.3, ry * 1.6, 0.5), long_hair)

  # Shirt and neck.
  sub, bx, by = region("shoulders")
  shirt = _rgb(_hsv_to_rgb(f["shirt_hue"], np.full(n, 0.45), np.full(n, 0.5)))
  shoulders_cy = cy + 1.25 * ry + 0.35
  shoulders = _cover(_ellipse(bx, by, cx, shoulders_cy, rx * 2.1, 0.55 * s), pixel)
  _over(sub, shirt * lambert(bx, by, cx, shoulders_cy, rx * 2.4, 0.9 * s, 0.55), shoulders)
  sub, bx, by = region("neck")
  neck = _cover(np.maximum(np.abs(bx - cx) - 0.2 * s, cy + 0.5 * ry - by), pixel)
  _over(sub, skin * 0.72, neck)

  # Ears (hidden behind the head on the side it turns away from) and the head itself.
  sub, bx, by = region("ears")
  for side in (-1.0, 1.0):
    ear_x = cx + side * rx * np.cos(turn * side * 0.9) * 0.98
    ear = _cover(_ellipse(bx, by, ear_x, cy + 0.02 * s, 0.075 * s, 0.13 * s), pixel)
    _over(sub, skin * 0.85, ear)
  sub, bx, by = region("head")
  head = _cover(_ellipse(bx, by, cx, cy, rx, ry), pixel)
  _over(sub, skin * lambert(bx, by, cx, cy, rx, ry), head)

  # Facial features: eyes, brows, nose, mouth and glasses all lie inside the "features" box.
  full_canvas, full_x, full_y = canvas, x, y
  canvas, x, y = region("features")

  def feature_x(longitude):
    """x of a point at `longitude` (radians) on the turned head, and its foreshortening."""
    return cx + rx * 0.92 * np.sin(longitude + turn), np.clip(np.cos(longitude + turn), 0.2, 1.0)

  # Eyes: white, iris and pupil clipped to the lid opening; eyelid height follows eye_openness.
  eye_y = cy - 0.08 * ry
  openness = _col(0.08 + 0.92 * f["eye_openness"])
  eye_centres = []
  for side in (-1.0, 1.0):
    ex, squash = feature_x(side * 0.42)
    eye_centres.append((ex, squash))
    eye_w, eye_h = 0.1 * s * squash, 0.058 * s * openness
    lid = _ellipse(x, y, ex, eye_y, eye_w, eye_h)
    lid_cover = _cover(lid, pixel)
    canvas = _over(canvas, _rgb(np.full((n, 3), 0.96)), lid_cover)
    iris = np.maximum(_ellipse(x, y, ex + 0.01 * _col(f["yaw"]), eye_y, 0.038 * s * squash, 0.038 * s), lid)
    canvas = _over(canvas, _rgb(np.tile([[0.25, 0.17, 0.1]], (n, 1))), _cover(iris, pixel))
    pupil = np.maximum(_ellipse(x, y, ex + 0.01 * _col(f["yaw"]), eye_y, 0.017 * s * squash, 0.017 * s), lid)
    canvas = _over(canvas, _rgb(np.full((n, 3), 0.03)), _cover(pupil, pixel))
    # Lid line: a thin dark outline of the opening, visible even when the eye is closed.
    # (Bounded in x: the first-order distance of a nearly closed lid is too small far out along its axis.)
    lid_line = np.maximum(np.abs(lid) - 0.6 * pixel, np.abs(x - ex) - eye_w)
    canvas = _over(canvas, skin * 0.35, _cover(lid_line, pixel))
    # Eyebrow: a short arc in a darker hair colour.
    brow_y = eye_y - 0.1 * s - 0.02 * s * openness + 0.03 * ((x - ex) / (0.1 * s)) ** 2 * s
    brow = np.maximum(np.abs(y - brow_y) - 0.012 * s, np.abs(x - ex) - 0.1 * s * squash)
    canvas = _over(canvas, hair * 0.7, _cover(brow, pixel))

  # Nose: a soft shadow on the side away from the light, and the nostril line.
  nose_x, _ = feature_x(0.0)
  nose_shadow = _cover(_ellipse(x, y, nose_x - 0.025 * np.sign(lx + 1e-6) * s, cy + 0.1 * ry, 0.03 * s,
                                0.13 * s), 4 * pixel)
  canvas = _over(canvas, skin * 0.78, 0.6 * nose_shadow)
  nostrils = _cover(_ellipse(x, y, nose_x, cy + 0.24 * ry, 0.05 * s, 0.014 * s), pixel)
  canvas = _over(canvas, skin * 0.55, nostrils)

  # Mouth: a parabola whose corners rise with smile; broad smiles (> 0.4) open to show the teeth.
  smile = _col(f["smile"])
  mouth_x, mouth_squash = feature_x(0.0)
  mouth_y = cy + 0.48 * ry
  half_width = 0.15 * s * mouth_squash
  u = np.clip((x - mouth_x) / half_width, -1.5, 1.5)
  curve = mouth_y + 0.07 * s * smile * (0.4 - u**2)
  opening = 0.045 * s * np.clip(smile - 0.4, 0.0, 1.0) * np.clip(1.0 - u**2, 0.0, 1.0)
  lips = np.maximum(np.abs(y - curve - opening / 2) - (0.014 * s + opening / 2), np.abs(x - mouth_x) - half_width)
  canvas = _over(canvas, _rgb(np.tile([[0.62, 0.22, 0.24]], (n, 1))) * lambert(x, y, cx, cy, rx, ry, 0.6),
                 _cover(lips, pixel))
  inner = np.maximum(np.abs(y - curve - opening / 2) - opening / 2 + 0.4 * pixel,
                     np.abs(x - mouth_x) - half_width * 0.85)
  canvas = _over(canvas, _rgb(np.tile([[0.93, 0.9, 0.85]], (n, 1))), _cover(inner, pixel))

  # Glasses (drawn in the window too), then back to the full frame for the hair cap.
  glasses = _col(f["eyeglasses"])
  rim_color = _rgb(np.full((n, 3), 0.05))
  for ex, squash in eye_centres:
    lens_w = 0.13 * s * squash
    lens = _ellipse(x, y, ex, eye_y, lens_w, 0.105 * s)
    canvas *= 1.0 - 0.18 * (glasses * _cover(lens, pixel))[..., None]
    rim = np.maximum(np.abs(lens) - 0.02 * s, np.abs(x - ex) - lens_w - 0.02 * s)
    canvas = _over(canvas, rim_color, glasses * _cover(rim, pixel))
  (left_x, left_sq), (right_x, right_sq) = eye_centres
  bridge = np.maximum(np.abs(y - eye_y + 0.02 * s) - 0.015 * s,
                      np.maximum(left_x + 0.13 * s * left_sq - x, x - (right_x - 0.13 * s * right_sq)))
  canvas = _over(canvas, rim_color, glasses * _cover(bridge, pixel))
  canvas, x, y = full_canvas, full_x, full_y

  # Hair cap over the forehead: inside a slightly larger ellipse and above a hairline dipping at the temples.
  sub, bx, by = region("cap")
  hairline = cy - 0.42 * ry + 0.3 * ry * ((bx - cx - 0.15 * rx * np.sin(turn)) / rx) ** 2
  cap = np.maximum(_ellipse(bx, by, cx, cy - 0.05 * s, rx * 1.06, ry * 1.03), by - hairline)
  _over(sub, hair * lambert(bx, by, cx, cy - 0.05 * s, rx * 1.06, ry * 1.03, 0.45), _cover(cap, pixel))

  return np.clip(canvas, 0.0, 1.0)


def _render_factors(factors: dict[str, np.ndarray], resolution: int) -> np.ndarray:
  num = len(factors["smile"])
  images = np.empty((num, resolution, resolution, 3), np.uint8)

  def draw_chunk(begin: int) -> None:
    chunk = {k: v[begin:begin + _CHUNK] for k, v in factors.items()}
    images[begin:begin + _CHUNK] = np.rint(_draw(chunk, resolution) * 255.0).astype(np.uint8)

  starts = range(0, num, _CHUNK)
  if len(starts) > 1 and _THREADS > 1:
    # numpy releases the GIL inside its array loops, so chunks render in parallel; output is unchanged.
    with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
      list(pool.map(draw_chunk, starts))
  else:
    for begin in starts:
      draw_chunk(begin)
  return images


def render(num: int, resolution: int, seed: int, start: int = 0
           ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Renders images start..start+num-1 -> (uint8 [num, R, R, 3], {attribute: float32 [num]})."""
  _check_resolution(resolution)
  factors = _factors(_uniforms(num, seed, start))
  return _render_factors(factors, resolution), {name: factors[name] for name in ATTRIBUTES}


def render_one(index: int, resolution: int, seed: int) -> tuple[np.ndarray, dict[str, float]]:
  """Image `index` alone -> (uint8 [R, R, 3], {attribute: float}); equal to render(...)[index]."""
  images, labels = render(1, resolution, seed, start=index)
  return images[0], {name: float(value[0]) for name, value in labels.items()}


def render_with(attrs: Mapping[str, Sequence[float] | np.ndarray | float], resolution: int, seed: int,
                indices: Sequence[int] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Renders faces with some attributes set explicitly; everything else comes from (seed, index).

  `attrs` maps attribute names to scalars or [N] arrays. `indices` (default 0..N-1) picks which face each row
  is, so `render_with({'smile': [0, 1]}, 64, seed, indices=[7, 7])` is face 7 with a straight mouth and a smile.
  """
  _check_resolution(resolution)
  unknown = sorted(set(attrs) - set(ATTRIBUTES))
  if unknown:
    raise ValueError(f"unknown synthetic face attributes {unknown}; use names from {sorted(ATTRIBUTES)}")
  lengths = {len(np.atleast_1d(v)) for v in attrs.values()} - {1}
  if indices is not None:
    lengths.add(len(indices))
  if len(lengths) > 1:
    raise ValueError(f"render_with: attribute arrays and indices have different lengths {sorted(lengths)}; "
                     "give them all the same length N (or scalars)")
  num = lengths.pop() if lengths else 1
  factors = _factors(_uniforms(num, seed, indices=list(range(num)) if indices is None else indices))
  for name, value in attrs.items():
    attr = ATTRIBUTES[name]
    value = np.broadcast_to(np.asarray(value, np.float32), (num,))
    factors[name] = np.clip(value, attr.low, attr.high).astype(np.float32)
  return _render_factors(factors, resolution), {name: factors[name] for name in ATTRIBUTES}
