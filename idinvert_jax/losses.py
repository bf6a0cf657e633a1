"""Loss functions of the paper and of StyleGAN v1, as small pure functions of logits, images and codes.

GAN (StyleGAN v1, official training/loss.py):
  G: non-saturating logistic     mean(softplus(-D(G(z))))
  D: logistic + R1 on reals      mean(softplus(D(G(z)))) + mean(softplus(-D(x))) + gamma/2 * E[|grad_x D(x)|^2]
Domain-guided encoder (paper Sec. 3.1, official training/loss_encoder.py):
  E: mean((G(E(x)) - x)^2) + lambda_vgg * mean((F(G(E(x))) - F(x))^2) + lambda_adv * mean(softplus(-D(G(E(x)))))
  D: same as the GAN discriminator loss with G(E(x)) as the fakes.
In-domain inversion (paper Sec. 3.2, eq. 3): pixel + lambda_feat * perceptual + lambda_enc * |z - E(G(z))|^2.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def mean_squared_error(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean over every element (the official reduce_mean)."""
  return jnp.mean(jnp.square(a - b))


def generator_logistic_ns_loss(fake_logits: jax.Array) -> jax.Array:
  """Non-saturating logistic generator loss: mean(softplus(-D(G(z))))."""
  return jnp.mean(jax.nn.softplus(-fake_logits))


def discriminator_logistic_loss(real_logits: jax.Array, fake_logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns (loss on reals, loss on fakes): mean(softplus(-D(x))), mean(softplus(D(G(z))))."""
  return jnp.mean(jax.nn.softplus(-real_logits)), jnp.mean(jax.nn.softplus(fake_logits))


def r1_penalty(logits_fn: Callable[[jax.Array], jax.Array], reals: jax.Array) -> tuple[jax.Array, jax.Array]:
  """R1 gradient penalty on reals: mean over samples of sum(|d D(x) / dx|^2).

  Args:
    logits_fn: images [N, H, W, C] -> logits [N] or [N, 1].
    reals: the real images.
  Returns:
    (penalty, real_logits); the logits come for free from the same forward pass.
  """
  # sum over the batch gives per-sample input gradients since samples do not interact through D, except
  # through minibatch-stddev which the official code also differentiates through.
  def summed_logits(x):
    logits = logits_fn(x)
    return jnp.sum(logits), logits

  grads, real_logits = jax.grad(summed_logits, has_aux=True)(reals)
  penalty = jnp.mean(jnp.sum(jnp.square(grads), axis=tuple(range(1, grads.ndim))))
  return penalty, real_logits


def encoder_loss(reals: jax.Array, recons: jax.Array, fake_logits: jax.Array, *,
                 real_features: jax.Array | None = None, recon_features: jax.Array | None = None,
                 lambda_vgg: float = 5e-5, lambda_adv: float = 0.08, dfeat_distance: jax.Array | None = None,
                 lambda_dfeat: float = 0.0, code_distance: jax.Array | None = None,
                 lambda_code: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Domain-guided encoder objective; the perceptual term is skipped (counted as 0) without features.

  Two optional terms, not in the paper: `dfeat_distance` (with `lambda_dfeat`), a perceptual distance in a frozen
  discriminator's feature space (training/encoder.discriminator_features), and `code_distance` (with
  `lambda_code`), mean((E(G(w)) - w)^2) on codes sampled from the generator (training/encoder). The metrics hold
  each term unweighted and `e_adv_share`, the adversarial term's share of the weighted total (training health).
  """
  pixel = mean_squared_error(recons, reals)
  if real_features is None or recon_features is None:
    perceptual = jnp.zeros((), jnp.float32)
  else:
    perceptual = mean_squared_error(recon_features, real_features)
  adversarial = generator_logistic_ns_loss(fake_logits)
  dfeat = jnp.zeros((), jnp.float32) if dfeat_distance is None else dfeat_distance
  code = jnp.zeros((), jnp.float32) if code_distance is None else code_distance
  total = pixel + lambda_vgg * perceptual + lambda_adv * adversarial + lambda_dfeat * dfeat + lambda_code * code
  adv_share = lambda_adv * adversarial / jnp.maximum(total, 1e-12)
  return total, {"e_loss": total, "e_pixel": pixel, "e_perceptual": perceptual, "e_adv": adversarial,
                 "e_dfeat": dfeat, "e_code": code, "e_adv_share": adv_share}


def in_domain_inversion_loss(targets: jax.Array, recons: jax.Array, wp: jax.Array, wp_reencoded: jax.Array | None,
                             *, target_features: jax.Array | None = None, recon_features: jax.Array | None = None,
                             masks: jax.Array | None = None, loss_weight_pix=1.0, loss_weight_feat=5e-5,
                             loss_weight_enc=2.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-image in-domain inversion objective (paper eq. 3, official utils/inverter.py): returns [N] losses.

  pixel: mean over pixels of ((x - G(w)) * m)^2; feat: mean over features of (F(x * m) - F(G(w) * m))^2 (the
  caller computes both features); enc: mean over the code of (w - E(G(w)))^2. A term whose inputs are None is 0.
  masks: [N, H, W, 1] or None (all ones). The weights are scalars or per-image [N] arrays (the inversion engine
  passes runtime arrays). Per-image (not batch-mean) so that a batch of independent inversions does not couple
  their step sizes. The inversion engine's loss is this function.
  """
  pixel = jnp.mean(jnp.square((targets - recons) * (1.0 if masks is None else masks)), axis=(1, 2, 3))
  zero = jnp.zeros(wp.shape[:1], jnp.float32)
  feat = zero
  if target_features is not None and recon_features is not None:
    feat = jnp.mean(jnp.square(target_features - recon_features).reshape(wp.shape[0], -1), axis=1)
  enc = zero if wp_reencoded is None else jnp.mean(jnp.square(wp - wp_reencoded), axis=(1, 2))
  total = loss_weight_pix * pixel + loss_weight_feat * feat + loss_weight_enc * enc
  return total, {"loss": total, "pixel": pixel, "feat": feat, "enc": enc}
