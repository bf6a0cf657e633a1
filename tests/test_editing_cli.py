"""`edit.py` subcommands end to end on a tiny random checkpoint (few iterations), checking every written file."""
import importlib.util
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from idinvert_jax import export
from idinvert_jax import files
from idinvert_jax import inversion_folder
from idinvert_jax.editing import boundaries
from idinvert_jax.editing import cli
from idinvert_jax.editing import jobs
from idinvert_jax.models import generator as generator_lib

REPO = Path(__file__).resolve().parents[1]


def _tiny_config():
  spec = importlib.util.spec_from_file_location("tiny_config", REPO / "configs" / "tiny.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """A tiny generator+encoder checkpoint and two invert.py-style folders of codes rendered by it."""
  root = tmp_path_factory.mktemp("edit")
  config = _tiny_config()
  models = export.create_models(config, jax.random.key(0), names=("generator", "encoder"))
  export.save_models(root / "ckpt", config, models.variables())
  G, variables = models.generator, models.generator_vars
  res = int(G.resolution)
  folders = {}
  for name, n, seed in (("a", 3, 1), ("b", 2, 2)):
    z = np.random.default_rng(seed).standard_normal((n, G.z_dim)).astype(np.float32)
    codes = np.asarray(generator_lib.mapping(G, variables, z))
    images = jobs.render(models, codes)  # Shares the jobs' compiled synthesis.
    folder = root / f"inv_{name}"
    sources = [f"/data/{name}/img{i}.png" for i in range(n)]
    sources[-1] = f"/data/other/img0.png"  # A repeated stem: invert.py names it img0_2.
    files.atomic_save_npy(folder / "inverted_codes.npy", codes)
    files.atomic_write_text(folder / "image_list.txt", "".join(s + "\n" for s in sources))
    for stem, image in zip(inversion_folder.unique_names(sources), images):
      files.atomic_save_png(folder / f"{stem}_ori.png", image)
    folders[name] = (folder, codes, images)
  return dict(root=root, ckpt=root / "ckpt", folders=folders, res=res, L=int(G.num_layers), D=int(G.w_dim),
              models=models)


def _png_size(path):
  with Image.open(path) as image:
    return image.size


def test_interpolate_writes_codes_grid_and_page(setup, tmp_path):
  (a, codes_a, _), (b, codes_b, _) = setup["folders"]["a"], setup["folders"]["b"]
  out = tmp_path / "interp"
  assert cli.main(["interpolate", "--checkpoint", str(setup["ckpt"]), "--src_dir", str(a), "--dst_dir", str(b),
                   "--src", "0,2", "--steps", "3", "--output", str(out)]) == 0
  codes = np.load(out / "interpolated_codes.npy")
  assert codes.shape == (2, 2, 5, setup["L"], setup["D"])
  np.testing.assert_array_equal(codes[1, 0, 0], codes_a[2])
  np.testing.assert_array_equal(codes[1, 1, -1], codes_b[1])
  res, pad = setup["res"], 2
  width, height = _png_size(out / "interpolation.png")
  assert width > 7 * res + 8 * pad and height > 4 * res + 5 * pad  # 7 columns, 4 rows, plus labels.
  html = (out / "index.html").read_text()
  assert 'src="interpolation.png"' in html and "Interpolation" in html


def test_interpolate_within_one_folder_and_bad_indices(setup, tmp_path, capsys):
  a, codes_a, _ = setup["folders"]["a"]
  out = tmp_path / "one"
  assert cli.main(["interpolate", "--checkpoint", str(setup["ckpt"]), "--src_dir", str(a), "--src", "0",
                   "--dst", "1-2", "--output", str(out)]) == 0
  codes = np.load(out / "interpolated_codes.npy")
  assert codes.shape == (1, 2, 7, setup["L"], setup["D"])
  np.testing.assert_array_equal(codes[0, 1, -1], codes_a[2])
  assert cli.main(["interpolate", "--checkpoint", str(setup["ckpt"]), "--src_dir", str(a), "--src", "7",
                   "--output", str(tmp_path / "bad")]) == 1
  assert "--src [7] are out of range 0..2" in capsys.readouterr().err


def test_manipulate_with_official_style_and_conditional_boundaries(setup, tmp_path):
  a, codes_a, _ = setup["folders"]["a"]
  L, D = setup["L"], setup["D"]
  rng = np.random.default_rng(0)
  primal = rng.normal(size=(1, L, D)).astype(np.float32)
  primal /= np.linalg.norm(primal, axis=-1, keepdims=True)
  np.save(tmp_path / "smile.npy", np.array({"boundary": primal, "meta_data": {"manipulate_layers": [0, 1]}},
                                           dtype=object), allow_pickle=True)
  condition = rng.normal(size=(1, D)).astype(np.float32)
  np.save(tmp_path / "age.npy", condition)
  out = tmp_path / "manip"
  assert cli.main(["manipulate", "--checkpoint", str(setup["ckpt"]), "--codes_dir", str(a), "--boundary",
                   str(tmp_path / "smile.npy"), "--steps", "3", "--output", str(out)]) == 0
  edited = np.load(out / "manipulated_codes.npy")
  assert edited.shape == (3, 3, L, D)
  np.testing.assert_array_equal(edited[:, :, 2:], np.broadcast_to(codes_a[:, None, 2:], edited[:, :, 2:].shape))
  np.testing.assert_allclose(edited[:, 0, :2] - codes_a[:, :2], np.broadcast_to(-3 * primal[0, :2],
                                                                              (3, 2, D)), atol=1e-5)
  assert (out / "manipulation_smile.png").is_file() and "manipulation_smile.png" in (out / "index.html").read_text()

  out = tmp_path / "cond"
  assert cli.main(["manipulate", "--checkpoint", str(setup["ckpt"]), "--codes_dir", str(a), "--boundary",
                   str(tmp_path / "smile.npy"), "--conditions", str(tmp_path / "age.npy"), "--steps", "2",
                   "--output", str(out)]) == 0
  edited = np.load(out / "manipulated_codes.npy")
  condition_wp = np.tile(condition, (L, 1))
  moved = edited[:, -1] - edited[:, 0]
  np.testing.assert_allclose(np.einsum("nld,ld->n", moved, condition_wp), 0.0, atol=1e-3)
  assert np.abs(moved).max() > 0.1


def test_train_boundary_from_labels_and_from_classifier(setup, tmp_path):
  L, D = setup["L"], setup["D"]
  rng = np.random.default_rng(3)
  codes = rng.normal(size=(400, L, D)).astype(np.float32)
  normal = rng.normal(size=(D,)).astype(np.float32)
  scores = codes[:, 1] @ normal
  np.save(tmp_path / "codes.npy", codes)
  (tmp_path / "labels.csv").write_text("image,smile\n" + "".join(f"i{i}.png,{s}\n" for i, s in enumerate(scores)))
  out = tmp_path / "trained"
  assert cli.main(["train-boundary", "--checkpoint", str(setup["ckpt"]), "--codes", str(tmp_path / "codes.npy"),
                   "--labels", str(tmp_path / "labels.csv"), "--label_column", "smile", "--layers", "1",
                   "--ratio", "0.25", "--output", str(out)]) == 0
  boundary = boundaries.load_boundary(out / "smile.npz")
  assert boundary.layers == (1,) and boundary.accuracy >= 0.95
  assert boundary.direction[1] @ normal / np.linalg.norm(normal) >= 0.95
  assert np.load(out / "preview_codes.npy").shape == (4, 7, L, D)
  html = (out / "index.html").read_text()
  assert "validation accuracy" in html and "preview_smile.png" in html

  out = tmp_path / "sampled"
  assert cli.main(["train-boundary", "--checkpoint", str(setup["ckpt"]), "--num_samples", "40",
                   "--classifier", f"{__name__}:mean_red", "--ratio", "0.25", "--num_steps", "20",
                   "--output", str(out), "--batch_size", "8"]) == 0
  sampled = np.load(out / "sampled_codes.npy")
  assert sampled.shape == (40, L, D)
  models = setup["models"]
  images = jobs.render(models, sampled[:8])
  np.testing.assert_allclose(np.load(out / "scores.npy")[:8], mean_red(images), rtol=1e-4, atol=1e-5)
  assert boundaries.load_boundary(out / "mean_red.npz").attribute == "mean_red"


def mean_red(images):
  """A stand-in attribute classifier for the test: mean red channel."""
  return np.asarray(images)[..., 0].mean(axis=(1, 2))


def test_style_mix_copies_style_layers(setup, tmp_path):
  (a, codes_a, _), (b, codes_b, _) = setup["folders"]["a"], setup["folders"]["b"]
  out = tmp_path / "mix"
  assert cli.main(["style-mix", "--checkpoint", str(setup["ckpt"]), "--style_dir", str(a), "--content_dir",
                   str(b), "--mix_layer_start", "2", "--output", str(out)]) == 0
  mixed = np.load(out / "mixed_codes.npy")
  assert mixed.shape == (3, 2, setup["L"], setup["D"])
  np.testing.assert_array_equal(mixed[2, 1, 2:], codes_a[2, 2:])
  np.testing.assert_array_equal(mixed[2, 1, :2], codes_b[1, :2])
  width, height = _png_size(out / "style_mixing.png")
  assert width > 3 * setup["res"] and height > 4 * setup["res"]
  assert "style_mixing.png" in (out / "index.html").read_text()


def test_diffuse_writes_results_for_every_pair(setup, tmp_path, caplog):
  a, _, images_a = setup["folders"]["a"]
  contexts = tmp_path / "contexts"
  for i in range(2):
    files.atomic_save_png(contexts / f"c{i}.png", images_a[i])
  files.atomic_save_png(tmp_path / "t.png", images_a[2])
  out = tmp_path / "diffuse"
  assert cli.main(["diffuse", "--checkpoint", str(setup["ckpt"]), "--targets", str(tmp_path / "t.png"),
                   "--contexts", str(contexts), "--num_iterations", "2", "--num_results", "1", "--no_perceptual",
                   "--output", str(out)]) == 0
  codes = np.load(out / "diffused_codes.npy")
  assert codes.shape == (1, 2, setup["L"], setup["D"]) and np.all(np.isfinite(codes))
  assert (out / "context_list.txt").read_text().splitlines() == [str(contexts / "c0.png"), str(contexts / "c1.png")]
  assert "diffusion.png" in (out / "index.html").read_text()
  # Without VGG16 weights it warns and goes on with the pixel objective, as invert.py does (it used to refuse).
  caplog.clear()
  assert cli.main(["diffuse", "--checkpoint", str(setup["ckpt"]), "--targets", str(tmp_path / "t.png"),
                   "--contexts", str(contexts), "--num_iterations", "2", "--num_results", "1",
                   "--output", str(tmp_path / "no_vgg")]) == 0
  assert "has no VGG16 weights: the perceptual term is off" in caplog.text
  np.testing.assert_array_equal(np.load(tmp_path / "no_vgg" / "diffused_codes.npy"), codes)  # = --no_perceptual


def test_diffuse_shows_progress_by_default_on_a_terminal(monkeypatch):
  monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
  assert cli.show_progress(None) and not cli.show_progress(False)
  monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
  assert not cli.show_progress(None) and cli.show_progress(True)
  assert cli.build_parser().parse_args(["diffuse", "--checkpoint", "c", "--targets", "t", "--contexts", "c",
                                        "--output", "o"]).progress is None


def test_every_subcommand_documents_its_flags(capsys):
  for command in ("interpolate", "manipulate", "train-boundary", "style-mix", "diffuse"):
    with pytest.raises(SystemExit):
      cli.main([command, "--help"])
    text = capsys.readouterr().out
    assert "--output" in text and "--checkpoint" in text


def test_usage_errors_exit_1_and_help_states_the_exit_codes(capsys):
  with pytest.raises(SystemExit) as usage:
    cli.main(["manipulate", "--checkpoint", "x"])  # --output and --codes_dir missing
  assert usage.value.code == 1
  with pytest.raises(SystemExit):
    cli.main(["--help"])
  assert "Exit codes: 0" in capsys.readouterr().out
