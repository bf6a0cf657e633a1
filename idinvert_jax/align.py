r"""Face alignment the FFHQ way: 68 landmarks -> oriented square around eyes and mouth -> crop/pad -> resize.

  python -m idinvert_jax.align photo.jpg more_photos/ --output aligned/            # every face, 256 px
  python -m idinvert_jax.align group.jpg --output aligned/ --largest_face --size 64

The StyleGAN models (FFHQ, and the official idinvert encoders) were trained on faces cropped by the FFHQ
dataset's alignment recipe (NVlabs/ffhq-dataset, `recreate_aligned_images`); a web photo inverted without that
crop lands far from the training faces and comes back poor. The recipe, as implemented here (`ffhq_quad`,
`align_face`):

1. landmarks: dlib's frontal-face detector and its 68-point shape predictor
   (`shape_predictor_68_face_landmarks.dat`, the predictor FFHQ used), from the registry packages `dlib-bin`
   and `face-recognition-models`; nothing is downloaded at run time (`pip install -e .[align]`).
2. eye centres = means of the six points of each eye (36-41, 42-47); mouth corners = points 48 and 54.
3. oriented square: x axis along eye_to_eye minus eye_to_mouth turned by 90 degrees, half side
   max(2.0 * |eye_to_eye|, 1.8 * |eye_to_mouth|), centre eye_avg + 0.1 * eye_to_mouth; y axis = x turned by 90.
4. when the square is much larger than the output, the photo is first shrunk by an integer factor (Lanczos);
   then cropped to the square plus a 10 % border; where the square leaves the photo it is padded by reflection,
   blurred towards the edge and faded to the median colour (FFHQ's "blur-padding").
5. the square is sampled to `transform_size` px (bilinear quad transform) and Lanczos-resized to `output_size`.

Where FFHQ puts the eyes: the eye midpoint goes to (N/2, N/2 - 0.1 * |eye_to_mouth| * N / (2 * half side)) and
the eyes lie on one horizontal line; for a frontal face whose eyes are further apart than 0.9x the eye-to-mouth
distance (most adults) the eye centres land at x = 0.375 N and 0.625 N (`aligned_landmarks` maps any landmark).

Several faces in one photo: all of them (largest first, `<stem>_face<k>.png`) or only the largest
(`--largest_face`, `<stem>.png`); a photo with no face is named and skipped. `alignment.json` in the output folder
records, per written file, its source, the face box, the 68 landmarks and the quad.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

INSTALL_HINT = "pip install -e .[align]"
LANDMARK_MODEL = "shape_predictor_68_face_landmarks.dat"
DEFAULT_SIZE = 256
# Faces are detected on a copy whose longer side is at most this (dlib's HOG detector with one upsampling step
# finds faces down to ~40 px at this size in ~0.3 s); landmarks are then predicted on the full-size photo.
DETECT_MAX_SIDE = 1024
# Detector scores below this are dropped: dlib's default (0) let a mission patch in skimage's astronaut()
# through as a face (score 0.12); the real faces of the test photos score 1.1-1.5.
MIN_DETECTION_SCORE = 0.3
ALIGNMENT_FILE = "alignment.json"


class AlignError(ValueError):
  """A user-fixable alignment problem (missing extra, unreadable image)."""


class AlignUnavailable(AlignError):
  """dlib or its landmark model is not installed."""


@dataclasses.dataclass(frozen=True)
class Face:
  """One detected face: its detector box (left, top, right, bottom) and 68 landmarks [68, 2] as (x, y) pixels."""
  box: tuple[int, int, int, int]
  landmarks: np.ndarray

  @property
  def area(self) -> int:
    left, top, right, bottom = self.box
    return max(0, right - left) * max(0, bottom - top)


# ----------------------------------------------------------------------------------------------------------
# Landmarks (dlib).


def landmark_model_path() -> Path:
  """The 68-point model inside the face-recognition-models package (its __init__ is not run: it needs
  pkg_resources, which recent setuptools no longer ships)."""
  spec = importlib.util.find_spec("face_recognition_models")
  if spec is None or not spec.submodule_search_locations:
    raise AlignUnavailable(f"face alignment needs the 68-point landmark model from the face-recognition-models "
                           f"package; install it with `{INSTALL_HINT}`")
  path = Path(list(spec.submodule_search_locations)[0]) / "models" / LANDMARK_MODEL
  if not path.is_file():
    raise AlignUnavailable(f"{path} is missing (a broken face-recognition-models install); reinstall with "
                           f"`{INSTALL_HINT}`")
  return path


def available() -> bool:
  """Whether alignment can run here (dlib importable and the landmark model installed)."""
  try:
    _detector_and_predictor()
  except AlignUnavailable:
    return False
  return True


@functools.lru_cache(maxsize=1)
def _detector_and_predictor():
  try:
    import dlib  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise AlignUnavailable(f"face alignment needs dlib (the dlib-bin package) and its landmark model; install "
                           f"them with `{INSTALL_HINT}`") from None
  return dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(str(landmark_model_path()))


def detect_faces(rgb: np.ndarray, min_score: float = MIN_DETECTION_SCORE) -> list[Face]:
  """Faces in a uint8 RGB photo [H, W, 3] whose detector score is >= `min_score`, largest first ([]: none)."""
  dlib, detector, predictor = _detector_and_predictor()
  rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
  height, width = rgb.shape[:2]
  scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
  small = rgb if scale == 1.0 else np.asarray(
      Image.fromarray(rgb).resize((max(1, round(width * scale)), max(1, round(height * scale))),
                                  Image.Resampling.LANCZOS))
  faces = []
  rects, _, _ = detector.run(small, 1, min_score)  # One upsampling step: finds faces down to ~40 px.
  for rect in rects:
    box = tuple(int(round(v / scale)) for v in (rect.left(), rect.top(), rect.right(), rect.bottom()))
    shape = predictor(rgb, dlib.rectangle(*box))
    points = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
    faces.append(Face(box=box, landmarks=points))
  return sorted(faces, key=lambda f: -f.area)


# ----------------------------------------------------------------------------------------------------------
# The FFHQ recipe.


def eye_and_mouth_points(landmarks: np.ndarray) -> dict[str, np.ndarray]:
  """Eye centres (means of points 36-41 and 42-47) and mouth corners (48, 54) of 68 (x, y) landmarks."""
  landmarks = np.asarray(landmarks, np.float64)
  if landmarks.shape != (68, 2):
    raise AlignError(f"align: landmarks have shape {landmarks.shape}; expected the 68-point layout [68, 2]")
  return {"eye_left": landmarks[36:42].mean(axis=0), "eye_right": landmarks[42:48].mean(axis=0),
          "mouth_left": landmarks[48], "mouth_right": landmarks[54]}


def ffhq_quad(landmarks: np.ndarray, zoom: float = 1.0) -> tuple[np.ndarray, float]:
  """FFHQ's oriented crop square: corners [4, 2] (top-left, bottom-left, bottom-right, top-right) and side.

  zoom < 1 shrinks the square about the same centre: a tighter crop, for models trained on tightly cropped faces
  (the shared CelebA-64 crops frame about zoom 0.8).
  """
  p = eye_and_mouth_points(landmarks)
  eye_avg = (p["eye_left"] + p["eye_right"]) / 2
  eye_to_eye = p["eye_right"] - p["eye_left"]
  eye_to_mouth = (p["mouth_left"] + p["mouth_right"]) / 2 - eye_avg
  # x: the eye line blended with the mouth direction turned by -90 degrees, so a tilted mouth also levels it.
  x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
  x = x / np.hypot(*x) * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8) * zoom
  y = np.array([-x[1], x[0]])  # x turned by +90 degrees (image y points down).
  centre = eye_avg + eye_to_mouth * 0.1
  quad = np.stack([centre - x - y, centre - x + y, centre + x + y, centre + x - y])
  return quad, float(np.hypot(*x) * 2)


def aligned_landmarks(landmarks: np.ndarray, points: np.ndarray, output_size: int) -> np.ndarray:
  """Where `points` [K, 2] of the photo land in the aligned `output_size` crop (pixel-index coordinates)."""
  quad, side = ffhq_quad(landmarks)
  x_axis = (quad[3] - quad[0]) / side  # Unit vectors of the square.
  y_axis = (quad[1] - quad[0]) / side
  rel = np.asarray(points, np.float64) - quad[0]
  # Quad corners are pixel-index coordinates like the landmarks; output pixel i covers [i, i + 1) / N.
  return np.stack([rel @ x_axis, rel @ y_axis], axis=-1) / side * output_size - 0.5


def aligned_eyes(landmarks: np.ndarray, output_size: int) -> np.ndarray:
  """FFHQ's target positions [2, 2] of the (left, right) eye centres in the aligned crop."""
  p = eye_and_mouth_points(landmarks)
  return aligned_landmarks(landmarks, np.stack([p["eye_left"], p["eye_right"]]), output_size)


def _blur_pad(image: np.ndarray, pad: tuple[int, int, int, int], side: float) -> np.ndarray:
  """Reflect-pads float [H, W, 3] by (left, top, right, bottom), blurring and fading the new border (FFHQ)."""
  import scipy.ndimage  # pylint: disable=import-outside-toplevel
  left, top, right, bottom = pad
  image = np.pad(image, ((top, bottom), (left, right), (0, 0)), mode="reflect")
  height, width = image.shape[:2]
  yy, xx = np.ogrid[:height, :width]
  with np.errstate(divide="ignore", invalid="ignore"):  # A zero pad on one side means "no fade" there.
    fx = np.minimum(xx.astype(np.float32) / left if left else np.inf,
                    (width - 1 - xx).astype(np.float32) / right if right else np.inf)
    fy = np.minimum(yy.astype(np.float32) / top if top else np.inf,
                    (height - 1 - yy).astype(np.float32) / bottom if bottom else np.inf)
  mask = np.maximum(1.0 - fx, 1.0 - fy)[..., None]  # 1 at the outer edge, <= 0 inside the photo.
  blur = side * 0.02
  image = image + (scipy.ndimage.gaussian_filter(image, [blur, blur, 0]) - image) * np.clip(mask * 3 + 1, 0, 1)
  image = image + (np.median(image, axis=(0, 1)) - image) * np.clip(mask, 0, 1)
  return image


def align_face(rgb: np.ndarray, landmarks: np.ndarray, output_size: int = DEFAULT_SIZE,
               transform_size: int | None = None, enable_padding: bool = True, zoom: float = 1.0) -> np.ndarray:
  """Crops one face out of a uint8 RGB photo the FFHQ way -> uint8 [output_size, output_size, 3].

  Args:
    rgb: the photo, uint8 [H, W, 3].
    landmarks: its 68 (x, y) landmarks (`detect_faces`).
    output_size: side of the result.
    transform_size: side of the intermediate quad sampling (default 4x the output, as FFHQ's 4096 -> 1024).
    enable_padding: blur-pad where the square leaves the photo (else the outside is black).
    zoom: scale of the crop square (1 = FFHQ's; see `ffhq_quad`).
  """
  transform_size = transform_size or 4 * output_size
  image = Image.fromarray(np.ascontiguousarray(rgb, np.uint8))
  quad, side = ffhq_quad(landmarks, zoom)

  shrink = int(np.floor(side / output_size * 0.5))  # Integer pre-shrink of much larger photos (anti-aliasing).
  if shrink > 1:
    image = image.resize((int(np.rint(image.width / shrink)), int(np.rint(image.height / shrink))),
                         Image.Resampling.LANCZOS)
    quad, side = quad / shrink, side / shrink

  border = max(int(np.rint(side * 0.1)), 3)
  lo, hi = np.floor(quad.min(axis=0)).astype(int), np.ceil(quad.max(axis=0)).astype(int)
  crop = (max(lo[0] - border, 0), max(lo[1] - border, 0), min(hi[0] + border, image.width),
          min(hi[1] + border, image.height))
  if crop[2] - crop[0] < image.width or crop[3] - crop[1] < image.height:
    image = image.crop(crop)
    quad = quad - crop[:2]

  lo, hi = np.floor(quad.min(axis=0)).astype(int), np.ceil(quad.max(axis=0)).astype(int)
  pad = (max(-lo[0] + border, 0), max(-lo[1] + border, 0), max(hi[0] - image.width + border, 0),
         max(hi[1] - image.height + border, 0))
  if enable_padding and max(pad) > border - 4:
    pad = tuple(int(v) for v in np.maximum(pad, int(np.rint(side * 0.3))))
    padded = _blur_pad(np.asarray(image, np.float32), pad, side)
    image = Image.fromarray(np.uint8(np.clip(np.rint(padded), 0, 255)), "RGB")
    quad = quad + pad[:2]

  # PIL's quad corners are continuous coordinates (pixel i spans [i, i + 1)): +0.5 from pixel indices.
  image = image.transform((transform_size, transform_size), Image.Transform.QUAD, tuple((quad + 0.5).flatten()),
                          Image.Resampling.BILINEAR)
  if output_size < transform_size:
    image = image.resize((output_size, output_size), Image.Resampling.LANCZOS)
  return np.asarray(image, np.uint8)


# ----------------------------------------------------------------------------------------------------------
# Photos and files.


@dataclasses.dataclass
class AlignedFace:
  source: str
  index: int              # 0 = the largest face of the photo
  face: Face
  image: np.ndarray       # uint8 [size, size, 3]


def align_image(rgb: np.ndarray, output_size: int = DEFAULT_SIZE, largest_only: bool = False,
                source: str = "<image>", zoom: float = 1.0) -> list[AlignedFace]:
  """Every face of a uint8 RGB photo aligned (largest first), or only the largest; [] when there is none."""
  faces = detect_faces(rgb)
  if largest_only:
    faces = faces[:1]
  return [AlignedFace(source, k, face, align_face(rgb, face.landmarks, output_size, zoom=zoom))
          for k, face in enumerate(faces)]


def output_stems(stem: str, count: int, largest_only: bool) -> list[str]:
  """File stems for a photo's aligned faces: `stem` for one face, `stem_face<k>` when several are kept."""
  if largest_only or count == 1:
    return [stem][:count]
  return [f"{stem}_face{k}" for k in range(count)]


@dataclasses.dataclass
class AlignSummary:
  written: list[Path]                 # aligned PNGs, input order, largest face first per photo
  sources: list[str]                  # the photo of each written file
  no_face: list[str]                  # photos in which no face was found
  failed: list[tuple[str, str]]       # (photo, reason) for unreadable photos


def align_files(inputs: Sequence[str | Path], output: str | Path, output_size: int = DEFAULT_SIZE,
                largest_only: bool = False, progress: bool = True) -> AlignSummary:
  """Aligns every face of every photo under `inputs` (files, folders, .txt lists) into `output`/*.png."""
  from idinvert_jax import data, files  # pylint: disable=import-outside-toplevel
  from idinvert_jax.data import preprocess  # pylint: disable=import-outside-toplevel
  _detector_and_predictor()  # Missing extra: fail before reading anything.
  output = Path(output)
  paths = [Path(p) for p in data.expand_inputs(list(inputs))]
  stems = _unique_stems(paths)
  summary = AlignSummary([], [], [], [])
  records = []
  iterator = paths
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
    iterator = tqdm(paths, desc="align", leave=False)
  for path, stem in zip(iterator, stems):
    try:
      rgb = preprocess.read_rgb(path)
    except (preprocess.ImageError, OSError) as e:
      summary.failed.append((str(path), str(e).splitlines()[0]))
      continue
    aligned = align_image(rgb, output_size, largest_only, source=str(path))
    if not aligned:
      summary.no_face.append(str(path))
      continue
    for item, name in zip(aligned, output_stems(stem, len(aligned), largest_only)):
      written = files.atomic_save_png(output / f"{name}.png", item.image)
      quad, _ = ffhq_quad(item.face.landmarks)
      records.append({"file": written.name, "source": str(path.resolve()), "face_index": item.index,
                      "box": list(item.face.box), "landmarks": item.face.landmarks.round(2).tolist(),
                      "quad": quad.round(3).tolist(), "size": output_size})
      summary.written.append(written)
      summary.sources.append(str(path))
  if records:
    files.atomic_write_json(output / ALIGNMENT_FILE, {"recipe": "FFHQ (NVlabs/ffhq-dataset)", "faces": records})
  return summary


def _unique_stems(paths: Sequence[Path]) -> list[str]:
  seen: dict[str, int] = {}
  stems = []
  for path in paths:
    count = seen.get(path.stem, 0) + 1
    seen[path.stem] = count
    stems.append(path.stem if count == 1 else f"{path.stem}_{count}")
  return stems


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m idinvert_jax.align", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("images", nargs="+", help="Photos: image files, folders of images (recursive) or .txt lists.")
  parser.add_argument("--output", required=True, help="Folder for the aligned PNGs and alignment.json.")
  parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                      help=f"Side of the aligned images in px (default {DEFAULT_SIZE}; FFHQ itself is 1024; "
                           "invert.py --align uses the model's resolution).")
  parser.add_argument("--largest_face", action="store_true",
                      help="Keep only the largest face of each photo (default: every face, <stem>_face<k>.png).")
  parser.add_argument("--no_progress", action="store_true", help="No progress bar.")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  if args.size < 8:
    raise SystemExit(f"align: --size {args.size} is too small; use 8 or more (e.g. the model's resolution).")
  try:
    summary = align_files(args.images, args.output, args.size, args.largest_face, progress=not args.no_progress)
  except (ValueError, FileNotFoundError) as e:  # User-fixable: one line, no traceback.
    raise SystemExit(f"align: error: {e}") from None
  for path in summary.no_face:
    print(f"no face found in {path}: skipped")
  for path, reason in summary.failed:
    print(f"FAILED {path}: {reason}")
  print(f"{len(summary.written)} aligned face(s) from {len(set(summary.sources))} photo(s) written to "
        f"{args.output} ({len(summary.no_face)} without a face, {len(summary.failed)} unreadable).")
  return 0 if summary.written else 1


if __name__ == "__main__":
  sys.exit(main())
