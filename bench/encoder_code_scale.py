"""How far the encoder's domain is from the generator's: spread of W+ codes w vs E(G(w)), and their MSE.

  python bench/encoder_code_scale.py runs/encoder_study/official/export runs/encoder_study/bn_scale/export

For each checkpoint (generator + encoder): 256 codes w sampled from the mapping (no truncation), rendered, encoded;
prints the mean per-dimension standard deviation of w and of E(G(w)) and the mean squared code error. An encoder
whose outputs spread much wider than w starts in-domain inversion (and pulls its regulariser) off the generator's
domain. Machine-independent numbers (seeded), seconds on a CPU at 64 px.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from idinvert_jax import export  # noqa: E402  pylint: disable=wrong-import-position
from idinvert_jax.models import encoder as encoder_lib  # noqa: E402  pylint: disable=wrong-import-position
from idinvert_jax.models import generator as generator_lib  # noqa: E402  pylint: disable=wrong-import-position


def code_scale(checkpoint: str, num: int = 256, seed: int = 0, batch_size: int = 32) -> dict:
  models = export.load_models(checkpoint, names=("generator", "encoder"))
  w = generator_lib.sample_codes(models.generator, models.generator_vars, num, seed=seed, truncation_psi=1.0)
  x = generator_lib.render(models.generator, models.generator_vars, w)
  ew = np.concatenate([np.asarray(encoder_lib.encode(models.encoder, models.encoder_vars, x[i:i + batch_size]))
                       for i in range(0, num, batch_size)])
  return dict(w_std=float(w.std(axis=0).mean()), encoded_std=float(ew.std(axis=0).mean()),
              code_mse=float(((ew - w) ** 2).mean()))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("checkpoints", nargs="+", help="Checkpoint folders with a generator and an encoder.")
  parser.add_argument("--num", type=int, default=256, help="Sampled codes per checkpoint.")
  args = parser.parse_args(argv)
  print("| checkpoint | std of w | std of E(G(w)) | MSE E(G(w)) - w |\n|---|---|---|---|")
  for checkpoint in args.checkpoints:
    r = code_scale(checkpoint, args.num)
    print(f"| {checkpoint} | {r['w_std']:.3f} | {r['encoded_std']:.3f} | {r['code_mse']:.3f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
