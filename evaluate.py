"""Compares encoder-only, optimisation and in-domain inversion on held-out images (see idinvert_jax/evaluate.py).

  python evaluate.py --checkpoint CKPT --images photos/ --output report/ [--config FILE] [--quick]
  python evaluate.py --checkpoint CKPT --images synthetic:64 --output report/ --train_boundary smile

Exit codes: 0 done; 1 nothing could be done (usage error, missing checkpoint or images). The comparison needs
every image, so an unreadable one stops it (1) rather than leaving a partial report.
"""
from absl import app, flags

from idinvert_jax import evaluate

if __name__ == "__main__":
  evaluate.define_flags()
  flags.adopt_module_key_flags(evaluate)  # --help lists the comparison's flags.
  app.run(evaluate.main)
