"""Shapes, initialization, partitioning metadata and numerics of gpt2_jax.model."""

from __future__ import annotations

import dataclasses
import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gpt2_jax.model import gpt2 as model
from gpt2_jax.model.gpt2 import GPT2, GPT2Config

# One small config for every test: shared shapes keep XLA's per-op compile cache warm.
CFG = GPT2Config(vocab_size=256, n_positions=32, n_layer=2, n_head=4, n_embd=128)


@pytest.fixture(scope="module")
def boxed():
    """CFG's parameters as initialized (logically partitioned boxes)."""
    return model.init_params(CFG, jax.random.key(0), seq_len=8)


@pytest.fixture(scope="module")
def params(boxed):
    """CFG's parameters as plain arrays."""
    return nn.meta.unbox(boxed)


def _ids(cfg, shape=(2, 16), seed=0):
    return jax.random.randint(jax.random.key(seed), shape, 0, cfg.vocab_size)


@pytest.mark.parametrize("name,expected", [
    ("gpt2", 124_439_808), ("gpt2-medium", 354_823_168),
    ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200),
])
def test_preset_param_counts_without_allocation(name, expected):
    live_before = sum(a.nbytes for a in jax.live_arrays())
    start = time.perf_counter()
    shapes = model.param_shapes(model.config_from_preset(name))
    assert time.perf_counter() - start < 10
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(shapes))
    assert model.count_params(shapes) == expected
    assert sum(a.nbytes for a in jax.live_arrays()) - live_before < 1 << 20


def test_init_statistics(params):
    resid_std = 0.02 / math.sqrt(2 * CFG.n_layer)
    layers = lambda mod, name: np.concatenate([np.ravel(params[f"h_{i}"][mod][name]) for i in range(CFG.n_layer)])
    for x, std in [(params["wte"]["embedding"], 0.02), (params["wpe"]["embedding"], 0.02),
                   (layers("attn", "qkv_kernel"), 0.02), (layers("mlp", "fc_kernel"), 0.02),
                   (layers("attn", "out_kernel"), resid_std), (layers("mlp", "proj_kernel"), resid_std)]:
        x = np.asarray(x, np.float64)
        # Sample std has relative standard error 1/sqrt(2n) (< 0.4% here): 3% is a > 7-sigma bound.
        assert abs(x.std() / std - 1) < 0.03, (x.shape, x.std(), std)
        assert abs(x.mean()) < 5 * std / math.sqrt(x.size)
    blk = params["h_1"]
    for leaf in (blk["attn"]["qkv_bias"], blk["mlp"]["proj_bias"], blk["ln_2"]["bias"], params["ln_f"]["bias"]):
        assert not np.asarray(leaf).any()
    np.testing.assert_array_equal(blk["ln_1"]["scale"], 1.0)


def test_every_param_has_logical_axis_names(boxed):
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert len(leaves) == 4 + 12 * CFG.n_layer
    for leaf in leaves:
        assert isinstance(leaf, nn.Partitioned), type(leaf)
        assert len(leaf.names) == leaf.value.ndim, (leaf.names, leaf.value.shape)


def test_dropout_only_when_not_deterministic(params):
    cfg = dataclasses.replace(CFG, embd_dropout=0.1, attn_dropout=0.1, resid_dropout=0.1)
    variables, ids = {"params": params}, _ids(CFG)
    plain = GPT2(CFG).apply(variables, ids)
    np.testing.assert_array_equal(GPT2(cfg).apply(variables, ids, deterministic=True), plain)
    drop1 = GPT2(cfg).apply(variables, ids, deterministic=False, rngs={"dropout": jax.random.key(1)})
    drop2 = GPT2(cfg).apply(variables, ids, deterministic=False, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(drop1, plain, atol=1e-3) and not np.allclose(drop1, drop2, atol=1e-3)
    with pytest.raises(Exception, match="dropout"):
        GPT2(cfg).apply(variables, ids, deterministic=False)


def _loss_and_grads(cfg, params, ids):
    def loss_fn(p):
        logits = GPT2(cfg).apply({"params": p}, ids)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()

    return jax.jit(jax.value_and_grad(loss_fn))(params)


@pytest.fixture(scope="module")
def reference_loss_and_grads(params):
    """Loss and grads of CFG without remat, computed once for both remat policies."""
    return _loss_and_grads(CFG, params, _ids(CFG))


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_same_loss_and_grads(remat, params, reference_loss_and_grads):
    ids = _ids(CFG)
    loss, grads = reference_loss_and_grads
    loss_r, grads_r = _loss_and_grads(dataclasses.replace(CFG, remat=remat), params, ids)
    assert abs(float(loss) - float(loss_r)) <= 1e-5
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0), grads, grads_r)


def test_bf16_compute_with_fp32_params(params):
    cfg = dataclasses.replace(CFG, dtype="bfloat16")
    ids = _ids(CFG)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(model.param_shapes(cfg)))
    ref = GPT2(CFG).apply({"params": params}, ids)
    out = GPT2(cfg).apply({"params": params}, ids)
    assert out.dtype == jnp.bfloat16
    out = np.asarray(out, np.float32)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, atol=0.05 * float(np.abs(ref).max()), rtol=0)


def test_causality(params):
    ids, t = _ids(CFG), 10
    changed = ids.at[:, t].set((ids[:, t] + 1) % CFG.vocab_size)
    a, b = GPT2(CFG).apply({"params": params}, ids), GPT2(CFG).apply({"params": params}, changed)
    np.testing.assert_allclose(a[:, :t], b[:, :t], atol=1e-6, rtol=0)
    assert not np.allclose(a[:, t:], b[:, t:], atol=1e-4)
