"""In-Domain GAN Inversion (Zhu, Shen, Zhao, Zhou, ECCV 2020) in JAX/Flax."""

__version__ = "0.1.0"
