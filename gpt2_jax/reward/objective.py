"""The reward-tuning objective as pure functions of arrays: group-normalized advantages, per-token
log-probabilities and KL to the reference, and the (optionally clipped) policy-gradient loss.

Conventions: N = B x G completions of C tokens, `mask` (N, C) is 1 on the tokens a completion
holds (up to and including a sampled EOS). The loss sums over a completion's tokens and divides by
N x C (a constant), so its gradient is an unbiased policy-gradient estimate whatever the lengths
(tests/test_reward.py checks it against the exact gradient by enumeration).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def group_advantages(rewards: jax.Array, eps: float = 1e-6) -> jax.Array:
    """(B, G) rewards -> advantages normalized within each prompt's group: (r - mean) / (std + eps);
    zero-mean per group, and all zero where a group's rewards are all equal."""
    r = rewards.astype(jnp.float32)
    centered = r - jnp.mean(r, axis=1, keepdims=True)
    return centered / (jnp.std(r, axis=1, keepdims=True) + eps)


def token_logprobs(logits: jax.Array, targets: jax.Array, temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """(log-probabilities of targets (N, C), full log-softmax (N, C, V)) of logits / temperature, fp32."""
    logp_all = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0], logp_all


def kl_per_token(logp: jax.Array, ref_logp: jax.Array, logp_all: jax.Array | None = None,
                 ref_logp_all: jax.Array | None = None, estimator: str = "k3") -> jax.Array:
    """KL(policy || reference) at each sampled position, (N, C).

    k3: exp(q - p) - (q - p) - 1 of the sampled token's log-probs p (policy) and q (reference),
    Schulman's unbiased, never negative estimator of the per-token KL. exact: the sum over the
    vocabulary of p(v) (log p(v) - log q(v)), needs the full log-softmaxes.
    """
    if estimator == "k3":
        d = ref_logp - logp
        return jnp.exp(d) - d - 1.0
    if estimator == "exact":
        return jnp.sum(jnp.exp(logp_all) * (logp_all - ref_logp_all), axis=-1)
    raise ValueError(f"KL estimator {estimator!r} is not k3 or exact")


def entropy_per_token(logp_all: jax.Array) -> jax.Array:
    """Entropy (nats) of the policy's next-token distribution at each position, (N, C)."""
    return -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)


def policy_loss(logp: jax.Array, logp_old: jax.Array, advantages: jax.Array, mask: jax.Array, kl: jax.Array,
                kl_weight: float, clip: float = 0.0) -> tuple[jax.Array, dict]:
    """(loss, metrics) of one batch: -A * ratio per token (PPO's min with the clipped ratio when clip > 0)
    plus kl_weight * kl, summed over each completion's tokens, divided by N x C.

    ratio = exp(logp - logp_old): 1 on the first update of a rollout (logp_old is the sampling
    policy's), where the gradient is REINFORCE's -A * grad log p; later inner epochs are clipped.
    """
    n, c = mask.shape
    ratio = jnp.exp(logp - logp_old)
    a = advantages[:, None]
    pg = -ratio * a
    if clip > 0:
        pg = jnp.maximum(pg, -jnp.clip(ratio, 1.0 - clip, 1.0 + clip) * a)
    loss = jnp.sum((pg + kl_weight * kl) * mask) / (n * c)
    tokens = jnp.maximum(jnp.sum(mask), 1.0)
    clipped = (jnp.abs(ratio - 1.0) > clip) if clip > 0 else jnp.zeros_like(ratio, bool)
    return loss, {"kl": jnp.sum(kl * mask) / n,  # per completion: the sum over its tokens
                  "kl_per_token": jnp.sum(kl * mask) / tokens,
                  "clip_fraction": jnp.sum(clipped * mask) / tokens}
