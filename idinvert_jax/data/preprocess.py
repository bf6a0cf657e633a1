"""Decoding and preprocessing of single images: any file PIL reads -> RGB uint8 -> model resolution -> [-1, 1].

Steps, in order (`load_image` runs all of them):
1. Decode with PIL and apply the EXIF orientation tag (`ImageOps.exif_transpose`), so phone photos stand upright.
2. Convert to 8-bit RGB (`to_rgb`): grayscale, palette and CMYK are converted; images with an alpha channel
   (LA, RGBA, PA, palette transparency) are composited on a solid background (white by default); 16-bit
   grayscale (`I;16`, `I`) is scaled with round(v / 257) so 65535 -> 255. 48-bit RGB PNGs are reduced by PIL
   itself to their high byte (floor(v / 256)), which is within 1 of the exact scaling.
3. Resize to `resolution x resolution` (`resize_image`):
   - 'resize' (the inversion default, as in the official `invert.py`): the whole image is resized to a square;
     non-square images are stretched, exactly like the official code.
   - 'center_crop' (the training default): the central square of side min(H, W) is cut out first, so faces
     keep their aspect ratio.
   Resampling is Lanczos by default ('area' = area averaging: the exact block mean for integer shrink factors,
   PIL BOX otherwise; 'bilinear' and 'bicubic' also available).
   The official code uses cv2 INTER_LINEAR, which does not low-pass when shrinking; Lanczos/area avoid aliasing
   and differ from it by a few grey levels on smooth images.
4. `to_float`: uint8 -> float32 in [-1, 1] via x / 127.5 - 1 (NHWC, RGB).

Every failure a user can cause is an `ImageError` (a ValueError) whose one-line message names the file, the
reason and the fix.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
RESIZE_MODES = ("resize", "center_crop")
RESAMPLING = {
    "lanczos": Image.Resampling.LANCZOS,
    "area": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
WHITE = (255, 255, 255)


class ImageError(ValueError):
  """An image that cannot be used; the message is `<path>: <reason>; <fix>`."""

  def __init__(self, path: str | os.PathLike, reason: str, fix: str = ""):
    self.path = str(path)
    self.reason = reason
    super().__init__(f"{path}: {reason}" + (f"; {fix}" if fix else ""))


def default_min_size(resolution: int, min_size_fraction: float = 0.25) -> int:
  """Smallest accepted image side: images far smaller than the model would only be blurry upsamples."""
  return max(1, int(round(resolution * min_size_fraction)))


def decode_image(source: str | os.PathLike | bytes, name: str | None = None) -> Image.Image:
  """Opens and fully decodes an image (path or encoded bytes), applying its EXIF orientation.

  Raises ImageError for missing, empty, truncated or non-image files.
  """
  name = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
  if isinstance(source, bytes):
    if not source:
      raise ImageError(name, "empty image data (0 bytes)", "re-export or remove it")
    stream = io.BytesIO(source)
  else:
    path = Path(source)
    if not path.is_file():
      raise ImageError(name, "file not found", "check the path")
    if path.stat().st_size == 0:
      raise ImageError(name, "empty file (0 bytes)", "re-copy the image or remove it")
    stream = path
  try:
    with Image.open(stream) as image:
      image.load()  # Decode now so truncated files fail here, not later.
      return ImageOps.exif_transpose(image)
  except UnidentifiedImageError:
    raise ImageError(name, "not an image PIL can read", f"use one of {', '.join(IMAGE_SUFFIXES)} or remove it"
                     ) from None
  except Image.DecompressionBombError as e:
    raise ImageError(name, f"image too large to decode safely ({e})", "downscale it first") from None
  except (OSError, SyntaxError, ValueError) as e:
    raise ImageError(name, f"corrupt or truncated image ({e})", "re-export or remove it") from None


def _composite(rgba: Image.Image, background: Sequence[int]) -> Image.Image:
  """Alpha-composites an RGBA image on a solid background colour."""
  base = Image.new("RGBA", rgba.size, tuple(int(c) for c in background) + (255,))
  return Image.alpha_composite(base, rgba).convert("RGB")


def to_rgb(image: Image.Image, background: Sequence[int] = WHITE) -> np.ndarray:
  """Converts any PIL image to uint8 RGB [H, W, 3] (see the module docstring for the rules)."""
  mode = image.mode
  if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
    # 16-bit grayscale (PNG, TIFF): map 0..65535 linearly onto 0..255.
    values = np.asarray(image).astype(np.float64)
    gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if mode == "F":
    values = np.asarray(image, dtype=np.float64)
    scale = 255.0 if values.size and values.max() <= 1.0 else 1.0  # [0, 1] floats vs 0..255 floats.
    gray = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB")
                                                           and "transparency" in image.info)
  if has_alpha:
    image = _composite(image.convert("RGBA"), background)
  elif mode != "RGB":
    image = image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV.
  return np.asarray(image, dtype=np.uint8).copy()


def resize_image(image: np.ndarray, resolution: int, mode: str = "resize", resample: str = "lanczos") -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [resolution, resolution, 3] by plain resize or centre crop + resize."""
  if mode not in RESIZE_MODES:
    raise ValueError(f"resize mode {mode!r} is unknown; use one of {RESIZE_MODES}")
  if resample not in RESAMPLING:
    raise ValueError(f"resampling {resample!r} is unknown; use one of {tuple(RESAMPLING)}")
  height, width = image.shape[:2]
  if mode == "center_crop" and height != width:
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image = image[top:top + side, left:left + side]
  if image.shape[:2] == (resolution, resolution):
    return np.ascontiguousarray(image)
  height, width = image.shape[:2]
  if resample == "area" and height % resolution == 0 and width % resolution == 0:
    # Integer shrink: the exact block mean (PIL's fixed-point BOX filter is up to 1 level off).
    fy, fx = height // resolution, width // resolution
    blocks = image.astype(np.float32).reshape(resolution, fy, resolution, fx, -1).mean(axis=(1, 3))
    return np.clip(np.rint(blocks), 0, 255).astype(np.uint8)
  resized = Image.fromarray(np.ascontiguousarray(image)).resize((resolution, resolution), RESAMPLING[resample])
  return np.asarray(resized, dtype=np.uint8)


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 image(s) -> float32 in [-1, 1] (x / 127.5 - 1)."""
  return np.asarray(images, dtype=np.float32) / 127.5 - 1.0


def check_size(image: np.ndarray, name: str, min_size: int) -> None:
  """Raises ImageError if the image is far smaller than the model resolution."""
  height, width = image.shape[:2]
  if min(height, width) < min_size:
    raise ImageError(name, f"too small ({width}x{height} px, need at least {min_size} px per side)",
                     "use a larger image or lower data.min_size_fraction")


def prepare_uint8(image: np.ndarray, name: str, resolution: int, resize: str = "resize",
                  resample: str = "lanczos", min_size: int | None = None) -> np.ndarray:
  """uint8 RGB of any size -> uint8 [resolution, resolution, 3], rejecting far-too-small images."""
  check_size(image, name, default_min_size(resolution) if min_size is None else min_size)
  return resize_image(image, resolution, resize, resample)


def read_rgb(path: str | os.PathLike, background: Sequence[int] = WHITE) -> np.ndarray:
  """Decodes an image file to uint8 RGB [H, W, 3] at its own size."""
  return to_rgb(decode_image(path), background)


def load_image(path: str | os.PathLike, resolution: int, resize: str = "resize", *, resample: str = "lanczos",
               background: Sequence[int] = WHITE, min_size: int | None = None) -> np.ndarray:
  """Reads one image file -> float32 [resolution, resolution, 3] in [-1, 1].

  `resize='resize'` (default) matches the official inversion; use 'center_crop' to keep the aspect ratio.
  Raises ImageError (ValueError) naming the path, the reason and the fix.
  """
  rgb = read_rgb(path, background)
  return to_float(prepare_uint8(rgb, str(path), resolution, resize, resample, min_size))


def load_images(paths: Sequence[str | os.PathLike], resolution: int, resize: str = "resize", **kwargs
                ) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
  """Loads a small batch of images, skipping bad ones.

  Returns (names, images float32 [N, R, R, 3] in [-1, 1], failures [(path, message)]). `names` are the file
  stems of the loaded images in input order, made unique (a/x.png, b/x.png -> x, x_2) so outputs named after
  them never overwrite each other.
  """
  names, images, failures, used = [], [], [], set()
  for path in paths:
    try:
      images.append(load_image(path, resolution, resize, **kwargs))
    except ImageError as e:
      failures.append((str(path), str(e)))
      continue
    name, copy = Path(path).stem, 1
    while name in used:
      copy += 1
      name = f"{Path(path).stem}_{copy}"
    used.add(name)
    names.append(name)
  array = np.stack(images) if images else np.zeros((0, resolution, resolution, 3), np.float32)
  return names, array, failures
