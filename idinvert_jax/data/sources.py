"""Image sources behind one small interface: folders, path lists, .npz/.npy arrays, TFDS and synthetic faces.

An `ImageSource` is random access: `len(source)` images, `source.read(i) -> (name, uint8 [H, W, 3])` raising
`ImageError` for an unusable image. Sizes are the images' own (the synthetic source renders at the model
resolution); `preprocess.prepare_uint8` brings them to the model. `open_source(config.data, resolution)` picks
the source named by the config (see `get_data_config` in `idinvert_jax/data/__init__.py`); training and
inversion both go through it. `expand_inputs` turns command-line arguments (files, folders, .txt lists) into an
ordered, de-duplicated list of image paths. `config.data.subset` ("start:stop", Python slice syntax) restricts any
source to a contiguous range of its indices (`SubsetSource`), e.g. train on ":4923" and evaluate on "4923:".
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from idinvert_jax.data import preprocess, synthetic_faces
from idinvert_jax.data.preprocess import IMAGE_SUFFIXES, ImageError

SOURCE_TYPES = ("auto", "folder", "list", "array", "tfds", "synthetic")


class EmptySourceError(ValueError):
  """A source that holds no images."""


class InputNotFoundError(FileNotFoundError):
  """A path given by the user that does not exist."""


@runtime_checkable
class ImageSource(Protocol):
  """Random-access images: `read(i)` -> (name, uint8 RGB [H, W, 3]); raises ImageError for a bad image."""

  description: str

  def __len__(self) -> int:
    ...

  def read(self, index: int) -> tuple[str, np.ndarray]:
    ...


def _is_image_file(path: Path) -> bool:
  return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def scan_folder(folder: str | os.PathLike) -> list[Path]:
  """All image files under `folder` (recursive, hidden files and folders skipped), sorted by path."""
  folder = Path(folder)
  found = []

  def unreadable(error: OSError) -> None:  # The rest of the folder is still read; this part is named.
    logging.warning("skipping %s: %s", error.filename, error.strerror or error)

  for root, dirs, files in os.walk(folder, onerror=unreadable):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    found.extend(Path(root) / name for name in files if _is_image_file(Path(name)))
  return sorted(found)


def read_list_file(list_file: str | os.PathLike) -> list[Path]:
  """Paths listed one per line in a .txt file; relative paths are relative to the file. '#' starts a comment."""
  list_file = Path(list_file)
  paths = []
  for line in list_file.read_text(encoding="utf-8").splitlines():
    line = line.split("#", 1)[0].strip() if line.lstrip().startswith("#") else line.strip()
    if line:
      path = Path(line).expanduser()
      paths.append(path if path.is_absolute() else list_file.parent / path)
  return paths


def expand_inputs(paths: Sequence[str | os.PathLike]) -> list[Path]:
  """Files, folders (recursive, sorted) and .txt lists -> image paths in input order, without duplicates.

  Raises InputNotFoundError for a path that does not exist and EmptySourceError if nothing is found.
  """
  result, seen = [], set()
  for given in paths:
    path = Path(given).expanduser()
    if path.is_dir():
      expanded = scan_folder(path)
    elif path.is_file() and path.suffix.lower() == ".txt":
      expanded = read_list_file(path)
    elif path.is_file():
      expanded = [path]
    else:
      raise InputNotFoundError(f"{given}: no such file or folder; check the path")
    for item in expanded:
      key = os.path.realpath(item)
      if key not in seen:
        seen.add(key)
        result.append(item)
  if not result:
    raise EmptySourceError(f"{', '.join(map(str, paths)) or '(no inputs)'}: no images found; give image files "
                           f"({', '.join(IMAGE_SUFFIXES)}), folders holding them, or .txt lists of paths")
  return result


class FileSource:
  """Image files (from a folder or a list), decoded on `read`."""

  def __init__(self, paths: Sequence[str | os.PathLike], description: str,
               background: Sequence[int] = preprocess.WHITE):
    self.paths = [Path(p) for p in paths]
    self.description = description
    self.background = tuple(int(c) for c in background)
    if not self.paths:
      raise EmptySourceError(f"{description}: no images found; add {', '.join(IMAGE_SUFFIXES)} files or fix "
                             "data.path")

  def __len__(self) -> int:
    return len(self.paths)

  def read(self, index: int) -> tuple[str, np.ndarray]:
    path = self.paths[index]
    return str(path), preprocess.read_rgb(path, self.background)


def _rgb_from_channels(image: np.ndarray, name: str, background: Sequence[int]) -> np.ndarray:
  """uint8 [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] -> uint8 [H, W, 3] (alpha composited on background)."""
  if image.ndim == 2:
    image = image[..., None]
  channels = image.shape[-1]
  if channels == 1:
    return np.repeat(image, 3, axis=-1)
  if channels == 3:
    return np.asarray(image)
  if channels == 4:
    alpha = image[..., 3:].astype(np.float32) / 255.0
    rgb = image[..., :3].astype(np.float32) * alpha + np.asarray(background, np.float32) * (1.0 - alpha)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
  raise ImageError(name, f"has {channels} channels", "give 1 (gray), 3 (RGB) or 4 (RGBA) channels")


def _load_array(path: Path, key: str) -> np.ndarray:
  """Reads an .npy (memory-mapped) or one key of an .npz, never unpickling objects."""
  try:
    if path.suffix.lower() != ".npz":
      return np.load(path, mmap_mode="r", allow_pickle=False)  # Memory-mapped: big arrays stay on disk.
    with np.load(path, allow_pickle=False) as archive:
      if key not in archive.files:
        missing = f"no array named {key!r} (found {archive.files}); set data.npz_key"
      else:
        return archive[key]
  except Exception as e:  # noqa: BLE001 - bad zip, bad header, pickled object arrays: all the user's file.
    raise ValueError(f"{path}: cannot read the array ({e}); re-save it with numpy.save / numpy.savez "
                     "(uint8, allow_pickle=False)") from None
  raise ValueError(f"{path}: {missing}")


class ArraySource:
  """A uint8 array [N, H, W, C] from an .npy file or an .npz key (never unpickled)."""

  def __init__(self, path: str | os.PathLike, key: str = "images", background: Sequence[int] = preprocess.WHITE):
    path = Path(path)
    self.description = str(path)
    self.background = tuple(int(c) for c in background)
    if not path.is_file():
      raise InputNotFoundError(f"{path}: no such .npz/.npy file; check data.path")
    images = _load_array(path, key)
    if path.suffix.lower() == ".npz":
      self.description = f"{path}[{key}]"
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
      raise ValueError(f"{self.description}: expected uint8 images [N, H, W, C], got {images.dtype} "
                       f"{list(images.shape)}; convert with np.clip(x, 0, 255).astype(np.uint8)")
    if len(images) == 0:
      raise EmptySourceError(f"{self.description}: the array holds no images; fill it or fix data.path")
    self.images = images

  def __len__(self) -> int:
    return len(self.images)

  def read(self, index: int) -> tuple[str, np.ndarray]:
    name = f"{self.description}#{index}"
    return name, _rgb_from_channels(np.asarray(self.images[index]), name, self.background)


class TfdsSource:
  """A split of a prepared TFDS dataset, read with `tfds.data_source` (random access, no TensorFlow needed).

  `records` may be given directly (any sequence of dicts), which is how tests use it without TFDS files.
  """

  def __init__(self, name: str, split: str = "train", data_dir: str | None = None, image_key: str = "image",
               background: Sequence[int] = preprocess.WHITE, records: Sequence[dict[str, Any]] | None = None):
    self.description = f"tfds:{name}/{split}"
    self.image_key = image_key
    self.background = tuple(int(c) for c in background)
    self.records = _open_tfds(name, split, data_dir) if records is None else records
    if len(self.records) == 0:
      raise EmptySourceError(f"{self.description}: the split is empty; pick another data.tfds_split")

  def __len__(self) -> int:
    return len(self.records)

  def read(self, index: int) -> tuple[str, np.ndarray]:
    name = f"{self.description}#{index}"
    record = self.records[index]
    if self.image_key not in record:
      raise ValueError(f"{self.description}: records have no feature {self.image_key!r} (found "
                       f"{sorted(record)}); set data.tfds_image_key")
    image = record[self.image_key]
    if isinstance(image, bytes):  # Undecoded feature: decode with PIL like any file.
      return name, preprocess.to_rgb(preprocess.decode_image(image, name), self.background)
    image = np.asarray(image)
    if image.dtype != np.uint8:
      raise ImageError(name, f"image dtype is {image.dtype}, expected uint8", "use an 8-bit image feature")
    return name, _rgb_from_channels(image, name, self.background)


def tfds_prepare_hint(name: str, data_dir: str | None) -> str:
  """How to prepare a TFDS dataset on a machine with internet access."""
  where = data_dir or "~/tensorflow_datasets"
  return (f"prepare it on a machine with internet (needs tensorflow): `tfds build {name} --data_dir={where} "
          f"--file_format=array_record` or `tfds.builder({name!r}, data_dir={where!r}, "
          f"file_format='array_record').download_and_prepare()`, then copy {where} here and set "
          "data.tfds_data_dir")


def _open_tfds(name: str, split: str, data_dir: str | None):
  try:
    import tensorflow_datasets as tfds  # Imported lazily: it is slow to import and only needed here.
  except ImportError:
    raise ValueError(f"tfds:{name}: tensorflow-datasets is not installed; install it with "
                     "`pip install -e .[tfds]`") from None

  try:
    builder = tfds.builder(name, data_dir=data_dir or None, try_gcs=False)
  except Exception as e:  # noqa: BLE001 - DatasetNotFoundError and config errors.
    first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"tfds:{name}: {first_line}; check data.tfds_name (e.g. 'celeb_a', 'lsun/tower')") from None
  if not builder.is_prepared():
    raise FileNotFoundError(f"tfds:{name}: not prepared in {builder.data_dir}; " + tfds_prepare_hint(name, data_dir))
  try:
    return builder.as_data_source(split=split)
  except NotImplementedError:
    raise ValueError(f"tfds:{name}: prepared in {builder.data_dir} as TFRecord, which has no random access; "
                     + tfds_prepare_hint(name, data_dir)) from None
  except (KeyError, ValueError) as e:
    raise ValueError(f"tfds:{name}: no split {split!r} ({e}); set data.tfds_split to one of "
                     f"{sorted(builder.info.splits)}") from None


class SyntheticSource:
  """The procedural synthetic faces (see synthetic_faces.py), rendered on demand at the model resolution.

  Images are rendered in blocks of `block` consecutive indices (vectorised rendering is several times cheaper
  per image than one at a time) and kept while the whole dataset fits in `cache_bytes`; after the first epoch
  training reads from memory. Larger datasets are rendered one image per read.
  """

  def __init__(self, num: int, resolution: int, seed: int = 0, cache_bytes: int = 2 << 30, block: int = 256):
    if num <= 0:
      raise EmptySourceError(f"synthetic faces: num={num}; set data.synthetic_num to a positive count")
    synthetic_faces._check_resolution(resolution)  # pylint: disable=protected-access
    self.num, self.resolution, self.seed = int(num), int(resolution), int(seed)
    self.description = f"synthetic:seed={seed},num={num}"
    self.block = int(block)
    self.cached = self.num * self.resolution**2 * 3 <= cache_bytes
    self._init_cache()

  def _init_cache(self) -> None:
    self._blocks: dict[int, np.ndarray] = {}
    self._locks: dict[int, threading.Lock] = {}
    self._locks_lock = threading.Lock()

  def __getstate__(self):  # Worker processes get their own (empty) cache; locks do not pickle.
    state = dict(self.__dict__)
    for key in ("_blocks", "_locks", "_locks_lock"):
      state.pop(key)
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._init_cache()

  def __len__(self) -> int:
    return self.num

  def _block_images(self, block_index: int) -> np.ndarray:
    images = self._blocks.get(block_index)
    if images is not None:
      return images
    with self._locks_lock:
      lock = self._locks.setdefault(block_index, threading.Lock())
    with lock:  # One thread renders a block; others reading it wait instead of rendering it again.
      if block_index not in self._blocks:
        start = block_index * self.block
        count = min(self.block, self.num - start)
        self._blocks[block_index] = synthetic_faces.render(count, self.resolution, self.seed, start=start)[0]
      return self._blocks[block_index]

  def read(self, index: int) -> tuple[str, np.ndarray]:
    if not 0 <= index < self.num:
      raise IndexError(f"synthetic face {index} out of range 0..{self.num - 1}")
    name = f"synthetic_{self.seed}_{index:06d}"
    if self.cached:
      return name, self._block_images(index // self.block)[index % self.block]
    return name, synthetic_faces.render_one(index, self.resolution, self.seed)[0]

  def labels(self) -> dict[str, np.ndarray]:
    """Ground-truth attributes of all images (float32 [num] each)."""
    return synthetic_faces.sample_attributes(self.num, self.seed)


def parse_subset(spec: str, length: int, description: str = "the source") -> range:
  """`data.subset` -> the selected indices of 0..length-1 ('' = all).

  `spec` is a Python slice "start:stop" (either side optional, negatives count from the end: ":4923", "4923:",
  "-100:", "10:-10"). Raises a one-line ValueError for a malformed string, a step, or an empty selection.
  """
  text = str(spec).strip()
  if not text:
    return range(length)
  where = f"{description} has {length} images"
  example, tail = max(1, length * 9 // 10), max(1, length // 10)
  parts = text.split(":")
  if len(parts) == 3 and not parts[2].strip():  # "a:b:" is "a:b" in Python too.
    parts = parts[:2]
  if len(parts) == 3:
    raise ValueError(f"data.subset={spec!r} has a step, which is not supported ({where}); give a contiguous "
                     f"'start:stop' range such as ':{example}' or '{example}:'")
  try:
    if len(parts) != 2:
      raise ValueError
    start, stop = (int(part) if part.strip() else None for part in parts)
  except ValueError:
    raise ValueError(f"data.subset={spec!r} is not a 'start:stop' slice ({where}); use integers on either side "
                     f"of one colon, e.g. ':{example}' (first {example}), '{example}:' (the rest) or '-{tail}:' "
                     f"(last {tail})") from None
  selected = range(length)[start:stop]
  if len(selected) == 0:
    raise ValueError(f"data.subset={spec!r} selects no images ({where}); choose start < stop within "
                     f"-{length}..{length}, e.g. ':{example}' or '{example}:'")
  return selected


class SubsetSource:
  """A contiguous range of another source's indices (`config.data.subset`): image i is `base.read(indices[i])`.

  Names are the base source's (so array images keep their original index, e.g. "faces.npz[images]#4923").
  """

  def __init__(self, base: ImageSource, spec: str):
    self.base = base
    self.spec = str(spec).strip()
    self.indices = parse_subset(self.spec, len(base), base.description)
    self.description = f"{base.description}[{self.spec}]"

  def __len__(self) -> int:
    return len(self.indices)

  def read(self, index: int) -> tuple[str, np.ndarray]:
    if not 0 <= index < len(self.indices):
      raise IndexError(f"{self.description}: image {index} out of range 0..{len(self.indices) - 1}")
    return self.base.read(self.indices[index])


def base_index(source: ImageSource, index: int) -> int:
  """The index in the underlying (whole) dataset of `source` image `index` (differs only for a subset)."""
  return source.indices[index] if isinstance(source, SubsetSource) else index


def infer_source_type(path: str) -> str:
  """'auto' -> folder, list (.txt), array (.npz/.npy); no path -> synthetic."""
  if not path:
    return "synthetic"
  suffix = Path(path).suffix.lower()
  if suffix in (".npz", ".npy"):
    return "array"
  if suffix == ".txt":
    return "list"
  if Path(path).is_dir():
    return "folder"
  raise InputNotFoundError(f"{path}: not a folder, .txt list or .npz/.npy file; set data.path (or data.source)")


def open_source(data_cfg, resolution: int) -> ImageSource:
  """Opens the source described by `config.data` (fields: see `get_data_config`), restricted to `data.subset`."""
  source = _open_whole_source(data_cfg, resolution)
  subset = str(getattr(data_cfg, "subset", "") or "").strip()  # Configs saved before the field existed: all.
  return SubsetSource(source, subset) if subset else source


def _open_whole_source(data_cfg, resolution: int) -> ImageSource:
  kind = data_cfg.source
  if kind not in SOURCE_TYPES:
    raise ValueError(f"data.source={kind!r} is unknown; use one of {SOURCE_TYPES}")
  path = str(data_cfg.path or "")
  if kind == "auto":
    kind = infer_source_type(path)
  background = tuple(data_cfg.background)
  if kind in ("folder", "list", "array") and not path:
    raise ValueError(f"data.source={kind!r} needs data.path; set --config.data.path=...")
  if kind == "folder":
    if not Path(path).is_dir():
      raise InputNotFoundError(f"{path}: no such folder; check data.path")
    return FileSource(scan_folder(path), path, background)
  if kind == "list":
    if not Path(path).is_file():
      raise InputNotFoundError(f"{path}: no such list file; check data.path")
    return FileSource(read_list_file(path), path, background)
  if kind == "array":
    return ArraySource(path, data_cfg.npz_key, background)
  if kind == "tfds":
    if not data_cfg.tfds_name:
      raise ValueError("data.source='tfds' needs data.tfds_name (e.g. 'celeb_a' or 'lsun/tower')")
    return TfdsSource(data_cfg.tfds_name, data_cfg.tfds_split, data_cfg.tfds_data_dir or None,
                      data_cfg.tfds_image_key, background)
  return SyntheticSource(data_cfg.synthetic_num, resolution, data_cfg.synthetic_seed)


def read_prepared(source: ImageSource, index: int, resolution: int, resize: str = "center_crop",
                  resample: str = "lanczos", min_size: int | None = None) -> tuple[str, np.ndarray]:
  """source.read(index) brought to uint8 [resolution, resolution, 3]; raises ImageError."""
  name, image = source.read(index)
  return name, preprocess.prepare_uint8(image, name, resolution, resize, resample, min_size)


# ----------------------------------------------------------------------------------------------------------
# invert.py inputs: every source as one ordered, random-access list.

DATASET_PREFIXES = ("tfds:", "synthetic:")


def is_dataset_spec(spec: str | os.PathLike) -> bool:
  """Whether an --images entry names a whole data set (tfds:NAME/SPLIT, synthetic:N[:SEED], .npz/.npy array)."""
  text = str(spec)
  return text.startswith(DATASET_PREFIXES) or Path(text).suffix.lower() in (".npz", ".npy")


class ConcatSource:
  """Several sources one after the other: image i is read from the segment that holds it."""

  def __init__(self, sources: Sequence[ImageSource]):
    self.sources = list(sources)
    self.offsets = np.cumsum([0] + [len(s) for s in self.sources])
    self.description = " + ".join(s.description for s in self.sources)

  def __len__(self) -> int:
    return int(self.offsets[-1])

  def read(self, index: int) -> tuple[str, np.ndarray]:
    if not 0 <= index < len(self):
      raise IndexError(f"{self.description}: image {index} out of range 0..{len(self) - 1}")
    segment = int(np.searchsorted(self.offsets, index, side="right")) - 1
    return self.sources[segment].read(index - int(self.offsets[segment]))


def _dataset_segment(spec: str, resolution: int, data_cfg) -> ImageSource:
  background = tuple(getattr(data_cfg, "background", preprocess.WHITE)) if data_cfg is not None else preprocess.WHITE
  if spec.startswith("tfds:"):
    name, _, split = spec[len("tfds:"):].rpartition("/")
    if not name or not split:
      raise ValueError(f"{spec}: name a split, e.g. tfds:celeb_a/train or tfds:lsun/tower/train")
    data_dir = str(getattr(data_cfg, "tfds_data_dir", "") or "") if data_cfg is not None else ""
    image_key = str(getattr(data_cfg, "tfds_image_key", "image")) if data_cfg is not None else "image"
    return TfdsSource(name, split, data_dir or None, image_key, background)
  if spec.startswith("synthetic:"):
    parts = spec[len("synthetic:"):].split(":")
    try:
      num, seed = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
      if len(parts) > 2:
        raise ValueError
    except ValueError:
      raise ValueError(f"{spec}: write synthetic:COUNT or synthetic:COUNT:SEED, e.g. synthetic:1000") from None
    return SyntheticSource(num, resolution, seed)
  key = str(getattr(data_cfg, "npz_key", "images")) if data_cfg is not None else "images"
  return ArraySource(spec, key, background)


def input_segments(specs: Sequence[str | os.PathLike]) -> list[dict]:
  """--images entries grouped into segments: consecutive files/folders/.txt lists form one 'files' segment, each
  data set entry (.npz/.npy, tfds:, synthetic:) one 'dataset' segment."""
  segments: list[dict] = []
  for spec in map(str, specs):
    if is_dataset_spec(spec):
      segments.append({"kind": "dataset", "spec": spec})
    elif segments and segments[-1]["kind"] == "files":
      segments[-1]["specs"].append(spec)
    else:
      segments.append({"kind": "files", "specs": [spec]})
  if not segments:
    raise EmptySourceError("no inputs given; pass image files, folders, .txt lists, .npz/.npy arrays, "
                           "tfds:NAME/SPLIT or synthetic:COUNT")
  return segments


def open_inputs(specs: Sequence[str | os.PathLike], resolution: int, data_cfg=None) -> tuple[ImageSource, list]:
  """invert.py --images entries as one random-access source in input order, and its segments (for a manifest).

  Entries: image files, folders, .txt lists (listed as `expand_inputs` does, by real path), .npz/.npy uint8
  arrays (`data_cfg.npz_key`), `tfds:NAME/SPLIT` (a prepared TFDS data set in `data_cfg.tfds_data_dir`) and
  `synthetic:COUNT[:SEED]`. Image names are the files' real paths and '<data set>#<index>' otherwise.
  """
  return open_segments(input_segments(specs), resolution, data_cfg)


def open_segments(segments: Sequence[dict], resolution: int, data_cfg=None,
                  names: Sequence[str] | None = None) -> tuple[ImageSource, list[dict]]:
  """The source of `input_segments` (each gets its 'count'). With `names` (a manifest's input list, segments
  with counts) the files segments take their paths from it instead of scanning the folders again, and every
  segment must still hold `count` images."""
  background = tuple(getattr(data_cfg, "background", preprocess.WHITE)) if data_cfg is not None else preprocess.WHITE
  sources, resolved, start = [], [], 0
  for segment in segments:
    segment = dict(segment)
    if segment["kind"] == "files":
      if names is None:
        paths = [os.path.realpath(p) for p in expand_inputs(segment["specs"])]
      else:
        paths = list(names[start:start + int(segment["count"])])
      source: ImageSource = FileSource(paths, ", ".join(segment["specs"]), background)
    else:
      source = _dataset_segment(segment["spec"], resolution, data_cfg)
    if "count" in segment and int(segment["count"]) != len(source):
      raise ValueError(f"{source.description}: holds {len(source)} images but the output folder's manifest "
                       f"says {segment['count']}; the inputs changed - pass the same inputs or another --output")
    segment["count"] = len(source)
    start += len(source)
    sources.append(source)
    resolved.append(segment)
  return (sources[0] if len(sources) == 1 else ConcatSource(sources)), resolved


def image_names(source: ImageSource) -> list[str]:
  """The name `source.read(i)` gives each image, without reading any image."""
  if isinstance(source, ConcatSource):
    return [name for s in source.sources for name in image_names(s)]
  if isinstance(source, FileSource):
    return [str(p) for p in source.paths]
  if isinstance(source, SyntheticSource):
    return [f"synthetic_{source.seed}_{i:06d}" for i in range(len(source))]
  return [f"{source.description}#{i}" for i in range(len(source))]
