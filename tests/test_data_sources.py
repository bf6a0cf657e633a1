"""Every image source yields the same preprocessed array for the same image; inputs expand predictably; user
errors (empty folder, missing path, unprepared TFDS dataset, bad arrays) are one-line messages naming the path."""
import os
import pickle
import socket
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from idinvert_jax.data import __main__ as data_cli
from idinvert_jax.data import get_data_config, pipeline, preprocess, sources, synthetic_faces
from idinvert_jax.data.preprocess import ImageError

RESOLUTION, SEED, NUM = 32, 5, 6


@pytest.fixture(scope="module")
def faces():
  images, _ = synthetic_faces.render(NUM, RESOLUTION, SEED)
  return images


@pytest.fixture()
def no_network(monkeypatch):
  """Fails any attempt to open a network connection (nothing here may download)."""

  def refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)


def _config(**fields):
  cfg = get_data_config()
  cfg.update(fields)
  return cfg


def _prepared(source, index):
  return preprocess.to_float(sources.read_prepared(source, index, RESOLUTION, resize="center_crop")[1])


def test_all_sources_give_identical_arrays(tmp_path, faces):
  # Folder (nested, so the scan must recurse), .txt list with relative paths, .npz (via the export CLI), .npy.
  folder = tmp_path / "folder"
  for i, image in enumerate(faces):
    (folder / f"sub{i % 2}").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"sub{i % 2}" / f"face{i}.png")
  listed = sorted(folder.rglob("*.png"), key=lambda p: int(p.stem[4:]))
  (tmp_path / "list.txt").write_text("# faces\n" + "\n".join(str(p.relative_to(tmp_path)) for p in listed) + "\n")
  assert data_cli.main(["export-synthetic", "--num", str(NUM), "--resolution", str(RESOLUTION), "--seed",
                        str(SEED), "--output", str(tmp_path / "faces.npz")]) == 0
  np.save(tmp_path / "faces.npy", faces)

  expected = preprocess.to_float(faces)
  opened = {
      "synthetic": sources.open_source(_config(synthetic_num=NUM, synthetic_seed=SEED), RESOLUTION),
      "list": sources.open_source(_config(source="list", path=str(tmp_path / "list.txt")), RESOLUTION),
      "npz": sources.open_source(_config(source="auto", path=str(tmp_path / "faces.npz")), RESOLUTION),
      "npy": sources.open_source(_config(source="array", path=str(tmp_path / "faces.npy")), RESOLUTION),
      "tfds": sources.TfdsSource("fake", records=[{"image": image} for image in faces]),
  }
  for name, source in opened.items():
    assert isinstance(source, sources.ImageSource)
    assert len(source) == NUM, name
    for i in range(NUM):
      np.testing.assert_array_equal(_prepared(source, i), expected[i], err_msg=f"{name} image {i}")
  # The folder is read in sorted path order: sub0/face0, sub0/face2, ..., sub1/face1, ...
  folder_source = sources.open_source(_config(source="folder", path=str(folder)), RESOLUTION)
  order = [int(p.stem[4:]) for p in folder_source.paths]
  assert order == [0, 2, 4, 1, 3, 5]
  for position, i in enumerate(order):
    np.testing.assert_array_equal(_prepared(folder_source, position), expected[i])
  # Inversion's loader agrees with the sources (plain resize is the identity at the native resolution).
  np.testing.assert_array_equal(preprocess.load_image(listed[3], RESOLUTION), expected[3])


def test_array_channels_and_tfds_encoded_images(tmp_path):
  gray = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 1), dtype=np.uint8)
  np.savez(tmp_path / "gray.npz", pictures=gray)
  source = sources.ArraySource(tmp_path / "gray.npz", key="pictures")
  np.testing.assert_array_equal(source.read(1)[1], np.repeat(gray[1], 3, axis=-1))
  rgba = np.zeros((1, 4, 4, 4), np.uint8)
  rgba[..., 3] = 0
  np.save(tmp_path / "rgba.npy", rgba)
  np.testing.assert_array_equal(sources.ArraySource(tmp_path / "rgba.npy").read(0)[1], 255)
  # TFDS features left undecoded (bytes) are decoded like files.
  image = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  Image.fromarray(image).save(tmp_path / "e.png")
  tfds_source = sources.TfdsSource("fake", image_key="img", records=[{"img": (tmp_path / "e.png").read_bytes()}])
  np.testing.assert_array_equal(tfds_source.read(0)[1], image)
  with pytest.raises(ValueError, match="tfds_image_key"):
    sources.TfdsSource("fake", records=[{"img": image}]).read(0)


def test_bad_arrays_are_clear_errors(tmp_path):
  np.savez(tmp_path / "a.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match=r"no array named 'faces'.*npz_key"):
    sources.ArraySource(tmp_path / "a.npz", key="faces")
  np.save(tmp_path / "f.npy", np.zeros((2, 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match="expected uint8"):
    sources.ArraySource(tmp_path / "f.npy")
  np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
  with pytest.raises(ValueError, match="obj.npy: cannot read"):
    sources.ArraySource(tmp_path / "obj.npy")  # Never unpickled.
  np.save(tmp_path / "empty.npy", np.zeros((0, 8, 8, 3), np.uint8))
  with pytest.raises(sources.EmptySourceError, match="empty.npy"):
    sources.ArraySource(tmp_path / "empty.npy")
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    sources.open_source(_config(source="array", path=str(tmp_path / "missing.npz")), RESOLUTION)


def test_folder_scan_finds_all_formats_and_skips_hidden(tmp_path):
  image = Image.fromarray(np.full((16, 16, 3), 90, np.uint8))
  for name in ("a.png", "b.JPG", "c.jpeg", "d.webp", "e.bmp", "nested/f.png", ".hidden.png", ".cache/g.png"):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    image.save(tmp_path / name, format={"jpg": "JPEG", "jpeg": "JPEG"}.get(name.split(".")[-1].lower()))
  (tmp_path / "notes.txt").write_text("not listed")
  found = [p.relative_to(tmp_path).as_posix() for p in sources.scan_folder(tmp_path)]
  assert found == ["a.png", "b.JPG", "c.jpeg", "d.webp", "e.bmp", "nested/f.png"]
  source = sources.open_source(_config(source="auto", path=str(tmp_path)), RESOLUTION)
  for i in range(len(source)):
    assert np.abs(source.read(i)[1].astype(int) - 90).max() <= 2  # JPEG/WebP are lossy.


def test_expand_inputs_orders_and_deduplicates(tmp_path):
  for name in ("x/2.png", "x/1.png", "x/sub/3.png", "y.png"):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
  (tmp_path / "list.txt").write_text("y.png\n\nx/1.png\n")
  expanded = sources.expand_inputs([tmp_path / "list.txt", tmp_path / "x", str(tmp_path / "y.png")])
  assert [p.relative_to(tmp_path).as_posix() for p in expanded] == ["y.png", "x/1.png", "x/2.png", "x/sub/3.png"]
  with pytest.raises(sources.InputNotFoundError, match="nope.png: no such file"):
    sources.expand_inputs([tmp_path / "y.png", tmp_path / "nope.png"])


def test_empty_folder_is_an_error_naming_it(tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "readme.md").write_text("no images here")
  with pytest.raises(sources.EmptySourceError, match=str(tmp_path / "empty")):
    sources.open_source(_config(source="folder", path=str(tmp_path / "empty")), RESOLUTION)
  with pytest.raises(sources.EmptySourceError, match="no images found"):
    sources.expand_inputs([tmp_path / "empty"])
  (tmp_path / "empty.txt").write_text("\n# nothing\n")
  with pytest.raises(sources.EmptySourceError, match="empty.txt"):
    sources.open_source(_config(source="list", path=str(tmp_path / "empty.txt")), RESOLUTION)


def test_bad_file_in_a_folder_names_its_path(tmp_path):
  (tmp_path / "broken.png").write_text("not a png")
  source = sources.open_source(_config(source="folder", path=str(tmp_path)), RESOLUTION)
  with pytest.raises(ImageError, match=f"{tmp_path / 'broken.png'}: not an image"):
    source.read(0)


def test_tfds_not_prepared_says_how_to_prepare(tmp_path, no_network):
  data_dir = tmp_path / "tfds"
  cfg = _config(source="tfds", tfds_name="celeb_a", tfds_data_dir=str(data_dir))
  with pytest.raises(FileNotFoundError) as info:
    sources.open_source(cfg, RESOLUTION)
  message = str(info.value)
  assert "not prepared" in message and f"tfds build celeb_a --data_dir={data_dir}" in message
  assert "download_and_prepare()" in message and "\n" not in message
  assert not any(data_dir.rglob("*.array_record*"))  # Nothing was fetched.
  with pytest.raises(ValueError, match="tfds_name"):
    sources.open_source(_config(source="tfds", tfds_name="no_such_dataset_xyz", tfds_data_dir=str(data_dir)),
                        RESOLUTION)


def test_tfds_without_the_extra_names_the_install(tmp_path, monkeypatch):
  import sys
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import -> ImportError
  with pytest.raises(ValueError, match=r"tensorflow-datasets is not installed; install it with `pip install -e "
                                       r"\.\[tfds\]`"):
    sources.open_source(_config(source="tfds", tfds_name="celeb_a", tfds_data_dir=str(tmp_path)), RESOLUTION)


def test_config_errors_are_clear():
  with pytest.raises(ValueError, match="data.source='zip' is unknown"):
    sources.open_source(_config(source="zip"), RESOLUTION)
  with pytest.raises(ValueError, match="needs data.path"):
    sources.open_source(_config(source="folder"), RESOLUTION)
  with pytest.raises(ValueError, match="tfds_name"):
    sources.open_source(_config(source="tfds"), RESOLUTION)
  with pytest.raises(sources.EmptySourceError, match="synthetic_num"):
    sources.open_source(_config(synthetic_num=0), RESOLUTION)
  with pytest.raises(ValueError, match="32...256"):
    sources.open_source(_config(), 16)


def test_synthetic_source_labels_match_renderer():
  source = sources.open_source(_config(synthetic_num=4, synthetic_seed=SEED), RESOLUTION)
  images, labels = synthetic_faces.render(4, RESOLUTION, SEED)
  for name, values in source.labels().items():
    np.testing.assert_array_equal(values, labels[name])
  np.testing.assert_array_equal(source.read(3)[1], images[3])


def test_synthetic_block_cache_matches_one_by_one_rendering():
  cached = sources.SyntheticSource(10, RESOLUTION, SEED, block=4)
  uncached = sources.SyntheticSource(10, RESOLUTION, SEED, cache_bytes=0)
  assert cached.cached and not uncached.cached
  for index in (9, 0, 3, 4, 8, 9):  # Out of order, across block boundaries, the short last block.
    np.testing.assert_array_equal(cached.read(index)[1], uncached.read(index)[1])
    assert cached.read(index)[0] == uncached.read(index)[0] == f"synthetic_{SEED}_{index:06d}"
  assert sorted(cached._blocks) == [0, 1, 2]  # pylint: disable=protected-access
  clone = pickle.loads(pickle.dumps(cached))  # As sent to grain worker processes: the cache is not copied.
  assert clone._blocks == {}  # pylint: disable=protected-access
  np.testing.assert_array_equal(clone.read(5)[1], uncached.read(5)[1])
  with pytest.raises(IndexError):
    cached.read(10)


# --- data.subset: a held-out split of any source, and `python -m idinvert_jax.data export`.


@pytest.mark.parametrize("spec, expected", [
    ("", list(range(10))), (":4", [0, 1, 2, 3]), ("4:", [4, 5, 6, 7, 8, 9]), ("-3:", [7, 8, 9]),
    (":-8", [0, 1]), (" 2 : 5 ", [2, 3, 4]), ("-100:", list(range(10))), ("0:100", list(range(10))),
    ("1:2:", [1]), (":", list(range(10))), ("-4:-2", [6, 7]),
])
def test_subset_parses_python_slices(spec, expected):
  assert list(sources.parse_subset(spec, 10)) == expected


@pytest.mark.parametrize("spec, problem", [
    ("::2", "has a step"), ("1:9:3", "has a step"), ("5", "is not a 'start:stop' slice"),
    ("a:", "is not a 'start:stop' slice"), ("1.5:", "is not a 'start:stop' slice"),
    ("1:2:3:4", "is not a 'start:stop' slice"), ("5:5", "selects no images"), ("8:2", "selects no images"),
    ("10:", "selects no images"), (":-10", "selects no images"),
])
def test_subset_errors_name_the_field_value_length_and_fix(spec, problem):
  with pytest.raises(ValueError) as info:
    sources.parse_subset(spec, 10, "faces.npz[images]")
  message = str(info.value)
  assert message.startswith(f"data.subset={spec!r} {problem}") and "\n" not in message
  assert "faces.npz[images] has 10 images" in message and "':9'" in message  # The fix: an example that works.


def test_subset_of_an_array_source_maps_indices(tmp_path):
  images = np.random.default_rng(2).integers(0, 256, (7, 6, 5, 3), dtype=np.uint8)
  np.savez(tmp_path / "faces.npz", images=images)
  source = sources.open_source(_config(source="auto", path=str(tmp_path / "faces.npz"), subset="4:"), RESOLUTION)
  assert isinstance(source, sources.ImageSource) and len(source) == 3
  assert source.description == f"{tmp_path / 'faces.npz'}[images][4:]"
  for i in range(3):
    name, image = source.read(i)
    np.testing.assert_array_equal(image, images[4 + i])
    assert name.endswith(f"#{4 + i}") and sources.base_index(source, i) == 4 + i
  with pytest.raises(IndexError):
    source.read(3)
  first = sources.open_source(_config(source="array", path=str(tmp_path / "faces.npz"), subset=":-3"), RESOLUTION)
  assert [sources.base_index(first, i) for i in range(len(first))] == [0, 1, 2, 3]  # The two halves partition.
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(source)).read(2)[1], images[6])  # For grain workers.
  with pytest.raises(ValueError, match=r"data.subset='9:'.*faces.npz\[images\] has 7 images"):
    sources.open_source(_config(source="array", path=str(tmp_path / "faces.npz"), subset="9:"), RESOLUTION)
  # A config saved before data.subset existed opens the whole source.
  old = get_data_config().to_dict()
  old.pop("subset")
  old.update(source="array", path=str(tmp_path / "faces.npz"))
  assert len(sources.open_source(ml_collections.ConfigDict(old), RESOLUTION)) == 7


def test_subset_of_the_synthetic_and_folder_sources(tmp_path, faces):
  source = sources.open_source(_config(synthetic_num=NUM, synthetic_seed=SEED, subset="-2:"), RESOLUTION)
  assert len(source) == 2 and source.description == f"synthetic:seed={SEED},num={NUM}[-2:]"
  for i, index in enumerate((NUM - 2, NUM - 1)):
    name, image = source.read(i)
    assert name == f"synthetic_{SEED}_{index:06d}"
    np.testing.assert_array_equal(image, faces[index])
  for i, image in enumerate(faces):
    Image.fromarray(image).save(tmp_path / f"face{i}.png")
  folder = sources.open_source(_config(source="folder", path=str(tmp_path), subset="1:3"), RESOLUTION)
  assert [Path(folder.read(i)[0]).name for i in range(len(folder))] == ["face1.png", "face2.png"]
  np.testing.assert_array_equal(folder.read(1)[1], faces[2])


def test_export_writes_a_subset_as_pngs(tmp_path, capsys):
  images = np.random.default_rng(3).integers(0, 256, (5, 10, 14, 3), dtype=np.uint8)  # Not square.
  np.savez(tmp_path / "data.npz", images=images)
  out = tmp_path / "heldout"
  assert data_cli.main(["export", "--path", str(tmp_path / "data.npz"), "--subset", "3:", "--output", str(out)]) == 0
  assert "wrote 2 images" in capsys.readouterr().out
  assert sorted(p.name for p in out.iterdir()) == ["00003.png", "00004.png", "index.csv"]
  for index in (3, 4):
    np.testing.assert_array_equal(np.asarray(Image.open(out / f"{index:05d}.png")), images[index])
  rows = (out / "index.csv").read_text().splitlines()
  assert rows[0] == "file,index,source_name" and rows[1].startswith("00003.png,3,") and len(rows) == 3
  assert [p.name for p in sources.expand_inputs([out])] == ["00003.png", "00004.png"]  # What invert.py reads.
  # --resolution: prepared exactly as training prepares them (config.data defaults: centre crop + resize).
  cfg = get_data_config()
  assert data_cli.main(["export", "--path", str(tmp_path / "data.npz"), "--subset=:-4", "--resolution", "8",
                        "--output", str(tmp_path / "small")]) == 0
  assert sorted(p.name for p in (tmp_path / "small").glob("*.png")) == ["00000.png"]
  small = np.asarray(Image.open(tmp_path / "small" / "00000.png"))
  expected = preprocess.prepare_uint8(images[0], "x", 8, cfg.resize, cfg.resample)
  assert small.shape == (8, 8, 3)
  np.testing.assert_array_equal(small, expected)


@pytest.mark.parametrize("args, fix", [
    (["--path", "{tmp}/missing.npz"], "check --path"),
    (["--path", "{tmp}/nowhere"], "set --path"),
    (["--path", "{tmp}/data.npz", "--subset", "::2"], "--subset='::2' has a step"),
    (["--path", "{tmp}/data.npz", "--npz_key", "faces"], "set --npz_key"),
    (["--path", "{tmp}/data.npz", "--resolution", "0"], "--resolution 0 must be positive"),
    (["--path", "{tmp}/data.npz", "--source", "folder"], "no such folder; check --path"),
])
def test_export_errors_are_one_line_naming_the_flag(tmp_path, capsys, args, fix):
  np.savez(tmp_path / "data.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
  argv = ["export"] + [a.format(tmp=tmp_path) for a in args] + ["--output", str(tmp_path / "out")]
  assert data_cli.main(argv) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and fix in err and err.count("\n") == 1
  assert not list(tmp_path.glob("out/*.png"))
  assert data_cli.main(["export", "--path", str(tmp_path / "data.npz"), "--output", str(tmp_path / "x.png")]) == 1
  assert "give a folder for --output" in capsys.readouterr().err


def test_training_iterator_reads_only_the_subset(tmp_path):
  values = np.arange(12, dtype=np.uint8) * 10  # Image i is the constant 10 * i.
  np.save(tmp_path / "indexed.npy", np.broadcast_to(values[:, None, None, None], (12, 8, 8, 3)).copy())
  cfg = _config(source="array", path=str(tmp_path / "indexed.npy"), subset="7:", num_threads=2,
                prefetch_buffer_size=4)
  with pipeline.make_train_iterator(cfg, 8, 5, None, seed=1, mirror=True) as iterator:
    assert iterator.num_examples == 5 and iterator.source.description.endswith("indexed.npy[7:]")
    for _ in range(3):  # Three epochs of one batch each: exactly the five held-in images, no others.
      images, indices = iterator.next_local()
      assert images.shape == (5, 8, 8, 3)
      assert sorted(images[:, 0, 0, 0] // 10) == [7, 8, 9, 10, 11]
      assert sorted(indices) == [0, 1, 2, 3, 4]  # Indices of the subset source.


def test_export_exit_codes_follow_the_policy(tmp_path, capsys):
  """0 all exported; 2 finished but some inputs failed (failed.txt in the output folder); 1 usage errors."""
  folder = tmp_path / "photos"
  folder.mkdir()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "good.png")
  (folder / "broken.png").write_text("not a png")
  out = tmp_path / "out"
  assert data_cli.main(["export", "--path", str(folder), "--output", str(out)]) == 2
  assert "broken.png" in (out / data_cli.FAILED_FILE).read_text() and "failed.txt" in capsys.readouterr().out
  (folder / "broken.png").unlink()
  assert data_cli.main(["export", "--path", str(folder), "--output", str(out)]) == 0
  assert not (out / data_cli.FAILED_FILE).exists()  # nothing failed any more
  with pytest.raises(SystemExit) as usage:
    data_cli.main(["export", "--path", str(folder)])  # --output missing
  assert usage.value.code == 1


def test_unreadable_subfolders_are_named_and_the_rest_is_read(tmp_path, caplog, monkeypatch):
  (tmp_path / "ok").mkdir()
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "ok" / "a.png")
  (tmp_path / "locked").mkdir()
  real_scandir = os.scandir

  def scandir(path="."):  # as os.scandir on a folder without read permission (root can read any folder)
    if str(path).endswith("locked"):
      raise PermissionError(13, "Permission denied", str(path))
    return real_scandir(path)

  monkeypatch.setattr(os, "scandir", scandir)
  assert [p.name for p in sources.expand_inputs([tmp_path])] == ["a.png"]
  assert f"skipping {tmp_path / 'locked'}: Permission denied" in caplog.text
