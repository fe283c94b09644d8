"""The blocked CPU attention kernel is exact: outputs and gradients equal the XLA reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt2_jax.model import attention
from gpt2_jax.model import gpt2 as model_lib


def _reference(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")


@pytest.mark.parametrize("t, blocks", [(128, None), (96, 3), (64, 4), (7, None), (256, 8)])
def test_blocked_matches_reference_outputs_and_gradients(t, blocks):
    ks = jax.random.split(jax.random.key(t), 4)
    q, k, v, d_out = (jax.random.normal(key, (2, t, 3, 16)) for key in ks)
    fn = lambda q, k, v: attention.blocked_causal_attention(q, k, v, blocks)
    out, vjp = jax.vjp(fn, q, k, v)
    ref_out, ref_vjp = jax.vjp(_reference, q, k, v)
    np.testing.assert_allclose(out, ref_out, atol=2e-5)
    for got, want in zip(vjp(d_out), ref_vjp(d_out)):
        np.testing.assert_allclose(got, want, atol=5e-5)


def test_blocked_in_bfloat16_is_close():
    ks = jax.random.split(jax.random.key(1), 3)
    q, k, v = (jax.random.normal(key, (2, 64, 2, 16)) for key in ks)
    out = attention.blocked_causal_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), _reference(q, k, v), atol=5e-2)


def test_auto_picks_blocked_on_cpu_and_indivisible_blocks_error():
    assert attention.resolve_implementation("auto", jnp.float32) == "blocked"
    assert attention.resolve_implementation("xla", jnp.bfloat16) == "xla"
    assert attention.default_num_blocks(256) == 4 and attention.default_num_blocks(96) == 1
    with pytest.raises(ValueError, match="not divisible"):
        attention.blocked_causal_attention(*(jnp.ones((1, 10, 1, 4)),) * 3, num_blocks=3)


def test_model_logits_and_grads_same_for_blocked_and_xla():
    tokens = jax.random.randint(jax.random.key(0), (2, 64), 0, 50)
    outs = {}
    for impl in ("blocked", "xla"):
        cfg = model_lib.config_from_preset("nano", vocab_size=50, attention=impl)
        params = model_lib.init_params(cfg, jax.random.key(0), 64)
        m = model_lib.GPT2(cfg)
        loss = lambda p: jnp.mean(m.apply({"params": p}, tokens) ** 2)
        outs[impl] = jax.value_and_grad(loss)(params)
    (la, ga), (lb, gb) = outs["blocked"], outs["xla"]
    assert float(la) == pytest.approx(float(lb), rel=1e-5)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
