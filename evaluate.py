"""Compares encoder-only, optimisation and in-domain inversion on held-out images (see idinvert_jax/evaluate.py).

  python evaluate.py --checkpoint CKPT --images photos/ --output report/ [--config FILE] [--quick]
"""
from idinvert_jax import evaluate

if __name__ == "__main__":
  evaluate.run()
