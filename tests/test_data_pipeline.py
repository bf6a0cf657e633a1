"""Training pipeline: global batches sharded over 8 devices, hosts partition the stream, exact resume, bad files."""
import io
import json

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from PIL import Image

from idinvert_jax.data import get_data_config, pipeline

RES = 16


def _indexed_array(tmp_path, num):
  """An .npy source whose image i is the constant value i (so batches reveal which examples they hold); the
  left column is 0, so a mirrored image is recognisable."""
  images = np.repeat(np.arange(num, dtype=np.uint8)[:, None, None, None], RES * RES * 3, axis=1)
  images = images.reshape(num, RES, RES, 3)
  images[:, :, 0] = 0
  path = tmp_path / "indexed.npy"
  np.save(path, images)
  return path


def _config(path, **fields):
  cfg = get_data_config()
  cfg.update(dict(source="array", path=str(path), num_threads=2, prefetch_buffer_size=4))
  cfg.update(fields)
  return cfg


def _ids(batch):
  """Example ids of a float batch [B, R, R, 3] built from `_indexed_array` (value at a non-zero column)."""
  return np.rint((np.asarray(batch)[:, 0, RES // 2, 0] + 1.0) * 127.5).astype(int)


@pytest.fixture(scope="module")
def mesh():
  assert len(jax.devices()) == 8
  return jax.make_mesh((8,), ("data",))


def test_global_batches_are_sharded_and_cover_each_example_once_per_epoch(tmp_path, mesh):
  num, batch = 48, 16
  it = pipeline.make_train_iterator(_config(_indexed_array(tmp_path, num)), RES, batch, mesh, seed=3, mirror=False)
  epochs = []
  for _ in range(2):
    seen = []
    for _ in range(num // batch):
      images = next(it)
      assert images.shape == (batch, RES, RES, 3) and images.dtype == np.float32
      assert images.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec("data")), images.ndim)
      shards = sorted(images.addressable_shards, key=lambda s: s.index[0].start)
      assert len(shards) == 8 and {s.device for s in shards} == set(jax.devices())
      per_device = [_ids(s.data) for s in shards]
      assert all(len(ids) == batch // 8 for ids in per_device)
      np.testing.assert_array_equal(np.concatenate(per_device), _ids(images))  # Shards tile the batch.
      seen.extend(_ids(images))
    assert sorted(seen) == list(range(num))  # Exactly once per epoch, nothing lost.
    epochs.append(seen)
  assert epochs[0] != epochs[1]  # Reshuffled every epoch.
  assert it.epoch == 2.0 and it.skipped == 0 and it.batches == 6


def test_hosts_read_disjoint_slices_of_the_same_global_batches(tmp_path):
  num, batch = 24, 8
  path = _indexed_array(tmp_path, num)
  single = pipeline.make_train_iterator(_config(path), RES, batch, None, seed=9, mirror=False)
  reference = [single.next_local()[1] for _ in range(6)]  # Two epochs.
  for hosts in (2, 4, 8):
    readers = [pipeline.make_train_iterator(_config(path), RES, batch, None, seed=9, mirror=False, process_index=p,
                                            process_count=hosts) for p in range(hosts)]
    for step in range(6):
      slices = [reader.next_local() for reader in readers]
      assert all(images.shape == (batch // hosts, RES, RES, 3) for images, _ in slices)
      np.testing.assert_array_equal(np.concatenate([ids for _, ids in slices]), reference[step])
      np.testing.assert_array_equal(np.concatenate([images[:, 0, RES // 2, 0] for images, _ in slices]),
                                    reference[step])
  assert sorted(np.concatenate(reference[:3])) == list(range(num))


def test_seed_changes_the_order_and_shuffle_off_reads_in_order(tmp_path):
  path = _indexed_array(tmp_path, 16)
  first = pipeline.make_train_iterator(_config(path), RES, 16, None, seed=1, mirror=False).next_local()[1]
  second = pipeline.make_train_iterator(_config(path), RES, 16, None, seed=2, mirror=False).next_local()[1]
  assert list(first) != list(second) and sorted(first) == sorted(second)
  ordered = pipeline.make_train_iterator(_config(path, shuffle=False), RES, 8, None, seed=1, mirror=False)
  np.testing.assert_array_equal(ordered.next_local()[1], np.arange(8))


def _folder_with_bad_files(tmp_path, num_good):
  folder = tmp_path / "photos"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(num_good):
    Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(folder / f"good_{i:02d}.png")
  (folder / "zero.png").write_bytes(b"")
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buffer, format="PNG")
  (folder / "truncated.png").write_bytes(buffer.getvalue()[:100])
  (folder / "text.png").write_text("hello")
  Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(folder / "tiny.png")
  return folder, ["zero.png", "truncated.png", "text.png", "tiny.png"]


def test_bad_files_are_skipped_counted_and_named(tmp_path, mesh):
  folder, bad = _folder_with_bad_files(tmp_path, num_good=12)
  it = pipeline.make_train_iterator(_config(folder, source="folder"), RES, 8, mesh, seed=0, mirror=False)
  assert len(it.source) == 16
  good = []
  for _ in range(3):  # 24 good examples = two epochs of the 12 good files; every bad file is met twice.
    local, indices = it.next_local()
    good.extend(indices)
  assert it.skipped == 8
  names = [it.source.paths[i].name for i in good]
  assert sorted(set(names)) == sorted(f"good_{i:02d}.png" for i in range(12)) and len(names) == 24
  reported = " ".join(it.failures)
  for name in bad:
    assert str(folder / name) in reported
  assert "8 bad images skipped" in it.summary()
  assert next(it).shape == (8, RES, RES, 3)


def test_all_bad_source_raises_instead_of_looping(tmp_path):
  folder = tmp_path / "bad"
  folder.mkdir()
  for i in range(3):
    (folder / f"b{i}.png").write_text("nope")
  it = pipeline.make_train_iterator(_config(folder, source="folder"), RES, 2, None, seed=0, mirror=False)
  with pytest.raises(ValueError, match=r"3 images in a row could not be used .*b\d.png"):
    it.next_local()


def test_resume_reproduces_the_uninterrupted_stream(tmp_path, mesh):
  folder, _ = _folder_with_bad_files(tmp_path, num_good=10)  # Bad files + mirroring make the state non-trivial.
  cfg = _config(folder, source="folder")
  uninterrupted = pipeline.make_train_iterator(cfg, RES, 8, mesh, seed=4, mirror=True)
  expected = [np.asarray(next(uninterrupted)) for _ in range(7)]

  first = pipeline.make_train_iterator(cfg, RES, 8, mesh, seed=4, mirror=True)
  for k in range(3):
    np.testing.assert_array_equal(np.asarray(next(first)), expected[k])
  state = json.loads(json.dumps(first.get_state()))  # Must survive a JSON round trip (trainer checkpoints).
  resumed = pipeline.make_train_iterator(cfg, RES, 8, mesh, seed=4, mirror=True)
  resumed.set_state(state)
  for k in range(3, 7):
    np.testing.assert_array_equal(np.asarray(next(resumed)), expected[k])
  assert resumed.skipped == uninterrupted.skipped and resumed.batches == 7


def test_mirror_flips_deterministically(tmp_path):
  path = _indexed_array(tmp_path, 32)
  plain = pipeline.make_train_iterator(_config(path), RES, 32, None, seed=5, mirror=False).next_local()[0]
  mirrored = pipeline.make_train_iterator(_config(path), RES, 32, None, seed=5, mirror=True).next_local()[0]
  again = pipeline.make_train_iterator(_config(path), RES, 32, None, seed=5, mirror=True).next_local()[0]
  np.testing.assert_array_equal(mirrored, again)
  flipped = np.array([not np.array_equal(m, p) for m, p in zip(mirrored, plain)])
  assert 6 <= flipped.sum() <= 26  # About half of 32.
  np.testing.assert_array_equal(mirrored[flipped], plain[flipped][:, :, ::-1])
  assert np.all(mirrored[flipped][:, :, -1] == 0)  # The dark column moved to the right edge.


def test_mirror_is_a_training_argument_not_a_data_setting(tmp_path):
  # One owner: config.train.<stage>.mirror, passed explicitly; config.data has no field that could disagree.
  assert "mirror" not in get_data_config()
  with pytest.raises(TypeError, match="mirror"):
    pipeline.make_train_iterator(_config(_indexed_array(tmp_path, 8)), RES, 8, None, seed=0)


def test_state_from_another_stream_is_rejected(tmp_path):
  path = _indexed_array(tmp_path, 16)
  state = pipeline.make_train_iterator(_config(path), RES, 8, None, seed=1, mirror=False).get_state()
  other = pipeline.make_train_iterator(_config(path), RES, 8, None, seed=2, mirror=False)
  with pytest.raises(ValueError, match="seed=1, this run has 2"):
    other.set_state(state)
  with pytest.raises(ValueError, match="version"):
    other.set_state({**state, "version": 99})


def test_batch_size_must_fit_devices_and_hosts(tmp_path, mesh):
  path = _indexed_array(tmp_path, 16)
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    pipeline.make_train_iterator(_config(path), RES, 12, mesh, seed=0, mirror=False)
  with pytest.raises(ValueError, match="multiple of the number of processes"):
    pipeline.make_train_iterator(_config(path), RES, 6, None, seed=0, mirror=False, process_count=4,
                                 process_index=0)
  with pytest.raises(ValueError, match="no 'data' axis"):
    pipeline.make_train_iterator(_config(path), RES, 8, jax.make_mesh((8,), ("batch",)), seed=0, mirror=False)


def test_synthetic_default_config_trains_out_of_the_box(mesh):
  cfg = get_data_config()
  cfg.synthetic_num = 16
  it = pipeline.make_train_iterator(cfg, 32, 8, mesh, seed=0, mirror=False)
  images = np.asarray(next(it))
  assert images.shape == (8, 32, 32, 3) and -1.0 <= images.min() < images.max() <= 1.0


def test_worker_processes_give_the_same_resumable_stream(mesh):
  # grain worker processes get pickled copies of the source (the synthetic one drops its cache on the way).
  cfg = get_data_config()
  cfg.synthetic_num = 24
  with pipeline.make_train_iterator(cfg, 32, 8, mesh, seed=6, mirror=False) as in_process:
    expected = [np.asarray(next(in_process)) for _ in range(4)]
  cfg.worker_count = 1
  with pipeline.make_train_iterator(cfg, 32, 8, mesh, seed=6, mirror=False) as workers:
    for k in range(2):
      np.testing.assert_array_equal(np.asarray(next(workers)), expected[k])
    state = json.loads(json.dumps(workers.get_state()))
  with pipeline.make_train_iterator(cfg, 32, 8, mesh, seed=6, mirror=False) as resumed:
    resumed.set_state(state)
    for k in range(2, 4):
      np.testing.assert_array_equal(np.asarray(next(resumed)), expected[k])
