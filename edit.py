r"""Semantic editing with in-domain inverted codes; see `python edit.py --help` and `python edit.py <command> -h`.

  python edit.py interpolate    --checkpoint CKPT --src_dir INV_A --dst_dir INV_B --output OUT
  python edit.py manipulate     --checkpoint CKPT --codes_dir INV --boundary boundaries/age.npy --output OUT
  python edit.py train-boundary --checkpoint CKPT --num_samples 20000 --classifier my.module:smile --output OUT
  python edit.py style-mix      --checkpoint CKPT --style_dir INV_A --content_dir INV_B --output OUT
  python edit.py diffuse        --checkpoint CKPT --targets t.png --contexts contexts/ --output OUT
"""
import sys

from idinvert_jax.editing import cli

if __name__ == "__main__":
  sys.exit(cli.main())
