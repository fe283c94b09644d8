"""Reward tuning: the objective against exact enumeration (policy gradient, KL), group advantages,
the KL leash, a lexical reward that rises on a nano model, one-line reward errors, and (slow)
SIGKILL + resume giving the same rewards bitwise."""

from __future__ import annotations

import itertools
import pathlib
import signal
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt2_jax import config as config_lib
from gpt2_jax.data import tokenizers
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.optim import optimizers
from gpt2_jax.parallel import sharding
from gpt2_jax.reward import objective, rewards
from gpt2_jax.reward import task as reward_task
from gpt2_jax.reward.prompts import Prompts, encode_prompt
from gpt2_jax.train import metrics as metrics_lib
from gpt2_jax.train import steps as step_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
V, C = 3, 2  # the toy problem: 3 tokens, completions of 2
SEQS = np.array(list(itertools.product(range(V), repeat=C)))  # all 9 completions
R = jnp.array([0.0, 1.0, 3.0, -1.0, 0.5, 2.0, 1.5, -2.0, 0.25])


def _toy_logp(theta, seqs):
    """An autoregressive toy policy: logits of token 0 = theta['first'], of token 1 = theta['next'][token 0]."""
    first = jax.nn.log_softmax(theta["first"])
    nxt = jax.nn.log_softmax(theta["next"], axis=-1)
    lp0 = first[seqs[:, 0]]
    lp1 = nxt[seqs[:, 0], seqs[:, 1]]
    logp_all = jnp.stack([jnp.broadcast_to(first, (len(seqs), V)), nxt[seqs[:, 0]]], axis=1)
    return jnp.stack([lp0, lp1], axis=1), logp_all


THETA = {"first": jnp.array([0.3, -0.2, 0.5]), "next": jnp.array([[0.1, 0.9, -0.4], [0.0, -1.0, 0.7],
                                                                   [0.6, 0.2, -0.3]])}
REF = {"first": jnp.array([-0.1, 0.4, 0.0]), "next": jnp.array([[0.5, 0.0, 0.2], [0.3, 0.3, -0.6],
                                                                 [-0.2, 0.8, 0.1]])}


@pytest.mark.parametrize("clip", [0.0, 0.2])
def test_loss_gradient_equals_the_exact_policy_gradient_by_enumeration(clip):
    exact = jax.grad(lambda t: jnp.sum(jnp.exp(_toy_logp(t, SEQS)[0].sum(1)) * R))(THETA)

    def one_sample_loss(t, seq, advantage):  # the loss of a batch holding one completion
        logp, _ = _toy_logp(t, seq[None])
        loss, _ = objective.policy_loss(logp, jax.lax.stop_gradient(logp), advantage[None], jnp.ones((1, C)),
                                        jnp.zeros((1, C)), 0.0, clip)
        return loss

    probs = jnp.exp(_toy_logp(THETA, SEQS)[0].sum(1))
    grads = [jax.grad(one_sample_loss)(THETA, jnp.asarray(s), R[i]) for i, s in enumerate(SEQS)]
    # E_y[grad loss(y)] * C = -grad E[R]: the loss divides by N x C (here N = 1)
    expected = jax.tree.map(lambda *g: -sum(p * x for p, x in zip(probs, g)) * C, *grads)
    for a, b in zip(jax.tree.leaves(exact), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # a constant baseline leaves the expectation unchanged (what group advantages rely on)
    shifted = [jax.grad(one_sample_loss)(THETA, jnp.asarray(s), R[i] - 0.7) for i, s in enumerate(SEQS)]
    expected_b = jax.tree.map(lambda *g: -sum(p * x for p, x in zip(probs, g)) * C, *shifted)
    for a, b in zip(jax.tree.leaves(exact), jax.tree.leaves(expected_b)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_kl_estimates_equal_the_exact_kl():
    logp, logp_all = _toy_logp(THETA, SEQS)
    ref_logp, ref_all = _toy_logp(REF, SEQS)
    probs = jnp.exp(logp.sum(1))
    exact = float(jnp.sum(probs * (logp.sum(1) - ref_logp.sum(1))))  # KL of the sequence distributions
    k3 = objective.kl_per_token(logp, ref_logp, estimator="k3").sum(1)
    full = objective.kl_per_token(logp, ref_logp, logp_all, ref_all, estimator="exact").sum(1)
    assert float(jnp.sum(probs * k3)) == pytest.approx(exact, rel=1e-5)  # unbiased in expectation
    assert float(jnp.sum(probs * full)) == pytest.approx(exact, rel=1e-5)
    assert bool(jnp.all(k3 >= 0)) and exact > 0.05
    same = objective.kl_per_token(logp, logp, logp_all, logp_all, estimator="exact")
    np.testing.assert_allclose(same, 0.0, atol=1e-7)


def test_advantages_are_zero_mean_per_group():
    r = jnp.array([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 0.0], [5.0, -1.0, 2.0, 2.0]])
    a = objective.group_advantages(r)
    np.testing.assert_allclose(a.mean(1), 0.0, atol=1e-6)
    np.testing.assert_allclose(a[0].std(), 1.0, rtol=1e-4)
    np.testing.assert_array_equal(a[1], 0.0)  # equal rewards carry no signal
    assert float(a[0, 3]) > float(a[0, 2]) > float(a[0, 1]) > float(a[0, 0])


# ------------------------------------------------------------------------ a nano model, end to end
TOK = tokenizers.ByteTokenizer()
CFG = model_lib.config_from_preset("nano", vocab_size=TOK.vocab_size, n_positions=32)
PROMPTS = np.stack([encode_prompt(TOK.encode(t), 8, TOK.eos_id)
                    for t in ("The king", "A rose", "Good morrow", "Alas, poor", "My lord", "Come")])


def _run(steps: int, kl_weight: float, words: str = "a,e,i,o,u", lr: float = 1e-2, seed: int = 0):
    """Train a fresh nano policy (its own init is the reference) for `steps`; per-step metrics and
    the exact KL of the final policy on fixed prompts."""
    s = reward_task.Settings(group_size=8, prompt_tokens=8, completion_tokens=12, kl_weight=kl_weight,
                             kl_estimator="k3", clip=0.2, eval_prompts=4, samples_shown=0)
    fn = rewards.checked(rewards.lexical(words.split(","), whole_words=False), "lexical")
    task = reward_task.RewardTask(s, fn, TOK, Prompts(8, PROMPTS), seed=seed)
    model = model_lib.GPT2(CFG)
    opt = optimizers.make_optimizer(lr=lr, weight_decay=0.0, grad_clip=1.0)
    steps_ = step_lib.make_steps(model, opt, lambda _: lr, sharding.make_mesh(sharding.MeshSpec()),
                                 sharding.logical_rules("fsdp+tp"), seed, 20, task=task)
    cfg = config_lib.base_config()
    frozen = task.prepare(types.SimpleNamespace(model=model, cfg=cfg), steps_, echo=lambda *_: None)
    state = steps_.init()
    history = []
    for step in range(steps):
        batch = {k: v[None] for k, v in task.train_batch(None, seed, step, 4, 20).items()}
        state, m = steps_.train(state, task.rollout(steps_, state, batch, step), *frozen)
        history.append({k: float(v) for k, v in jax.device_get(m).items()})
    final = task._score(task._fns["body"](state.params), PROMPTS[:4])
    return history, final


def test_lexical_reward_rises_on_a_nano_model():
    free, final = _run(12, kl_weight=0.0)
    start = np.mean([h["reward_mean"] for h in free[:3]])
    end = np.mean([h["reward_mean"] for h in free[-3:]])
    assert end > 3 * start + 1.0, (start, end)  # vowels: ~0.5 per completion at init, several after
    assert final["reward"] > 2.0 and final["kl"] > 1.0  # the policy left its reference to get there


@pytest.mark.slow
def test_a_huge_kl_weight_holds_the_policy_at_the_reference():
    free, free_final = _run(12, kl_weight=0.0)
    leashed, leashed_final = _run(12, kl_weight=1000.0)
    assert leashed_final["kl"] < 0.05 * free_final["kl"], (leashed_final["kl"], free_final["kl"])
    assert np.mean([h["reward_mean"] for h in leashed[-3:]]) < np.mean([h["reward_mean"] for h in free[:3]]) + 0.5


def test_reward_errors_are_one_line():
    bad = rewards.checked(lambda p, c: [1.0], "mine:short")
    with pytest.raises(rewards.RewardError, match=r"returned shape \(1,\) for 2 completions"):
        bad(["a", "b"], ["x", "y"])
    boom = rewards.checked(lambda p, c: 1 / 0, "mine:boom")
    with pytest.raises(rewards.RewardError, match="reward mine:boom raised ZeroDivisionError"):
        boom(["a"], ["x"])
    nan = rewards.checked(lambda p, c: [float("nan")], "mine:nan")
    with pytest.raises(rewards.RewardError, match="NaN or inf"):
        nan(["a"], ["x"])
    with pytest.raises(rewards.RewardError, match="cannot import 'no_such_module_x'"):
        rewards.load_callable("no_such_module_x:f")
    assert rewards.lexical(["love"])([""], ["Love, lovely love!"]) == [2.0]
    assert rewards.lexical(["love"], whole_words=False)([""], ["Love, lovely love!"]) == [3.0]
    with pytest.raises(rewards.RewardError, match="not a label of the classifier"):
        rewards.classifier(lambda t: [], ("Comedies", "Tragedies"), "Histories", "runs/genre")


@pytest.mark.parametrize("override, message", [
    ("reward.group_size=1", "config key reward.group_size: must be >= 2"),
    ("reward.words=''", "config key reward.words: the lexical reward needs words"),
    ("reward.completion_tokens=200", "exceeds the model's context"),
    ("reward.kl_estimator=k2", "config key reward.kl_estimator: 'k2' is not one of k3, exact"),
    ("reward.prompts=prompts.txt", "must be a .jsonl file"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load_config(str(ROOT / "experiments" / "default.py"),
                               ["task.kind=reward", "reward.words=love", override])


# ------------------------------------------------------------------------ SIGKILL and resume (slow)
TEXT = ("Now is the winter of our discontent made glorious summer by this sun of York; "
        "and all the clouds that lour'd upon our house in the deep bosom of the ocean buried.\n")


def _args(root: pathlib.Path, run: str) -> list[str]:
    for split, n in (("train", 30), ("validation", 3), ("test", 3)):
        (root / "corpus" / split).mkdir(parents=True, exist_ok=True)
        (root / "corpus" / split / "doc.txt").write_text(TEXT * n)
    return ["train", "--config", str(ROOT / "experiments" / "default.py"), "--quiet",
            f"--config.data.source=text:{root}/corpus/{{split}}/*.txt", f"--config.data.data_dir={root}/data",
            f"--config.train.run_dir={root / run}", "--config.train.steps=12", "--config.model.preset=nano",
            "--config.task.kind=reward", "--config.reward.words=o,e", "--config.reward.whole_words=false",
            "--config.reward.prompt_tokens=8", "--config.reward.completion_tokens=8", "--config.data.seq_len=32",
            "--config.data.batch_size=4", "--config.optim.warmup_steps=0", "--config.reward.inner_epochs=2",
            "--config.train.eval_every=4", "--config.checkpoint.every=4", "--config.train.log_every=1",
            "--config.eval.max_batches=1", "--config.reward.eval_prompts=2", "--config.train.sample_tokens=0",
            "--config.train.tensorboard=false"]


def _rewards(run_dir: pathlib.Path) -> dict[int, tuple[float, float, float]]:
    rows = [r for r in metrics_lib.read_metrics(run_dir) if "reward_mean" in r]
    return {r["step"]: (r["reward_mean"], r["kl"], r["loss"]) for r in rows}


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_the_same_rewards_bitwise(tmp_path):
    from gpt2_jax.cli import app as cli
    assert cli.main(_args(tmp_path, "straight")) == 0
    expected = _rewards(tmp_path / "straight")
    assert sorted(expected) == list(range(1, 13))
    proc = subprocess.Popen([sys.executable, "-m", "gpt2_jax.cli", *_args(tmp_path, "killed")], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while not (ckpts / "4" / "files.json").exists():  # step 4 sealed: kill somewhere after it
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert cli.main(_args(tmp_path, "killed")) == 0
    got = _rewards(tmp_path / "killed")
    assert got == expected  # the same floats every step: samples, rewards and updates


@pytest.mark.slow  # 63 s on the shared 2 cores (two decoders compile)
def test_sample_arrays_inside_jit_decodes_as_generate_does():
    from gpt2_jax.generate import decode, processors
    model = model_lib.GPT2(CFG)
    params = step_lib.strip_boxes(model_lib.init_params(CFG, jax.random.key(3), 32))
    prompts = PROMPTS[:3]
    arrays = processors.Settings.checked(1.0, top_k=1).arrays()  # top-1 sampling: the greedy path, exactly
    out, mask = jax.jit(lambda p, t: decode.sample_arrays(model, p, t, jax.random.key(0), arrays, 2, 10))(
        params, jnp.asarray(prompts))
    greedy = decode.generate(model, params, [list(p) for p in prompts], 10, temperature=0.0)
    assert out.shape == (6, 10) and float(mask.min()) == 1.0  # no EOS given: every token counts
    for i, row in enumerate(greedy.tokens):
        assert out[2 * i].tolist() == row and out[2 * i + 1].tolist() == row


def test_jsonl_prompts_are_left_padded_with_eos_and_bad_files_are_one_line(tmp_path):
    from gpt2_jax.reward.prompts import read_jsonl
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "Hi"}\n\n{"prompt": "A much longer prompt"}\n')
    rows = read_jsonl(str(path), "prompt", TOK.encode, 6, TOK.eos_id)
    assert rows.tolist() == [[256] * 4 + TOK.encode("Hi"), TOK.encode("prompt")]  # the last tokens kept
    path.write_text('{"text": "Hi"}\n')
    with pytest.raises(ValueError, match=r"line 1: no string field 'prompt'; set reward.prompt_field"):
        read_jsonl(str(path), "prompt", TOK.encode, 6, TOK.eos_id)
    with pytest.raises(ValueError, match="no such file"):
        read_jsonl(str(tmp_path / "none.jsonl"), "prompt", TOK.encode, 6, TOK.eos_id)


def test_completion_logits_run_each_prompt_once_and_equal_the_full_forward_and_its_gradient():
    from gpt2_jax.reward.logits import completion_logits
    model = model_lib.GPT2(CFG)
    params = step_lib.strip_boxes(model_lib.init_params(CFG, jax.random.key(5), 32))
    rng = np.random.default_rng(0)
    prompts = jnp.asarray(rng.integers(0, 256, (2, 5)), jnp.int32)
    out = jnp.asarray(rng.integers(0, 256, (6, 4)), jnp.int32)  # G = 3 completions of 4 tokens a prompt
    weights = jnp.asarray(rng.normal(size=(6, 4, CFG.padded_vocab_size)), jnp.float32)

    def full(p):
        tokens = jnp.concatenate([jnp.repeat(prompts, 3, axis=0), out], axis=1)
        return model.apply({"params": p}, tokens[:, :-1])[:, 4:]

    full = jax.jit(full)
    grouped = jax.jit(lambda p: completion_logits(model, p, prompts, out))
    assert grouped(params).shape == (6, 4, CFG.padded_vocab_size)
    real = slice(0, CFG.vocab_size)  # padded ids hold the dtype's minimum in both
    np.testing.assert_allclose(grouped(params)[..., real], full(params)[..., real], atol=2e-5, rtol=1e-5)
    score = lambda f: lambda p: jnp.sum(jax.nn.log_softmax(f(p)[..., real]) * weights[..., real])
    g_full, g_grouped = jax.jit(jax.grad(score(full)))(params), jax.jit(jax.grad(score(grouped)))(params)
    for a, b in zip(jax.tree.leaves(g_grouped), jax.tree.leaves(g_full)):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=2e-3)
    one = completion_logits(model, params, prompts, out[:, :1])  # one-token completions: the prompts alone
    np.testing.assert_allclose(one[..., real], full(params)[:, :1, real], atol=2e-5, rtol=1e-5)
