"""Data: image sources (folder, list, npz/npy, TFDS, synthetic faces), preprocessing and the training pipeline.

- `get_data_config()`: defaults of `config.data` (which source, how to preprocess).
- `sources.open_source(config.data, resolution)`, `sources.expand_inputs(paths)`: the `ImageSource` layer;
  `config.data.subset` ("start:stop") selects a held-out split of any source.
- `preprocess.load_image(path, resolution, resize='resize')`, `preprocess.load_images(...)`: inversion inputs.
- `pipeline.make_train_iterator(config.data, resolution, global_batch_size, mesh, seed, mirror=...)`: sharded
  training batches with a resumable, JSON-serialisable state (mirror comes from config.train.<stage>.mirror).
- `synthetic_faces`: the embedded labelled dataset; attributes are documented in its module docstring.
"""
import ml_collections

from idinvert_jax.data.preprocess import ImageError, load_image, load_images
from idinvert_jax.data.sources import EmptySourceError, ImageSource, InputNotFoundError, expand_inputs, open_source


def get_data_config() -> ml_collections.ConfigDict:
  """Defaults for `config.data`; every field can be set with --config.data.<field>=... ."""
  cfg = ml_collections.ConfigDict()
  # Which images: 'synthetic' (default, no download), 'folder' (recursive png/jpg/jpeg/webp/bmp), 'list'
  # (.txt of paths relative to the file), 'array' (.npz key or .npy, uint8 [N, H, W, C]), 'tfds', or 'auto'
  # (decided from `path`: folder, .txt, .npz/.npy; empty path -> synthetic).
  cfg.source = "synthetic"
  cfg.path = ""
  cfg.npz_key = "images"
  # Which part of the source, for a held-out split: a Python slice "start:stop" over the source's image indices
  # (either side optional, negatives count from the end; no step). '' = all images. E.g. train with
  # subset=':4923' and evaluate on subset='4923:' (export it with `python -m idinvert_jax.data export`). Works for
  # every source (folder order is sorted paths; synthetic indices are 0..synthetic_num-1).
  cfg.subset = ""
  # TFDS (e.g. tfds_name='celeb_a' or 'lsun/tower'); must be prepared in array_record format in tfds_data_dir
  # ('' = the TFDS default ~/tensorflow_datasets). Nothing is ever downloaded by this code.
  cfg.tfds_name = ""
  cfg.tfds_split = "train"
  cfg.tfds_data_dir = ""
  cfg.tfds_image_key = "image"
  # Synthetic faces: images 0..synthetic_num-1 of seed synthetic_seed, rendered at the model resolution.
  cfg.synthetic_num = 10000
  cfg.synthetic_seed = 0
  # Preprocessing. Training default: centre crop (keeps the aspect ratio); inversion uses a plain resize like
  # the official invert.py (see preprocess.py). Resampling: 'lanczos' | 'area' | 'bilinear' | 'bicubic'.
  cfg.resize = "center_crop"
  cfg.resample = "lanczos"
  cfg.background = (255, 255, 255)  # RGB behind transparent pixels.
  cfg.min_size_fraction = 0.25  # Images with a side < fraction * resolution are rejected as too small.
  # No `mirror` here: horizontal flips are a training setting with one owner, config.train.<stage>.mirror.
  cfg.shuffle = True
  # grain: worker processes (0 = read in the main process; >0 needs an `if __name__ == '__main__'` guard),
  # reader threads and prefetch depth per process.
  cfg.worker_count = 0
  cfg.num_threads = 4
  cfg.prefetch_buffer_size = 64
  return cfg


__all__ = ["EmptySourceError", "ImageError", "ImageSource", "InputNotFoundError", "expand_inputs",
           "get_data_config", "load_image", "load_images", "open_source"]
