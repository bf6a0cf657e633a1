"""Command line: official weights -> project checkpoint, and back.

  python -m idinvert_jax.convert --generator G.pth --encoder E.pth --perceptual vgg16.pth|.h5 \
      --output DIR [--config configs/ffhq256.py]
  python -m idinvert_jax.convert --export DIR --to OUTDIR

Each input is optional (at least one). The architecture comes from --config (the experiment file whose
`config.model` the weights were trained with); it is stored in DIR/config.json, so invert.py / train.py /
edit.py use DIR directly. --export writes generator.pth / encoder.pth / vgg16.pth in the official layout.
"""
from __future__ import annotations

import argparse
import sys

from idinvert_jax import exit_codes
from idinvert_jax.convert import official

DEFAULT_CONFIG = "configs/ffhq256.py"


def main(argv=None) -> int:
  parser = exit_codes.ArgumentParser(prog="python -m idinvert_jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--generator", help="official StyleGAN generator .pth (idinvert_pytorch layout)")
  parser.add_argument("--encoder", help="official domain-guided encoder .pth")
  parser.add_argument("--perceptual", "--vgg", dest="perceptual", help="VGG16 weights: official vgg16.pth or Keras ..._notop.h5")
  parser.add_argument("--output", help="checkpoint directory to write")
  parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"experiment config (default {DEFAULT_CONFIG})")
  parser.add_argument("--export", metavar="DIR", help="checkpoint directory to export as official .pth files")
  parser.add_argument("--to", metavar="OUTDIR", help="folder for the exported .pth files (with --export)")
  args = parser.parse_args(argv)
  try:
    if args.export:
      if not args.to or args.generator or args.encoder or args.perceptual or args.output:
        parser.error("--export DIR takes only --to OUTDIR")
      for name, path in official.export_official(args.export, args.to).items():
        print(f"wrote {name}: {path}")
      return 0
    if not args.output:
      parser.error("--output DIR is required (or use --export DIR --to OUTDIR)")
    if not (args.generator or args.encoder or args.perceptual):
      parser.error("pass at least one of --generator, --encoder, --perceptual")
    config = official.load_config_file(args.config)
    path = official.convert_official(args.output, config, args.generator, args.encoder, args.perceptual)
    print(f"wrote checkpoint {path}")
    return 0
  except (ValueError, FileNotFoundError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return exit_codes.NOTHING_DONE


if __name__ == "__main__":
  sys.exit(main())
