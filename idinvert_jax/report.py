"""Report output: labelled PNG image grids and self-contained static HTML pages.

Images come in with the project's conventions: float arrays are taken as [-1, 1], uint8 as is. Everything is
written atomically through `idinvert_jax.files`, so a report folder never holds a half-written file.
"""
from __future__ import annotations

import dataclasses
import html
import math
import os
import re
import urllib.parse
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from idinvert_jax import files

# Space (pixels) between a label and the grid cells, and around the label text.
_LABEL_MARGIN = 4
# Label text size in px (PIL's built-in scalable font; its default of 10 px is hard to read).
LABEL_FONT_SIZE = 12
# HTML display of small pictures: an image is enlarged by an integer factor (at most MAX_DISPLAY_SCALE, nearest
# neighbour so pixels stay sharp) until its tiles reach MIN_DISPLAY_TILE px, without exceeding MAX_DISPLAY_WIDTH x
# MAX_DISPLAY_HEIGHT. A grid's tile is its cell size (save_grid records it in the PNG as GRID_TILE_KEY); any other
# image is one tile.
MIN_DISPLAY_TILE = 256
MAX_DISPLAY_SCALE = 4
MAX_DISPLAY_WIDTH = 1800
MAX_DISPLAY_HEIGHT = 1400
GRID_TILE_KEY = "idinvert_grid_tile"


def _as_uint8_rgb(image: np.ndarray, where: str) -> np.ndarray:
  """One cell -> uint8 HxWx3 (float taken as [-1, 1]; gray HW / HW1 broadcast to RGB)."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    if not np.issubdtype(image.dtype, np.floating):
      raise ValueError(f"image_grid: cell {where} has dtype {image.dtype}; pass uint8 or float in [-1, 1].")
    image = files.to_uint8(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f"image_grid: cell {where} has shape {image.shape}; expected HxWx3 (or HxW / HxWx1).")
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return image


def _normalise_rows(rows) -> list[list[np.ndarray]]:
  """Accepts a [R, C, H, W, 3] array or a (possibly ragged) list of rows of images."""
  if isinstance(rows, np.ndarray) or hasattr(rows, "__array__") and not isinstance(rows, (list, tuple)):
    array = np.asarray(rows)
    if array.ndim not in (4, 5):
      raise ValueError(f"image_grid: array input has shape {array.shape}; expected [R, C, H, W, 3].")
    rows = [list(row) for row in array]
  out = []
  for r, row in enumerate(rows):
    out.append([_as_uint8_rgb(cell, f"[{r}][{c}]") for c, cell in enumerate(row)])
  if not out or not any(out):
    raise ValueError("image_grid: no images given; pass at least one row with one image.")
  return out


def _font():
  try:
    return ImageFont.load_default(size=LABEL_FONT_SIZE)
  except TypeError:  # Pillow < 10.1: fixed bitmap font only.
    return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
  left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font)
  return int(np.ceil(right - min(left, 0))), int(np.ceil(bottom - min(top, 0)))


def wrap_label(text: str, width: int, draw: ImageDraw.ImageDraw, font) -> str:
  """`text` broken into lines no wider than `width` px: after spaces, '_', '-', '/' where possible, else anywhere.

  Column headers such as 'content face_12345_000' above 64-px cells would otherwise run into each other.
  """
  lines, line = [], ""
  for piece in re.findall(r"[^ _\-/]*[ _\-/]?", str(text)):
    if not piece:
      continue
    if _text_size(draw, (line + piece).rstrip(), font)[0] <= width or not line:
      line += piece
    else:
      lines.append(line.rstrip())
      line = piece
    while _text_size(draw, line.rstrip(), font)[0] > width and len(line) > 1:  # One piece wider than a cell.
      cut = len(line) - 1
      while cut > 1 and _text_size(draw, line[:cut], font)[0] > width:
        cut -= 1
      lines.append(line[:cut])
      line = line[cut:]
  if line.strip():
    lines.append(line.rstrip())
  return "\n".join(lines)


def image_grid(rows: list[list[np.ndarray]] | np.ndarray,
               pad: int = 2,
               pad_value: int = 255,
               row_labels: Sequence[str] | None = None,
               col_labels: Sequence[str] | None = None) -> np.ndarray:
  """Tiles images into one uint8 HxWx3 grid.

  Args:
    rows: list of rows of HxWx3 images (rows may be ragged; missing cells are filled with `pad_value`), or an
      array [R, C, H, W, 3]. Float images are taken as [-1, 1], uint8 as is. All cells share one HxW.
    pad: pixels between cells and around the border.
    pad_value: gray level of padding and label margins (0..255).
    row_labels: optional one label per row, drawn left of the row (PIL's default font).
    col_labels: optional one label per column, drawn above the column; labels wider than a cell are wrapped
      onto several lines (`wrap_label`) so neighbouring headers never overlap.

  Returns:
    uint8 array [H_total, W_total, 3]. Without labels, H_total = R*H + (R+1)*pad and likewise for width.
  """
  if pad < 0 or not 0 <= pad_value <= 255:
    raise ValueError(f"image_grid: pad={pad}, pad_value={pad_value}; need pad >= 0 and 0 <= pad_value <= 255.")
  cells = _normalise_rows(rows)
  num_rows = len(cells)
  num_cols = max(len(row) for row in cells)
  sizes = {cell.shape[:2] for row in cells for cell in row}
  if len(sizes) != 1:
    raise ValueError(f"image_grid: cells have different sizes {sorted(sizes)}; resize them to one HxW first.")
  (h, w), = sizes
  if row_labels is not None and len(row_labels) != num_rows:
    raise ValueError(f"image_grid: {len(row_labels)} row_labels for {num_rows} rows; pass one per row.")
  if col_labels is not None and len(col_labels) != num_cols:
    raise ValueError(f"image_grid: {len(col_labels)} col_labels for {num_cols} columns; pass one per column.")

  font = _font()
  measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  left = top = 0
  if row_labels is not None:
    left = max(_text_size(measure, str(t), font)[0] for t in row_labels) + 2 * _LABEL_MARGIN
  if col_labels is not None:
    col_labels = [wrap_label(str(t), w, measure, font) for t in col_labels]
    top = max(_text_size(measure, t, font)[1] for t in col_labels) + 2 * _LABEL_MARGIN

  grid_h = top + num_rows * h + (num_rows + 1) * pad
  grid_w = left + num_cols * w + (num_cols + 1) * pad
  grid = np.full((grid_h, grid_w, 3), pad_value, dtype=np.uint8)
  for r, row in enumerate(cells):
    y = top + pad + r * (h + pad)
    for c, cell in enumerate(row):
      x = left + pad + c * (w + pad)
      grid[y:y + h, x:x + w] = cell

  if row_labels is None and col_labels is None:
    return grid
  canvas = Image.fromarray(grid)
  draw = ImageDraw.Draw(canvas)
  ink = (0, 0, 0) if pad_value >= 128 else (255, 255, 255)  # Readable on the margin colour.
  for r, text in enumerate(row_labels or ()):
    tw, th = _text_size(draw, str(text), font)
    y = top + pad + r * (h + pad) + max(0, (h - th) // 2)
    draw.multiline_text((_LABEL_MARGIN, y), str(text), fill=ink, font=font)
  for c, text in enumerate(col_labels or ()):
    tw, th = _text_size(draw, str(text), font)
    x = left + pad + c * (w + pad) + (w - tw) // 2  # Centred; a wrapped label is at most w wide.
    draw.multiline_text((x, _LABEL_MARGIN), str(text), fill=ink, font=font, align="center")
  return np.asarray(canvas, dtype=np.uint8)


def save_grid(path: str | os.PathLike, rows, **kwargs) -> Path:
  """`image_grid(rows, **kwargs)` written atomically as a PNG at `path` (cell size recorded); returns the path."""
  tile = min(_normalise_rows(rows)[0][0].shape[:2])
  return files.atomic_save_png(path, image_grid(rows, **kwargs), text={GRID_TILE_KEY: str(tile)})


@dataclasses.dataclass
class Section:
  """One section of an HTML report.

  Attributes:
    heading: section title.
    text: plain text (escaped; blank lines separate paragraphs).
    images: (relative_path, caption) pairs; paths are relative to the HTML file's folder.
    table: optional (header, rows): header is a list of column names, rows a list of lists of cells.
    warning: show the text as a warning (highlighted box), e.g. an image outside the model's domain.
  """
  heading: str
  text: str = ""
  images: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  table: tuple[Sequence[str], Sequence[Sequence[object]]] | None = None
  warning: bool = False


_STYLE = """
body { font-family: sans-serif; margin: 2em; }
h1, h2, p, table { max-width: 1200px; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure { max-width: 100%; overflow-x: auto; }
figure img { image-rendering: pixelated; }
p.warning { background: #fff3cd; border: 1px solid #e0b000; padding: 0.4em 0.7em; }
figcaption { font-size: 0.9em; color: #444; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th { background: #eee; }
"""


def _relative_link(path: str) -> str:
  """Escaped, URL-quoted relative link; absolute paths and URLs are refused (the page must stay portable)."""
  path = str(path).replace(os.sep, "/")
  if (urllib.parse.urlsplit(path).scheme or path.startswith("/") or os.path.isabs(path)):
    raise ValueError(f"write_html: image path {path!r} is absolute; pass it relative to the HTML file's folder.")
  return html.escape(urllib.parse.quote(path), quote=True)


def _format_cell(value: object) -> str:
  if isinstance(value, (float, np.floating)):
    return html.escape(f"{float(value):.4g}")
  return html.escape(str(value))


def display_scale(width: int, height: int, tile: int | None = None) -> int:
  """Integer enlargement of a width x height image whose tiles are `tile` px (default: one tile, min(w, h))."""
  tile = tile or min(width, height)
  wanted = min(MAX_DISPLAY_SCALE, math.ceil(MIN_DISPLAY_TILE / max(1, tile)))
  return max(1, min(wanted, MAX_DISPLAY_WIDTH // max(1, width), MAX_DISPLAY_HEIGHT // max(1, height)))


def _image_size(base_dir: Path | None, path: str) -> tuple[int, int, int | None] | None:
  """(width, height, grid tile or None) of an image next to the page (header only); None if unreadable."""
  if base_dir is None:
    return None
  try:
    with Image.open(base_dir / path) as image:
      tile = image.info.get(GRID_TILE_KEY)
      return image.width, image.height, int(tile) if tile and str(tile).isdigit() else None
  except (OSError, ValueError):
    return None


def _section_html(section: Section, base_dir: Path | None = None) -> list[str]:
  parts = [f"<h2>{html.escape(section.heading)}</h2>"]
  css = ' class="warning"' if section.warning else ""
  for paragraph in (p.strip() for p in section.text.split("\n\n")):
    if paragraph:
      parts.append(f"<p{css}>{html.escape(paragraph)}</p>")
  if section.table is not None:
    header, rows = section.table
    parts.append("<table>")
    parts.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for row in rows:
      parts.append("<tr>" + "".join(f"<td>{_format_cell(v)}</td>" for v in row) + "</tr>")
    parts.append("</table>")
  for path, caption in section.images:
    link = _relative_link(path)
    text = html.escape(caption)
    size = _image_size(base_dir, path)
    dims = ""
    if size is not None:
      scale = display_scale(*size)
      dims = f' width="{size[0] * scale}" height="{size[1] * scale}"'
    parts.append(f'<figure><a href="{link}"><img src="{link}" alt="{text}"{dims}></a>'
                 f"<figcaption>{text}</figcaption></figure>")
  return parts


def render_html(title: str, sections: Sequence[Section], base_dir: str | os.PathLike | None = None) -> str:
  """The HTML text of a report page (see `write_html`); `base_dir` is where the images are (for their sizes)."""
  parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{html.escape(title)}</title>", f"<style>{_STYLE}</style>", "</head>", "<body>",
           f"<h1>{html.escape(title)}</h1>"]
  for section in sections:
    parts.extend(_section_html(section, None if base_dir is None else Path(base_dir)))
  parts.extend(["</body>", "</html>", ""])
  return "\n".join(parts)


def write_html(path: str | os.PathLike, title: str, sections: Sequence[Section]) -> Path:
  """Writes a self-contained static HTML page (inline CSS, relative image links, escaped text) atomically.

  Write the images first: small ones (a 64-px model's tiles) get width/height attributes that enlarge them by an
  integer factor, drawn nearest-neighbour (`display_scale`).
  """
  return files.atomic_write_text(path, render_html(title, sections, base_dir=Path(path).parent))
