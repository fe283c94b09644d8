"""Schedules, weight-decay mask, clipping and gradient accumulation of gpt2_jax.optim."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gpt2_jax.model import gpt2 as model
from gpt2_jax.model.gpt2 import GPT2, GPT2Config
from gpt2_jax.optim import optimizers as optim
from gpt2_jax.optim import schedules

CFG = GPT2Config(vocab_size=64, n_positions=16, n_layer=1, n_head=2, n_embd=32)  # 1 layer: compile time dominates
PEAK, TOTAL, WARM = 1e-3, 1000, 100


def _at(schedule, step):
    return float(schedules.learning_rate_at(schedule, step))


@pytest.mark.parametrize("kind,mid,end", [
    ("cosine", PEAK * (0.1 + 0.9 * 0.5), 0.1 * PEAK),  # mid of the decay: half way between peak and min
    ("linear", PEAK * (1 - 0.9 * 0.5), 0.1 * PEAK),
    ("constant", PEAK, PEAK),
    ("wsd", PEAK, 0.1 * PEAK),
])
def test_schedule_shapes(kind, mid, end):
    s = schedules.make_schedule(kind, PEAK, TOTAL, WARM)
    assert _at(s, 0) == 0.0
    assert _at(s, WARM // 2) == pytest.approx(PEAK / 2)
    assert _at(s, WARM) == pytest.approx(PEAK)
    assert _at(s, (WARM + TOTAL) // 2) == pytest.approx(mid, rel=1e-5)
    assert _at(s, TOTAL) == pytest.approx(end, rel=1e-5)
    assert _at(s, 2 * TOTAL) == pytest.approx(end, rel=1e-5)


def test_wsd_decays_over_last_steps():
    s = schedules.make_schedule("wsd", PEAK, TOTAL, WARM)  # default: last 20% = 200 steps
    assert _at(s, 800) == pytest.approx(PEAK)
    assert _at(s, 900) == pytest.approx(PEAK * 0.55, rel=1e-5)
    s = schedules.make_schedule("wsd", PEAK, TOTAL, WARM, min_lr_ratio=0.0, decay_steps=100)
    assert _at(s, 900) == pytest.approx(PEAK) and _at(s, 950) == pytest.approx(PEAK / 2) and _at(s, TOTAL) == 0.0


def test_schedule_errors_and_no_warmup():
    with pytest.raises(ValueError, match="'cosine', 'linear', 'constant', 'wsd'"):
        schedules.make_schedule("exp", PEAK, TOTAL, WARM)
    with pytest.raises(ValueError, match="warmup_steps"):
        schedules.make_schedule("cosine", PEAK, 10, 20)
    with pytest.raises(ValueError, match="decay_steps"):
        schedules.make_schedule("cosine", PEAK, TOTAL, WARM, decay_steps=10)
    assert _at(schedules.make_schedule("cosine", PEAK, TOTAL, 0), 0) == pytest.approx(PEAK)
    for kind in schedules.SCHEDULES:  # total_steps=0 (evaluation-only runs) still builds
        assert np.isfinite(_at(schedules.make_schedule(kind, PEAK, 0, 0), 0))
    assert schedules.learning_rate_at(3e-4, 7) == 3e-4


@pytest.fixture(scope="module")
def boxed():
    """CFG's boxed parameter tree filled with N(0, 0.02) draws: the real structure, no init compile."""
    abstract = jax.eval_shape(lambda key: model.init_params(CFG, key, seq_len=1), jax.random.key(0))
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.02, s.shape), s.dtype), abstract)


def test_decay_mask_on_model_params(boxed):
    for tree in (boxed, nn.meta.unbox(boxed)):
        mask = nn.meta.unbox(optim.decay_mask(tree))
        assert mask["wte"]["embedding"] and mask["wpe"]["embedding"]
        assert mask["h_0"]["attn"]["qkv_kernel"] and mask["h_0"]["mlp"]["proj_kernel"]
        assert not mask["h_0"]["attn"]["qkv_bias"] and not mask["h_0"]["ln_1"]["scale"]
        assert not mask["h_0"]["mlp"]["fc_bias"] and not mask["ln_f"]["bias"]
        assert sum(jax.tree.leaves(mask)) == 2 + 4 * CFG.n_layer


def test_weight_decay_only_on_masked_leaves():
    plain = {"kernel": jnp.ones((4, 3)), "qkv_bias": jnp.ones((3, 2, 2)), "ln": {"scale": jnp.ones((4,))}}
    boxed = jax.tree.map(lambda x: nn.Partitioned(x, names=(None,) * x.ndim), plain)
    tx = optim.make_optimizer(lr=0.1, weight_decay=0.5, grad_clip=0.0)
    for tree in (plain, boxed):  # the mask is built from whatever tree the optimizer sees
        updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, tree), tx.init(tree), tree)
        new = nn.meta.unbox(optax.apply_updates(tree, updates))
        np.testing.assert_allclose(new["kernel"], 0.95, rtol=1e-6)  # p - lr * wd * p
        np.testing.assert_array_equal(new["qkv_bias"], 1.0)
        np.testing.assert_array_equal(new["ln"]["scale"], 1.0)


def test_clipping_caps_global_norm():
    params = {"w": jnp.ones((4, 4)), "b": jnp.ones((4,))}
    grads = jax.tree.map(lambda p: 100.0 * p, params)  # global norm 100 * sqrt(20)
    for clip, expected in [(1.0, 1.0), (0.0, float(optax.tree.norm(grads)))]:
        tx = optim.make_optimizer(lr=1e-3, b1=0.5, grad_clip=clip)
        _, state = tx.update(grads, tx.init(params), params)
        mu = optax.tree_utils.tree_get(state, "mu")  # = (1 - b1) * the gradient adam saw
        assert float(optax.tree.norm(mu)) / 0.5 == pytest.approx(expected, rel=1e-5)


def _loss(params, ids):
    logits = GPT2(CFG).apply({"params": params}, ids)
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()


def _run(tx, params, batches, grad_fn):
    """Apply tx once per batch; return the params after each call."""
    update = jax.jit(tx.update)
    state, history = tx.init(params), []
    for batch in batches:
        updates, state = update(grad_fn(params, batch), state, params)
        params = optax.apply_updates(params, updates)
        history.append(params)
    return history


def test_gradient_accumulation_matches_big_batch(boxed):
    params, k, b, t = nn.meta.unbox(boxed), 4, 2, 8
    ids = jax.random.randint(jax.random.key(1), (2, k * b, t), 0, CFG.vocab_size)  # two optimizer steps
    grad_fn = jax.jit(jax.grad(_loss))
    # eps well above fp noise: the key bias gets an exactly-zero gradient (softmax is shift invariant),
    # and with a tiny eps Adam would blow its ~1e-13 rounding noise up to +-lr in both runs differently.
    kw = dict(lr=schedules.make_schedule("cosine", 1e-2, 10, 0), eps=1e-3, grad_clip=0.5)
    big = _run(optim.make_optimizer(**kw), params, list(ids), grad_fn)
    micro = [ids[s, m * b:(m + 1) * b] for s in range(2) for m in range(k)]
    acc = _run(optim.make_optimizer(**kw, accum_steps=k), params, micro, grad_fn)
    for m in range(k - 1):  # no parameter change until the k-th micro-step
        jax.tree.map(np.testing.assert_array_equal, acc[m], params)
    for step in range(2):
        expected, got = big[step], acc[(step + 1) * k - 1]
        moved = optax.tree.norm(jax.tree.map(jnp.subtract, expected, params))
        assert float(moved) > 0
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
        for path, leaf_e, leaf_g, leaf_p in zip(paths, *map(jax.tree.leaves, (expected, got, params))):
            rel = float(jnp.linalg.norm(leaf_g - leaf_e) / jnp.linalg.norm(leaf_e - leaf_p))
            assert rel <= 1e-5, (step, path, rel)  # per leaf: fp32 summation order leaves ~3e-7
        total = optax.tree.norm(jax.tree.map(jnp.subtract, got, expected))
        assert float(total) <= 1e-6 * float(moved), (step, float(total), float(moved))


def test_optimizer_kind_error():
    with pytest.raises(ValueError, match="unknown optimizer kind 'sgd'"):
        optim.make_optimizer("sgd")


def _one_update(tx, params, seed=1):
    """The first update of `tx` on a random gradient of params' shapes, and that gradient."""
    rng = np.random.default_rng(seed)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(0.0, 1.0, p.shape), p.dtype), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates, grads


def test_muon_orthogonalizes_block_matrices_and_gives_the_rest_adam(boxed):
    params = nn.meta.unbox(boxed)
    lr, adam_lr = 0.02, 0.003
    tx = optim.make_optimizer("muon", lr=lr, weight_decay=0.0, grad_clip=0.0, adam_lr_ratio=adam_lr / lr)
    rng = np.random.default_rng(1)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(0.0, 1.0, p.shape), p.dtype), params)
    u, _, vt = np.linalg.svd(rng.normal(size=(CFG.n_embd, 4 * CFG.n_embd)),
                             full_matrices=False)
    grads["h_0"]["mlp"]["fc_kernel"] = jnp.asarray((u * np.geomspace(20.0, 1.0, 32)) @ vt, jnp.float32)
    updates, _ = tx.update(grads, tx.init(params), params)
    attn, mlp = updates["h_0"]["attn"], updates["h_0"]["mlp"]
    d, h, hd = CFG.n_embd, CFG.n_head, CFG.n_embd // CFG.n_head
    matrices = [attn["qkv_kernel"][:, i].reshape(d, h * hd) for i in range(3)]  # q, k, v each its own
    matrices += [attn["out_kernel"].reshape(h * hd, d), mlp["fc_kernel"], mlp["proj_kernel"]]
    for u in matrices:  # Newton-Schulz pushes every singular value toward one value; a gradient's spread widely
        sv = np.linalg.svd(np.asarray(u), compute_uv=False)
        assert sv.max() / sv.min() < 2.5, sv
    raw = np.linalg.svd(np.asarray(grads["h_0"]["mlp"]["fc_kernel"]), compute_uv=False)
    assert raw.max() / raw.min() > 19  # an ill-conditioned gradient came out well-conditioned
    for leaf in (updates["wte"]["embedding"], updates["h_0"]["ln_1"]["scale"], updates["h_0"]["mlp"]["fc_bias"]):
        # NAdam's first step (muon's Adam is Nesterov too): (b1 (1-b1) / (1-b1^2) + 1) * adam_lr * sign(g)
        np.testing.assert_allclose(np.abs(np.asarray(leaf)), adam_lr * (0.9 * 0.1 / (1 - 0.81) + 1), rtol=1e-3)


def test_lion_steps_by_the_sign_and_adafactor_keeps_factored_moments():
    params = {"w": jnp.ones((256, 384)), "b": jnp.zeros((384,))}
    updates, grads = _one_update(optim.make_optimizer("lion", lr=1e-4, weight_decay=0.0, grad_clip=0.0), params)
    np.testing.assert_array_equal(np.asarray(updates["w"]), -1e-4 * np.sign(np.asarray(grads["w"])))
    tx = optim.make_optimizer("adafactor", lr=1e-3, weight_decay=0.0, grad_clip=0.0)
    state_floats = sum(x.size for x in jax.tree.leaves(tx.init(params)) if jnp.issubdtype(x.dtype, jnp.floating))
    adam_floats = sum(x.size for x in jax.tree.leaves(optim.make_optimizer("adamw").init(params))
                      if jnp.issubdtype(x.dtype, jnp.floating))
    assert state_floats < 0.01 * adam_floats  # a row and a column per matrix instead of two full moments
    updates, _ = _one_update(tx, params)
    assert float(jnp.sqrt(jnp.mean(updates["w"] ** 2))) <= 1e-3 * 1.0001  # update clipped to RMS 1, times lr


LRS = {"muon": 0.02, "lion": 3e-3, "adafactor": 1e-2, "schedule_free_adamw": 3e-3}


@pytest.mark.parametrize("kind", sorted(LRS))
def test_every_optimizer_trains_the_model_through_the_config(kind):
    from gpt2_jax import config as config_lib
    cfg = config_lib.base_config()
    cfg.optim.name, cfg.optim.lr = kind, LRS[kind]
    cfg.optim.adam_lr, cfg.optim.warmup_steps, cfg.train.steps = 3e-3, 0, 30
    cfg.optim.schedule = "constant" if kind == "schedule_free_adamw" else "cosine"
    config_lib.validate(cfg)
    schedule, tx = optim.optimizer_from_config(cfg)
    m = GPT2(CFG)
    params = nn.meta.unbox(model.init_params(CFG, jax.random.key(0), seq_len=16))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 8, (8, 17)))  # 8 symbols of 64: easy to learn

    def loss_fn(p):
        logits = m.apply({"params": p}, ids[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    state, losses = tx.init(params), []
    for _ in range(30):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert losses[-1] < 0.75 * losses[0], losses  # ln 64 = 4.16 -> toward ln 8 = 2.08
    assert float(loss_fn(optim.eval_params(state, params))) < 0.75 * losses[0]  # the point evaluations score


def test_schedule_free_adamw_is_evaluated_at_its_average_and_the_rest_at_their_params():
    params = {"w": jnp.ones((4, 3)), "b": jnp.zeros((3,))}
    grads = {"w": jnp.full((4, 3), 0.5), "b": jnp.full((3,), -1.0)}
    tx = optim.make_optimizer("schedule_free_adamw", lr=0.1, weight_decay=0.0, grad_clip=0.0)
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    x = optim.eval_params(state, params)
    sf = state[-1] if isinstance(state, tuple) and not hasattr(state, "z") else state
    want = optax.contrib.schedule_free_eval_params(sf, params)
    for k in params:
        np.testing.assert_allclose(np.asarray(x[k]), np.asarray(want[k]), rtol=1e-6)
        assert not np.allclose(np.asarray(x[k]), np.asarray(params[k]))  # y (trained at) is not x (evaluated at)
    adam = optim.make_optimizer("adamw", lr=0.1)
    assert optim.eval_params(adam.init(params), params) is params
    # One group frozen: its leaves carry no schedule-free state and are evaluated as they are.
    labels = {"w": "lr_x1", "b": "frozen"}
    tx = optim.make_optimizer("schedule_free_adamw", lr=0.1, weight_decay=0.0, grad_clip=0.0, labels=labels)
    start = {"w": jnp.ones((4, 3)), "b": jnp.zeros((3,))}
    state, params = tx.init(start), start
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    x = optim.eval_params(state, params)
    np.testing.assert_array_equal(np.asarray(x["b"]), np.zeros(3))
    assert not np.allclose(np.asarray(x["w"]), np.asarray(params["w"]))


def test_adam_lr_and_a_schedule_under_schedule_free_adamw_are_checked():
    from gpt2_jax import config as config_lib
    cfg = config_lib.base_config()
    cfg.optim.adam_lr = -1.0
    with pytest.raises(config_lib.ConfigError, match="optim.adam_lr: must be positive"):
        config_lib.validate(cfg)
    cfg = config_lib.base_config()
    cfg.optim.name = "schedule_free_adamw"
    with pytest.raises(config_lib.ConfigError, match="optim.schedule: 'cosine' decays .* set optim.schedule=constant"):
        config_lib.validate(cfg)


@pytest.mark.parametrize("kind", sorted(LRS))
def test_every_optimizer_runs_in_the_sharded_train_step(kind):
    # train.make_steps lays the optimizer state out like the params; muon masks its Adam part,
    # which optax's tree_map_params cannot follow (`gpt2-jax train` with muon failed there)
    from gpt2_jax.parallel import sharding
    from gpt2_jax.train import steps as train

    lr = LRS[kind]
    tx = optim.make_optimizer(kind, lr=lr, adam_lr_ratio=0.1)
    mesh = sharding.make_mesh(sharding.MeshSpec(ici=(1, 1, 1)), jax.devices()[:1])
    steps = train.make_steps(GPT2(CFG), tx, lambda s: lr, mesh, sharding.logical_rules("fsdp+tp"), 0, 16)
    ids = np.random.default_rng(0).integers(0, 8, (1, 8, 17)).astype(np.int32)
    batch = sharding.global_batch(steps.train_batch_sharding, ids.shape, lambda rows: ids[:, rows], batch_dim=1)
    state, losses = steps.init(), []
    for _ in range(5):
        state, metrics = steps.train(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]
