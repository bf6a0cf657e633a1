"""invert.py / run_inversion on a tiny checkpoint: official output layout, resume, bad inputs, early errors."""
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from configs import tiny
from idinvert_jax import export, files, inversion, inversion_folder, invert_job

REPO = Path(__file__).resolve().parents[1]
SETTINGS = dict(num_iterations=2, num_results=2, batch_size=2)


@pytest.fixture(scope="module")
def config():
  return tiny.get_config()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, config):
  models = export.create_models(config, jax.random.key(0), names=("generator", "encoder"))
  return export.save_models(tmp_path_factory.mktemp("ckpt"), config, models.variables())


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory, config):
  """Three good images (one 40x48, resized on load) and one broken file, in a folder."""
  folder = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  for name, shape in (("a", (32, 32, 3)), ("b", (48, 40, 3)), ("c", (32, 32, 3))):
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"{name}.png")
  (folder / "broken.png").write_bytes(b"this is not a png")
  return folder


@pytest.fixture(scope="module")
def job(tmp_path_factory, ckpt, image_dir):
  out = tmp_path_factory.mktemp("job") / "out"
  summary = invert_job.run_inversion(ckpt, [image_dir], out, overrides=SETTINGS, progress=False)
  return out, summary


def test_writes_the_official_layout_in_input_order(job, image_dir, config):
  out, summary = job
  layers, w_dim = 2 * (5 - 1), config.model.generator.w_dim
  codes = np.load(out / "inverted_codes.npy")
  assert codes.shape == (3, layers, w_dim) and codes.dtype == np.float32
  assert np.load(out / "encoded_codes.npy").shape == (3, layers, w_dim)
  assert not np.allclose(codes, np.load(out / "encoded_codes.npy"))  # the optimisation moved the codes
  listed = (out / "image_list.txt").read_text().splitlines()
  assert [Path(p).name for p in listed] == ["a.png", "b.png", "c.png"]
  for name in "abc":
    for suffix in ("ori", "enc", "step000001", "inv"):
      image = np.asarray(Image.open(out / f"{name}_{suffix}.png"))
      assert image.shape == (32, 32, 3), (name, suffix)
  assert not (out / "a_step000002.png").exists()  # the last step is the _inv image
  rows = list(csv.DictReader(open(out / "metrics.csv")))
  assert [r["name"] for r in rows] == ["a", "b", "c"]
  for r in rows:
    assert float(r["mse"]) > 0 and float(r["psnr"]) > 0 and -1 <= float(r["ssim"]) <= 1
    assert float(r["seconds"]) > 0 and float(r["encoder_mse"]) > 0
    assert r["perceptual"] == "" and "no VGG16 weights" in r["note"]
  page = (out / "index.html").read_text()
  assert all(f"{n}_{s}.png" in page for n in "abc" for s in ("ori", "enc", "step000001", "inv"))
  assert summary.num_done == 3 and summary.num_inverted == 3 and summary.num_skipped == 0


def test_a_bad_file_is_skipped_and_named(job, image_dir):
  out, summary = job
  assert [Path(p).name for p, _ in summary.failed] == ["broken.png"]
  assert str(image_dir / "broken.png") in (out / "failed.txt").read_text()


def test_codes_match_the_engine_on_the_same_pixels(job, ckpt):
  """The job's code for an image is what invert() gives for that image's loaded pixels."""
  out, _ = job
  models = export.load_models(ckpt)
  x = np.asarray(Image.open(out / "c_ori.png"), np.float32) / 127.5 - 1
  settings = inversion.InvertSettings.from_config(models.config, **SETTINGS)
  result = inversion.invert(x[None], models, settings, progress=False)
  # _ori.png holds exactly the loaded uint8 pixels; c was inverted alone (its batch-mate was the broken file).
  np.testing.assert_allclose(np.load(out / "inverted_codes.npy")[2], result.codes[0], atol=1e-5)


def test_rerun_skips_done_images_and_a_lost_batch_is_redone(job, ckpt, image_dir, tmp_path, monkeypatch):
  out = tmp_path / "out"
  shutil.copytree(job[0], out)
  calls = []
  real_invert = inversion.invert
  monkeypatch.setattr(inversion, "invert", lambda x, *a, **k: calls.append(len(x)) or real_invert(x, *a, **k))
  before = {p.name: p.stat().st_mtime_ns for p in out.glob("*_inv.png")}
  summary = invert_job.run_inversion(ckpt, [image_dir], out, overrides=SETTINGS, progress=False)
  assert calls == [] and summary.num_skipped == 3 and summary.num_done == 3
  assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_inv.png")} == before
  # A run killed during its last batch has no part file for it: only that batch is redone.
  parts = sorted((out / inversion_folder.PARTS_DIR).glob("batch_*.npz"))
  last = np.load(parts[-1])["names"].tolist()
  parts[-1].unlink()
  summary = invert_job.run_inversion(ckpt, [image_dir], out, overrides=SETTINGS, progress=False)
  # (Its inputs are padded to the one compiled batch shape, so nothing recompiles for a short last batch.)
  padded = -(-SETTINGS["batch_size"] // len(jax.devices())) * len(jax.devices())
  assert calls == [padded] and summary.num_inverted == len(last) and summary.num_done == 3
  np.testing.assert_allclose(np.load(out / "inverted_codes.npy"), np.load(job[0] / "inverted_codes.npy"),
                             atol=1e-5)
  # Other settings on the same folder: refused unless --overwrite.
  with pytest.raises(invert_job.InvertJobError, match="--overwrite"):
    invert_job.run_inversion(ckpt, [image_dir], out, overrides=dict(SETTINGS, num_iterations=3), progress=False)


def test_checkpoint_problems_fail_before_any_work(tmp_path, config, image_dir):
  gen_only = export.create_models(config, jax.random.key(1), names=("generator",))
  path = export.save_models(tmp_path / "gen_only", config, gen_only.variables())
  out = tmp_path / "never"
  with pytest.raises(inversion.InversionError, match="needs an encoder"):
    invert_job.run_inversion(path, [image_dir], out, overrides=SETTINGS, progress=False)
  other = tiny.get_config()
  other.model.resolution = 16
  with pytest.raises(export.CheckpointError, match="resolution"):
    invert_job.run_inversion(path, [image_dir], out, config=other, overrides=SETTINGS, progress=False)
  assert not out.exists()


def test_invert_py_reports_a_missing_checkpoint_in_one_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, str(REPO / "invert.py"), "--checkpoint", str(tmp_path / "nope"),
                         "--images", str(tmp_path), "--output", str(tmp_path / "out")],
                        capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
  assert proc.returncode == 1  # nothing could be done (exit-code policy)
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("invert.py: error:") and "does not exist" in last, proc.stderr[-2000:]


def test_folder_inversion_splits_each_batch_over_all_8_devices(tmp_path, ckpt, image_dir, monkeypatch):
  # invert.py's job with no device choice: every batch's codes and Adam states live 1/8 on each device.
  assert len(jax.devices()) == 8
  seen = []
  run_chunk = inversion._Engine.run_chunk  # pylint: disable=protected-access

  def spy(self, state, batch, num_steps):
    seen.append((state["w"].shape, state["w"].sharding, batch["targets"].sharding))
    return run_chunk(self, state, batch, num_steps)

  monkeypatch.setattr(inversion._Engine, "run_chunk", spy)  # pylint: disable=protected-access
  summary = invert_job.run_inversion(ckpt, [image_dir], tmp_path / "out", overrides=SETTINGS, progress=False)
  assert summary.num_done == 3 and seen
  for shape, codes, targets in seen:
    assert shape[0] == 8 and len(codes.device_set) == 8 and len(targets.device_set) == 8  # batch 2 padded to 8
    assert codes.shard_shape(shape)[0] == 1 and tuple(codes.spec)[0] == "data"


# ----------------------------------------------------------------------------------------------------------
# Input policy (non-square, --crop, --align) and the out-of-domain check.


def test_non_square_inputs_are_stretched_and_the_run_says_so_once(job, image_dir):
  out, summary = job
  assert summary.notes == ["1 of 4 images are not square: stretched to 32x32 as the official code does (--crop "
                           "center cuts their central square instead; --align crops faces the FFHQ way)"]
  b = np.asarray(Image.open(image_dir / "b.png"))  # 48 high, 40 wide
  stretched = np.asarray(Image.fromarray(b).resize((32, 32), Image.Resampling.LANCZOS))
  np.testing.assert_array_equal(np.asarray(Image.open(out / "b_ori.png")), stretched)
  page = (out / "index.html").read_text()
  assert page.count("are not square") == 1 and "No out-of-domain check" in page
  assert summary.outside_domain == [] and summary.domain_note.startswith("No out-of-domain check")
  assert {r["domain"] for r in csv.DictReader(open(out / "metrics.csv"))} == {""}


def test_crop_center_cuts_the_central_square(ckpt, image_dir, tmp_path):
  summary = invert_job.run_inversion(ckpt, [image_dir / "b.png"], tmp_path / "out", overrides=SETTINGS,
                                     progress=False, crop="center")
  assert len(summary.notes) == 1 and "central square" in summary.notes[0]
  b = np.asarray(Image.open(image_dir / "b.png"))
  centre = np.asarray(Image.fromarray(b[4:44]).resize((32, 32), Image.Resampling.LANCZOS))
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "b_ori.png")), centre)
  with pytest.raises(invert_job.InvertJobError, match="crop 'middle' is unknown"):
    invert_job.crop_policy_note([image_dir / "b.png"], "middle", 32)
  assert invert_job.crop_policy_note([image_dir / "a.png"], "none", 32) is None  # Square inputs: nothing said.


def test_domain_calibration_flags_poor_reconstructions(job, ckpt, image_dir, tmp_path):
  """With a domain.json in the checkpoint, images below the threshold are flagged in the CSV, HTML and summary."""
  from idinvert_jax import domain_check
  out = tmp_path / "out"
  shutil.copytree(job[0], out)
  calibrated = tmp_path / "ckpt"
  shutil.copytree(ckpt, calibrated)
  psnr = {r["name"]: float(r["psnr"]) for r in csv.DictReader(open(out / "metrics.csv"))}
  worst = min(psnr, key=psnr.get)
  threshold = (psnr[worst] + min(v for k, v in psnr.items() if k != worst)) / 2
  domain_check.save(calibrated, domain_check.Calibration(
      thresholds={"indomain": threshold, "encoder": 0.0}, percentile=5, num_images=64, images="test images",
      settings={"num_iterations": 2}, psnr_range={}, command="test"))
  summary = invert_job.run_inversion(calibrated, [image_dir], out, overrides=SETTINGS, progress=False)
  assert summary.num_skipped == 3  # Resumed: the verdict needs no new inversion.
  assert len(summary.outside_domain) == 1 and summary.outside_domain[0].startswith(f"{worst}: outside the model")
  rows = {r["name"]: r["domain"] for r in csv.DictReader(open(out / "metrics.csv"))}
  assert rows == {n: "outside" if n == worst else "in" for n in psnr}
  page = (out / "index.html").read_text()
  assert page.count('<p class="warning">WARNING: outside the model') == 1
  assert "5th percentile of 64 held-out images" in page
  (calibrated / domain_check.CALIBRATION_FILE).write_text("{not json")
  with pytest.raises(domain_check.DomainError, match="recompute it with"):
    invert_job.run_inversion(calibrated, [image_dir], out, overrides=SETTINGS, progress=False)


def test_align_inverts_each_face_and_skips_photos_without_one(ckpt, tmp_path):
  from optional_deps import require
  require("dlib", "pip install -e .[align]")
  from matplotlib import cbook
  photos = tmp_path / "photos"
  photos.mkdir()
  with cbook.get_sample_data("grace_hopper.jpg") as f:
    (photos / "grace_hopper.jpg").write_bytes(f.read())
  Image.fromarray(np.full((60, 80, 3), 128, np.uint8)).save(photos / "wall.png")
  summary = invert_job.run_inversion(ckpt, [photos], tmp_path / "out", overrides=SETTINGS, progress=False,
                                     align=True)
  out = tmp_path / "out"
  assert summary.num_done == 1 and [Path(p).name for p, _ in summary.failed] == ["wall.png"]
  assert "no face found" in summary.failed[0][1] and "wall.png" in (out / "failed.txt").read_text()
  assert summary.notes[0].startswith("--align: 1 face(s) from 1 of 2 photo(s) cropped the FFHQ way")
  aligned = np.asarray(Image.open(out / "aligned" / "grace_hopper.png"))
  assert aligned.shape == (32, 32, 3)  # Aligned straight to the model's resolution: what it inverts.
  np.testing.assert_array_equal(np.asarray(Image.open(out / "grace_hopper_ori.png")), aligned)
  assert (out / "image_list.txt").read_text().strip() == str((out / "aligned" / "grace_hopper.png").resolve())


def test_non_finite_results_fail_the_image_and_are_retried_on_the_next_run(job, ckpt, image_dir, tmp_path,
                                                                           monkeypatch):
  """A diverged optimisation (NaN codes or an infinite loss) is a failure: named, not saved, not marked done."""
  real_invert = inversion.invert

  def diverging(x, *args, **kwargs):
    result = real_invert(x, *args, **kwargs)
    result.codes[::2] = np.nan  # every other row diverges
    result.losses["total"][1::2] = np.inf  # and the others' losses blow up
    return result

  out = tmp_path / "out"
  monkeypatch.setattr(inversion, "invert", diverging)
  summary = invert_job.run_inversion(ckpt, [image_dir], out, overrides=SETTINGS, progress=False)
  # Every loaded image diverges one way or the other; broken.png cannot be read.
  assert sorted(Path(p).name for p, _ in summary.failed) == ["a.png", "b.png", "broken.png", "c.png"]
  assert summary.num_inverted == 0 and summary.num_done == 0
  failed_txt = (out / "failed.txt").read_text()
  assert "a.png\tnon-finite codes or losses" in failed_txt and not list(out.glob("*_inv.png"))
  assert not list((out / inversion_folder.PARTS_DIR).glob("batch_*.npz"))
  monkeypatch.setattr(inversion, "invert", real_invert)
  summary = invert_job.run_inversion(ckpt, [image_dir], out, overrides=SETTINGS, progress=False)
  assert summary.num_inverted == 3 and summary.num_done == 3 and summary.num_skipped == 0
  np.testing.assert_allclose(np.load(out / "inverted_codes.npy"), np.load(job[0] / "inverted_codes.npy"),
                             atol=1e-5)
  assert np.isfinite(np.load(out / "inverted_codes.npy")).all()


def test_invert_py_exits_2_when_inputs_failed_and_lists_them(ckpt, image_dir, tmp_path):
  """Exit-code policy: 2 = finished but some inputs failed (failed.txt + index.html); a rerun counts right."""
  out = tmp_path / "out"
  args = [sys.executable, str(REPO / "invert.py"), "--checkpoint", str(ckpt), "--images", str(image_dir),
          "--output", str(out), "--num_iterations", "2", "--num_results", "2", "--batch_size", "2"]
  proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                        timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert f"3 images in {out}: 3 inverted now, 0 skipped as done, 1 failed" in proc.stdout
  broken = str(image_dir / "broken.png")
  failed_line = next(line for line in proc.stdout.splitlines() if line.startswith("FAILED"))
  assert failed_line.count(broken) == 1, failed_line  # the path once, not twice
  assert broken in (out / "failed.txt").read_text()
  page = (out / "index.html").read_text()
  assert "Failed inputs (1" in page and "broken.png" in page
  summary = invert_job.run_inversion(ckpt, [image_dir], out, overrides=SETTINGS, progress=False)
  assert invert_job.summary_line(summary) == f"3 images in {out}: 0 inverted now, 3 skipped as done, 1 failed"
  (image_dir.parent / "good_only").mkdir()
  shutil.copy(image_dir / "a.png", image_dir.parent / "good_only" / "a.png")
  proc = subprocess.run(args[:5] + [str(image_dir.parent / "good_only"), "--output", str(tmp_path / "good")]
                        + args[8:], capture_output=True, text=True, cwd=REPO, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0 and not (tmp_path / "good" / "failed.txt").exists(), proc.stderr[-2000:]


def test_symlink_loops_and_bad_output_paths_are_named_in_one_line(ckpt, image_dir, tmp_path, caplog):
  """A symlink loop (a file and a folder) inside the input folder fails that entry only; an --output that is a
  file or cannot be written is one line before any work."""
  photos = tmp_path / "photos"
  shutil.copytree(image_dir, photos)
  (photos / "broken.png").unlink()
  os.symlink("loop.png", photos / "loop.png")  # a file entry pointing at itself
  os.symlink(".", photos / "sub")  # a folder loop
  out = tmp_path / "out"
  summary = invert_job.run_inversion(ckpt, [photos], out, overrides=SETTINGS, progress=False)
  assert summary.num_inverted == 3 and [Path(p).name for p, _ in summary.failed] == ["loop.png"]
  assert "loop.png" in (out / "failed.txt").read_text()
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  with pytest.raises(invert_job.InvertJobError, match=r"a_file is a file, not a folder; give a folder for --output"):
    invert_job.run_inversion(ckpt, [photos], a_file, overrides=SETTINGS, progress=False)
  with pytest.raises(files.OutputFolderError, match=r"^.*inside: cannot write there .*choose another --output"):
    files.check_output_folder(a_file / "inside")
  if os.geteuid() != 0:  # root writes into read-only folders, so this part is checked for other users only
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(files.OutputFolderError, match=r"locked: cannot write there \(Permission denied\)"):
      invert_job.run_inversion(ckpt, [photos], locked, overrides=SETTINGS, progress=False)
