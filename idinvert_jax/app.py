r"""Interactive editing app: upload a face -> align -> invert -> edit with sliders -> download the PNG and the code.

  python -m idinvert_jax.app                                   # the shipped demo model at http://127.0.0.1:7860
  python -m idinvert_jax.app --checkpoint ckpt_ffhq256 --boundaries boundaries/stylegan_ffhq256/
  python -m idinvert_jax.app --host 0.0.0.0 --port 8080        # reachable from other machines (only when asked)

The page (Gradio; `pip install -e .[app]`):
1. upload a photo or pick an example; with "align" ticked (needs `pip install -e .[align]`) the largest face is
   cropped the FFHQ way (idinvert_jax.align), else a non-square photo is stretched (official) or centre-cropped;
2. the in-domain inversion runs with a progress bar: original | encoder E(x) | inverted, with their PSNR and,
   when the checkpoint is calibrated (idinvert_jax.domain_check), a warning if the photo is outside the model's domain;
3. one slider (-5..5) per boundary: the checkpoint's boundaries/*.npz and the official .npy files of
   `--boundaries` (read with the restricted reader: nothing is unpickled beyond arrays and plain values);
4. a second face: interpolation between the two, and style mixing (the second face's fine layers);
5. download the edited image (PNG, model resolution) and its W+ code (.npy, [1, L, D]).

Inversion goes through the same engine as invert.py (`inversion.invert`, the checkpoint's `config.invert`), and
every program (inversion, synthesis, the edit arithmetic, PSNR) is compiled once when the app starts: requests
only run them. Requests queue one at a time (one model, one CPU). Uploads that are not images, larger than
MAX_UPLOAD_MB or MAX_PIXELS, or contain no face (with "align") get a one-line message in the page.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # No calls home.

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO / "assets" / "demo_checkpoint"
EXAMPLES_DIR = REPO / "assets" / "examples"
MAX_UPLOAD_MB = 25
MAX_PIXELS = 40_000_000     # 40 megapixels: a 50 MP phone photo must be downscaled first
SLIDER_LIMIT = 5.0
DISPLAY_SIDE = 256          # small models' images are shown enlarged (nearest neighbour) to at least this
CROP_CHOICES = {"stretch (official)": "none", "centre square": "center"}


class AppError(ValueError):
  """A user-fixable problem with an upload or a request; shown as one line in the page."""


@dataclasses.dataclass
class InvertedFace:
  name: str
  original: np.ndarray        # uint8 [R, R, 3]: what the model was given (aligned / resized)
  encoder: np.ndarray         # uint8 G(E(x))
  inverted: np.ndarray        # uint8 G(w)
  code: np.ndarray            # float32 [1, L, D]
  psnr: float
  encoder_psnr: float
  outside: bool | None        # out-of-domain verdict (None: checkpoint not calibrated)
  notes: list

  def summary(self, calibration) -> str:
    text = f"**{self.name}**: encoder {self.encoder_psnr:.1f} dB -> inverted {self.psnr:.1f} dB PSNR."
    if self.outside:
      text += " \u26a0\ufe0f " + calibration.warning(self.name, self.psnr, "indomain").split(": ", 1)[1] + "."
    elif self.outside is False:
      text += f" Inside the model's domain (threshold {calibration.threshold('indomain'):.1f} dB)."
    return " ".join([text, *self.notes])


def _to_uint8(image: np.ndarray) -> np.ndarray:
  from idinvert_jax import files  # pylint: disable=import-outside-toplevel
  return files.to_uint8(np.asarray(image))


def enlarge(image: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
  """Nearest-neighbour enlargement by an integer factor until the image is at least `side` px."""
  factor = max(1, -(-side // image.shape[0]))
  return image if factor == 1 else np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def find_boundaries(checkpoint: str | Path, extra_dir: str | Path | None = None) -> dict:
  """name -> Boundary from <checkpoint>/boundaries/ and `extra_dir` (*.npz project files, *.npy official)."""
  from idinvert_jax import export  # pylint: disable=import-outside-toplevel
  from idinvert_jax.editing import boundaries  # pylint: disable=import-outside-toplevel
  folders = [export.find_checkpoint_dir(checkpoint) / "boundaries"]
  if extra_dir is not None:
    if not Path(extra_dir).is_dir():
      raise AppError(f"--boundaries {extra_dir} is not a folder; pass the folder holding the boundary .npy/.npz "
                     "files (e.g. idinvert_pytorch's boundaries/stylegan_ffhq256/).")
    folders.append(Path(extra_dir))
  found = {}
  for folder in folders:
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
      if path.suffix in (".npz", ".npy"):
        boundary = boundaries.load_boundary(path)
        found[boundary.attribute or path.stem] = boundary
  return found


class Editor:
  """The models, boundaries and compiled programs of one app: loaded and compiled once, then only run."""

  def __init__(self, checkpoint: str | Path = DEFAULT_CHECKPOINT, boundaries_dir: str | Path | None = None,
               num_iterations: int | None = None):
    import jax  # pylint: disable=import-outside-toplevel
    from idinvert_jax import align, domain_check, inversion, invert_job  # pylint: disable=import-outside-toplevel
    self.checkpoint = Path(checkpoint)
    self.models = invert_job.load_job_models(checkpoint)
    # The checkpoint's config.invert (official: 100 in-domain steps), one image at a time on one device.
    self.settings = inversion.InvertSettings.from_config(self.models.config, method="indomain",
                                                         num_iterations=num_iterations, batch_size=1, num_results=0)
    self.inverter = inversion.Inverter(self.models)  # Keeps the compiled inversion programs between requests.
    self.inverter.validate(self.settings)
    self.calibration = domain_check.load(checkpoint)
    generator = self.models.generator
    self.resolution, self.num_layers, self.w_dim = (int(generator.resolution), int(generator.num_layers),
                                                    int(generator.w_dim))
    self.boundaries = find_boundaries(checkpoint, boundaries_dir)
    self.directions = {name: (b.layerwise(self.num_layers), tuple(b.layers) if b.layers else None)
                       for name, b in self.boundaries.items()}
    self.devices = jax.devices()[:1]
    self.can_align = align.available()
    self.examples = sorted(str(p) for p in EXAMPLES_DIR.glob("*.png")) if EXAMPLES_DIR.is_dir() else []
    self._warm_up()

  def _warm_up(self) -> None:
    """Compiles every program a request runs (the step count is a runtime input: one step compiles them all)."""
    grey = np.full((self.resolution, self.resolution, 3), 128, np.uint8)
    face = self._invert_array("warm-up", grey, num_iterations=1, progress=False)
    self.image(self.edit(face.code, {name: 1.0 for name in self.directions}))
    self.image(self.mix(face.code, face.code, self.num_layers // 2))
    self.image(self.interpolate(face.code, face.code, 0.5))

  # Inputs.

  def load_photo(self, path: str | Path, align_face: bool = True, crop: str = "none", align_zoom: float = 1.0
                 ) -> tuple[str, np.ndarray, list[str]]:
    """An uploaded file -> (name, uint8 [R, R, 3] the model will see, notes). Raises AppError (one line).

    align_zoom: crop scale of the alignment (1 = FFHQ's; < 1 for models trained on tighter crops).
    """
    from idinvert_jax import align  # pylint: disable=import-outside-toplevel
    from idinvert_jax.data import preprocess  # pylint: disable=import-outside-toplevel
    path = Path(path)
    name = path.name
    if path.stat().st_size > MAX_UPLOAD_MB * 2 ** 20:
      raise AppError(f"{name} is {path.stat().st_size / 2 ** 20:.0f} MB; upload an image under {MAX_UPLOAD_MB} MB.")
    from PIL import Image, UnidentifiedImageError  # pylint: disable=import-outside-toplevel
    fix = f"upload a photo ({', '.join(preprocess.IMAGE_SUFFIXES)})"
    try:
      with Image.open(path) as header:  # Header only: the size is checked before decoding.
        width, height = header.size
    except Image.DecompressionBombError:
      raise AppError(f"{name} is far too large to decode safely; downscale it to under {MAX_PIXELS / 1e6:.0f} "
                     "megapixels first.") from None
    except (UnidentifiedImageError, OSError, ValueError):
      raise AppError(f"{name}: not an image PIL can read; {fix}.") from None
    if width * height > MAX_PIXELS:
      raise AppError(f"{name} is {width}x{height} px ({width * height / 1e6:.0f} megapixels); downscale it to "
                     f"under {MAX_PIXELS / 1e6:.0f} megapixels first.")
    try:
      rgb = preprocess.read_rgb(path)
    except preprocess.ImageError as e:
      raise AppError(f"{name}: {e.reason}; {fix}.") from None
    notes = []
    if align_face and self.can_align:
      faces = align.align_image(rgb, self.resolution, largest_only=True, source=name, zoom=align_zoom)
      if not faces:
        raise AppError(f"no face found in {name}; upload a photo with a visible face, or untick 'align' to invert "
                       "the whole picture.")
      return name, faces[0].image, ["Face aligned the FFHQ way (largest face)."]
    if align_face and not self.can_align:
      notes.append("Not aligned: install the align extra (`pip install -e .[align]`).")
    if width != height:
      notes.append("Not square: " + ("centre square cut out." if crop == "center" else
                                     "stretched to a square as the official code does."))
    mode = "center_crop" if crop == "center" else "resize"
    try:
      image = preprocess.prepare_uint8(rgb, name, self.resolution, mode)
    except preprocess.ImageError as e:
      raise AppError(f"{name}: {e.reason}; upload a larger image.") from None
    return name, image, notes

  # Programs.

  def _invert_array(self, name: str, image: np.ndarray, num_iterations: int | None = None,
                    progress: bool = True) -> InvertedFace:
    from idinvert_jax import domain_check, inversion  # pylint: disable=import-outside-toplevel
    from idinvert_jax.data import preprocess  # pylint: disable=import-outside-toplevel
    from idinvert_jax.metrics import reconstruction  # pylint: disable=import-outside-toplevel
    settings = self.settings if num_iterations is None else self.settings.replace(num_iterations=num_iterations)
    x = preprocess.to_float(image)[None]
    result = inversion.invert(x, self.inverter, settings, progress=progress, devices=self.devices)
    psnr = float(np.asarray(reconstruction.psnr(x, result.reconstructions))[0])
    encoder_psnr = float(np.asarray(reconstruction.psnr(x, result.encoder_reconstructions))[0])
    outside = domain_check.verdicts(self.calibration, [psnr], "indomain")[0]
    return InvertedFace(name, image, _to_uint8(result.encoder_reconstructions[0]),
                        _to_uint8(result.reconstructions[0]), result.codes.astype(np.float32), psnr, encoder_psnr,
                        outside, [])

  def invert(self, name: str, image: np.ndarray, progress: bool = True) -> InvertedFace:
    """In-domain inversion of one uint8 [R, R, 3] image (the engine compiled at start-up)."""
    return self._invert_array(name, image, progress=progress)

  def edit(self, code: np.ndarray, strengths: dict) -> np.ndarray:
    """The code moved by strengths[name] along each boundary (on that boundary's layers): [1, L, D]."""
    from idinvert_jax.editing import manipulate  # pylint: disable=import-outside-toplevel
    code = np.asarray(code, np.float32)
    for name, distance in strengths.items():
      direction, layers = self.directions[name]
      code = np.asarray(manipulate.manipulate(code, direction, np.float32([distance]), layers=layers))[:, 0]
    return code

  def mix(self, content: np.ndarray, style: np.ndarray, first_layer: int) -> np.ndarray:
    """The content code with the style code's layers first_layer..L-1 (style mixing): [1, L, D]."""
    from idinvert_jax.editing import style_mix  # pylint: disable=import-outside-toplevel
    layers = tuple(range(int(first_layer), self.num_layers))
    return np.asarray(style_mix.mix_styles(np.asarray(style, np.float32), np.asarray(content, np.float32),
                                           layers))[0]

  def interpolate(self, a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """(1 - t) a + t b: [1, L, D]."""
    return ((1.0 - np.float32(t)) * np.asarray(a, np.float32) + np.float32(t) * np.asarray(b, np.float32))

  def image(self, code: np.ndarray) -> np.ndarray:
    """uint8 [R, R, 3] of one [1, L, D] code."""
    from idinvert_jax.editing import jobs  # pylint: disable=import-outside-toplevel
    return _to_uint8(jobs.render(self.models, np.asarray(code, np.float32), batch_size=1)[0])


def save_downloads(folder: Path, stem: str, image: np.ndarray, code: np.ndarray) -> tuple[str, str]:
  """Writes <stem>.png (model resolution) and <stem>_code.npy ([1, L, D]) atomically; returns their paths."""
  from idinvert_jax import files  # pylint: disable=import-outside-toplevel
  png = files.atomic_save_png(folder / f"{stem}.png", image)
  npy = files.atomic_save_npy(folder / f"{stem}_code.npy", np.asarray(code, np.float32).reshape(1, *code.shape[-2:]))
  return str(png), str(npy)


# ----------------------------------------------------------------------------------------------------------
# The page.


def build_app(editor: Editor):
  """The Gradio Blocks of the app around an `Editor` (call .launch() on the result)."""
  import gradio as gr  # pylint: disable=import-outside-toplevel

  downloads = Path(tempfile.mkdtemp(prefix="idinvert_app_"))
  names = list(editor.directions)
  calibration = editor.calibration
  shown = os.path.relpath(editor.checkpoint) if not os.path.relpath(editor.checkpoint).startswith("..") else (
      editor.checkpoint)
  model_text = (f"Model: `{shown}` ({editor.resolution} px, W+ codes [1, {editor.num_layers}, "
                f"{editor.w_dim}]), in-domain inversion with {editor.settings.num_iterations} steps. "
                + (calibration.describe() if calibration else "No out-of-domain check (no domain.json)."))

  def _error(e: Exception):
    return gr.Error(str(e), print_exception=False)

  def _face_outputs(face: InvertedFace):
    return [enlarge(face.original), enlarge(face.encoder), enlarge(face.inverted), face.summary(calibration)]

  def invert_upload(upload, example, do_align, crop, missing: str) -> InvertedFace:
    """The uploaded (or example) photo loaded, aligned or cropped, and inverted; `missing`: the message without one."""
    path = upload or example
    if not path:
      raise gr.Error(missing, print_exception=False)
    try:
      name, image, notes = editor.load_photo(path, bool(do_align), CROP_CHOICES.get(crop, "none"))
    except (AppError, FileNotFoundError) as e:
      raise _error(e) from None
    face = editor.invert(name, image)
    face.notes = notes
    return face

  def run_inversion(upload, example, do_align, crop, progress=gr.Progress(track_tqdm=True)):
    face = invert_upload(upload, example, do_align, crop, "Upload a photo or pick an example first.")
    png, npy = save_downloads(downloads, f"{Path(face.name).stem}_inverted", face.inverted, face.code)
    sliders = [gr.update(value=0.0) for _ in names]
    return [face.code, *_face_outputs(face), enlarge(face.inverted), png, npy, *sliders]

  def run_second(upload, example, do_align, crop, progress=gr.Progress(track_tqdm=True)):
    face = invert_upload(upload, example, do_align, crop, "Upload a second photo or pick a second example first.")
    return [face.code, enlarge(face.original), enlarge(face.inverted), face.summary(calibration)]

  def run_edit(code, *strengths):
    if code is None:
      raise gr.Error("Invert a photo first.", print_exception=False)
    edited = editor.edit(code, dict(zip(names, strengths)))
    image = editor.image(edited)
    png, npy = save_downloads(downloads, "edited", image, edited)
    return enlarge(image), png, npy

  def run_combine(code, second, t, first_layer):
    if code is None or second is None:
      raise gr.Error("Invert a photo and a second face first.", print_exception=False)
    between = editor.interpolate(code, second, t)
    mixed = editor.mix(code, second, first_layer)
    return enlarge(editor.image(between)), enlarge(editor.image(mixed))

  with gr.Blocks(title="idinvert_jax: invert and edit a face") as blocks:
    gr.Markdown("# In-domain GAN inversion: invert a face, then edit it\n" + model_text)
    code_state, second_state = gr.State(None), gr.State(None)
    with gr.Row():
      with gr.Column(scale=1):
        upload = gr.File(label="Photo (png, jpg, webp, bmp)", file_types=["image"], type="filepath",
                         elem_id="upload")
        example = gr.Dropdown(choices=[(Path(p).name, p) for p in editor.examples], value=None,
                              label="... or an example", elem_id="example")
        do_align = gr.Checkbox(value=editor.can_align, interactive=editor.can_align, elem_id="align",
                               label="align the face the FFHQ way" + ("" if editor.can_align else
                                                                      " (install: pip install -e .[align])"))
        crop = gr.Radio(list(CROP_CHOICES), value="stretch (official)", label="non-square photos (without align)")
        invert_button = gr.Button("Invert", variant="primary", elem_id="invert")
      with gr.Column(scale=3):
        with gr.Row():
          original = gr.Image(label="original (as the model sees it)", type="numpy", interactive=False,
                              elem_id="original")
          encoder = gr.Image(label="encoder E(x)", type="numpy", interactive=False, elem_id="encoder")
          inverted = gr.Image(label="in-domain inversion", type="numpy", interactive=False, elem_id="inverted")
        status = gr.Markdown(elem_id="status")
    gr.Markdown("## Edit" + ("" if names else ": this checkpoint has no boundaries (pass --boundaries DIR)"))
    with gr.Row():
      with gr.Column(scale=1):
        sliders = [gr.Slider(-SLIDER_LIMIT, SLIDER_LIMIT, value=0.0, step=0.1, label=name, elem_id=f"slider_{i}")
                   for i, name in enumerate(names)]
      with gr.Column(scale=1):
        edited = gr.Image(label="edited", type="numpy", interactive=False, elem_id="edited")
        with gr.Row():
          png_button = gr.DownloadButton("Download PNG", elem_id="download_png")
          npy_button = gr.DownloadButton("Download W+ code (.npy)", elem_id="download_code")
    gr.Markdown("## A second face: interpolation and style mixing")
    with gr.Row():
      with gr.Column(scale=1):
        upload_b = gr.File(label="Second photo", file_types=["image"], type="filepath", elem_id="upload_b")
        example_b = gr.Dropdown(choices=[(Path(p).name, p) for p in editor.examples], value=None,
                                label="... or an example", elem_id="example_b")
        invert_b = gr.Button("Invert second face", elem_id="invert_b")
        status_b = gr.Markdown()
      with gr.Column(scale=3):
        with gr.Row():
          original_b = gr.Image(label="second face", type="numpy", interactive=False)
          inverted_b = gr.Image(label="its inversion", type="numpy", interactive=False)
          between = gr.Image(label="interpolation", type="numpy", interactive=False, elem_id="between")
          mixed = gr.Image(label="style mix", type="numpy", interactive=False, elem_id="mixed")
        t_slider = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="interpolation t (0 = first face, 1 = second)")
        layer_slider = gr.Slider(0, editor.num_layers - 1, value=editor.num_layers // 2, step=1,
                                 label=f"style mixing: layers from this one to {editor.num_layers - 1} come from "
                                       "the second face")

    first_outputs = [code_state, original, encoder, inverted, status, edited, png_button, npy_button, *sliders]
    inputs = [upload, example, do_align, crop]
    for trigger in (invert_button.click, upload.upload, example.input):
      trigger(run_inversion, inputs, first_outputs, concurrency_id="model")
    second_inputs = [upload_b, example_b, do_align, crop]
    second_outputs = [second_state, original_b, inverted_b, status_b]
    for trigger in (invert_b.click, upload_b.upload, example_b.input):
      trigger(run_second, second_inputs, second_outputs, concurrency_id="model").then(
          run_combine, [code_state, second_state, t_slider, layer_slider], [between, mixed], concurrency_id="model")
    for slider in sliders:
      slider.release(run_edit, [code_state, *sliders], [edited, png_button, npy_button],
                     concurrency_id="model", trigger_mode="always_last")
    for slider in (t_slider, layer_slider):
      slider.release(run_combine, [code_state, second_state, t_slider, layer_slider], [between, mixed],
                     concurrency_id="model", trigger_mode="always_last")
  blocks.queue(default_concurrency_limit=1)  # One request at a time; the others wait in the queue.
  return blocks


def launch(blocks, host: str = "127.0.0.1", port: int | None = None, share: bool = False, inline=None,
           prevent_thread_lock: bool = False):
  """Starts the server (localhost unless `host` says otherwise); returns what Gradio's launch returns."""
  import gradio as gr  # pylint: disable=import-outside-toplevel
  theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],  # Local fonts: no web requests.
                            font_mono=["ui-monospace", "monospace"])
  return blocks.launch(server_name=host, server_port=port, share=share, inline=inline, quiet=True,
                       prevent_thread_lock=prevent_thread_lock, max_file_size=f"{MAX_UPLOAD_MB}mb", theme=theme,
                       ssr_mode=False, show_error=True)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m idinvert_jax.app", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                      help="Model checkpoint folder (default: the shipped demo model). Its boundaries/ become "
                           "sliders; its domain.json enables the out-of-domain warning.")
  parser.add_argument("--boundaries", default=None,
                      help="Folder of more boundaries: official idinvert_pytorch .npy files or this project's .npz.")
  parser.add_argument("--num_iterations", type=int, default=None,
                      help="In-domain optimisation steps per photo (default: the checkpoint's, official 100).")
  parser.add_argument("--host", default="127.0.0.1",
                      help="Address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 = every interface).")
  parser.add_argument("--port", type=int, default=None, help="Port (default: Gradio's, 7860 or the next free one).")
  parser.add_argument("--share", action="store_true", help="Also open a public Gradio share link (off by default).")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    import gradio  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise SystemExit("app: error: the app needs Gradio; install it with `pip install -e .[app]`") from None
  try:
    editor = Editor(args.checkpoint, args.boundaries, args.num_iterations)
  except (ValueError, FileNotFoundError) as e:  # User-fixable: one line, no traceback.
    raise SystemExit(f"app: error: {e}") from None
  print(f"app: {editor.resolution} px model, {len(editor.directions)} boundaries ({', '.join(editor.directions)}), "
        f"alignment {'on' if editor.can_align else 'off (pip install -e .[align])'}; compiled, serving on "
        f"http://{args.host}:{args.port or 7860}")
  launch(build_app(editor), args.host, args.port, args.share)
  return 0


if __name__ == "__main__":
  sys.exit(main())
