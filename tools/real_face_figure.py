r"""One figure of a real photo through the whole pipeline: photo -> FFHQ-aligned -> encoder -> in-domain -> two edits.

  python tools/real_face_figure.py --checkpoint CKPT --output docs/images/real_face.png
  python tools/real_face_figure.py --checkpoint CKPT --photo portrait.jpg \
      --source "Wikimedia Commons, public domain (US federal government work)" \
      --edit smile=3 --edit eyeglasses=3 --output figure.png

Default photo: matplotlib's sample `grace_hopper.jpg` (official US Navy portrait of Grace Hopper, public domain),
so the command runs anywhere the package is installed. The photo is aligned the FFHQ way at the model's resolution
(needs `pip install -e .[align]`), inverted with the checkpoint's in-domain settings (official: 100 steps) by the
same engine as invert.py and the app (`idinvert_jax.app.Editor`), then moved along two boundaries (the
checkpoint's boundaries/, or --boundaries). The PNG has six panels with their PSNR and a caption naming the photo,
its source and licence, the model, the settings and the out-of-domain verdict; the numbers are also printed.
Only commit such a figure when the photo is public domain (the caption says so) and the model may be shown.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from idinvert_jax import app, files, report  # noqa: E402

DEFAULT_SOURCE = ("matplotlib sample data grace_hopper.jpg: official US Navy portrait of Grace Hopper, "
                  "public domain")
PANEL = 256


def default_photo() -> Path:
  from matplotlib import cbook  # pylint: disable=import-outside-toplevel
  return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def parse_edits(specs, available) -> list[tuple[str, float]]:
  """['smile=3', 'age=-2'] -> [('smile', 3.0), ('age', -2.0)]; default: the first two boundaries at +3."""
  if not specs:
    if len(available) < 2:
      raise SystemExit(f"real_face_figure: the checkpoint has {len(available)} boundaries ({list(available)}); the "
                       "figure needs two: pass --boundaries DIR or train them (edit.py train-boundary).")
    return [(name, 3.0) for name in list(available)[:2]]
  edits = []
  for spec in specs:
    name, _, value = spec.partition("=")
    if name not in available:
      raise SystemExit(f"real_face_figure: --edit {spec}: no boundary {name!r}; available: {list(available)}.")
    try:
      edits.append((name, float(value)))
    except ValueError:
      raise SystemExit(f"real_face_figure: --edit {spec}: use NAME=STRENGTH, e.g. {name}=3.") from None
  return edits


def _panel(image: np.ndarray, smooth: bool = False) -> np.ndarray:
  """A square uint8 panel of PANEL px: model outputs enlarged nearest-neighbour, the photo letterboxed."""
  if smooth:
    picture = Image.fromarray(image)
    picture.thumbnail((PANEL, PANEL), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (PANEL, PANEL), (255, 255, 255))
    canvas.paste(picture, ((PANEL - picture.width) // 2, (PANEL - picture.height) // 2))
    return np.asarray(canvas)
  return np.asarray(Image.fromarray(image).resize((PANEL, PANEL), Image.Resampling.NEAREST))


def make_figure(checkpoint, photo: Path, source: str, edit_specs=None, boundaries_dir=None,
                num_iterations: int | None = None, editor: app.Editor | None = None,
                align_zoom: float = 1.0) -> tuple[np.ndarray, dict]:
  """The figure (uint8 [H, W, 3]) and its numbers (`editor`: an already compiled app.Editor to reuse)."""
  from idinvert_jax.data import preprocess  # pylint: disable=import-outside-toplevel
  editor = editor or app.Editor(checkpoint, boundaries_dir, num_iterations)
  if not editor.can_align:
    raise SystemExit("real_face_figure: the figure shows the FFHQ-aligned face; install the align extra with "
                     "`pip install -e .[align]`.")
  edits = parse_edits(edit_specs, editor.directions)
  try:
    name, aligned, _ = editor.load_photo(photo, align_face=True, align_zoom=align_zoom)
  except app.AppError as e:
    raise SystemExit(f"real_face_figure: {e}") from None
  face = editor.invert(name, aligned)
  edited = [editor.image(editor.edit(face.code, {attribute: strength})) for attribute, strength in edits]
  photo_rgb = preprocess.read_rgb(photo)
  panels = [_panel(photo_rgb, smooth=True), _panel(aligned), _panel(face.encoder), _panel(face.inverted)]
  panels += [_panel(image) for image in edited]
  labels = [f"photo ({photo_rgb.shape[1]}x{photo_rgb.shape[0]})", f"aligned ({editor.resolution} px)",
            f"encoder E(x): {face.encoder_psnr:.1f} dB", f"in-domain: {face.psnr:.1f} dB"]
  labels += [f"{attribute} {strength:+g}" for attribute, strength in edits]
  grid = report.image_grid([panels], pad=4, col_labels=labels)

  verdict = ("not calibrated (no domain.json)" if face.outside is None else
             "OUTSIDE the model's domain" if face.outside else "inside the model's domain")
  threshold = editor.calibration.threshold("indomain") if editor.calibration else None
  caption = (f"Photo: {Path(photo).name} ({source}). Model: {editor.checkpoint} ({editor.resolution} px). "
             "FFHQ alignment (dlib 68 landmarks" + (f", crop zoom {align_zoom:g}" if align_zoom != 1 else "")
             + f"), encoder, then {editor.settings.num_iterations} in-domain steps "
             f"(lambda_enc {editor.settings.loss_weight_enc:g}); PSNR of the reconstructions vs the aligned face; "
             f"out-of-domain check: {verdict}"
             + (f" (threshold {threshold:.1f} dB)" if threshold is not None else "") + ". Edits move the inverted "
             "code along the checkpoint's boundaries: " + ", ".join(f"{a} {s:+g}" for a, s in edits) + ".")
  figure = _with_caption(grid, caption)
  numbers = {"photo": str(photo), "source": source, "encoder_psnr": face.encoder_psnr, "psnr": face.psnr,
             "outside_domain": face.outside, "threshold": threshold, "edits": edits,
             "num_iterations": int(editor.settings.num_iterations), "caption": caption}
  return figure, numbers


def _with_caption(grid: np.ndarray, caption: str) -> np.ndarray:
  font = report._font()  # pylint: disable=protected-access
  measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  chars = max(20, int(len(caption) * (grid.shape[1] - 16) / max(1, measure.textlength(caption, font=font))))
  text = "\n".join(textwrap.wrap(caption, chars))
  _, _, _, height = measure.multiline_textbbox((0, 0), text, font=font)
  canvas = Image.new("RGB", (grid.shape[1], grid.shape[0] + int(height) + 16), (255, 255, 255))
  canvas.paste(Image.fromarray(grid), (0, 0))
  ImageDraw.Draw(canvas).multiline_text((8, grid.shape[0] + 6), text, fill=(0, 0, 0), font=font)
  return np.asarray(canvas)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", default=str(app.DEFAULT_CHECKPOINT), help="Model checkpoint folder.")
  parser.add_argument("--photo", default=None, help="The photo (default: matplotlib's grace_hopper.jpg).")
  parser.add_argument("--source", default=None,
                      help="Where the photo is from and its licence, for the caption (required with --photo).")
  parser.add_argument("--edit", action="append", default=None, metavar="NAME=STRENGTH",
                      help="A boundary and its strength; give two (default: the first two boundaries at +3).")
  parser.add_argument("--boundaries", default=None, help="Extra boundary folder (official .npy or project .npz).")
  parser.add_argument("--num_iterations", type=int, default=None,
                      help="In-domain steps (default: the checkpoint's config.invert, official 100).")
  parser.add_argument("--align_zoom", type=float, default=1.0,
                      help="Scale of the alignment crop: 1 = FFHQ's; below 1 = tighter, to frame the face as the "
                      "model's training data was (the shared CelebA-64 crops: about 0.8).")
  parser.add_argument("--output", required=True, help="The PNG to write.")
  args = parser.parse_args(argv)
  if not 0.2 <= args.align_zoom <= 2:
    parser.error(f"--align_zoom {args.align_zoom}: use a value between 0.2 and 2 (1 = FFHQ's crop)")
  if args.photo and not args.source:
    parser.error("--source is required with --photo: the caption must name where the photo is from and its licence")
  if args.edit is not None and len(args.edit) != 2:
    parser.error(f"give exactly two --edit NAME=STRENGTH (got {len(args.edit)})")
  photo = Path(args.photo) if args.photo else default_photo()
  try:
    figure, numbers = make_figure(args.checkpoint, photo, args.source or DEFAULT_SOURCE, args.edit,
                                  args.boundaries, args.num_iterations, align_zoom=args.align_zoom)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f"real_face_figure: error: {e}") from None
  path = files.atomic_save_png(args.output, figure)
  print(f"wrote {path} ({figure.shape[1]}x{figure.shape[0]} px)")
  print(f"encoder {numbers['encoder_psnr']:.2f} dB -> in-domain {numbers['psnr']:.2f} dB "
        f"({numbers['num_iterations']} steps); outside domain: {numbers['outside_domain']}; threshold "
        f"{numbers['threshold']}")
  print(f"caption: {numbers['caption']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
