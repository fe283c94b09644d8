"""gpt2_jax.load(): runs, step directories and exports, dtypes, devices, logits, perplexity, summary."""

import json
import math
import shutil

import jax
import numpy as np
import pytest
from tiny_run import VERSE, make_run

import gpt2_jax
from gpt2_jax import api
from gpt2_jax.checkpoint import export


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("api") / "run")


def _manual_nll(m, ids: list[int]) -> float:
    """Summed NLL of ids[1:] by the documented protocol, one forward per window (no batching, no padding):
    windows of the full context advance by the context; the last one is moved back to end at the
    document's end, and scores only the targets no earlier window scored."""
    ctx, n, total = m.model.cfg.n_positions, len(ids), 0.0
    for s in range(0, n - 1, ctx):
        start = max(0, min(s, n - 1 - ctx))
        window = ids[start:start + ctx + 1]
        logp = jax.nn.log_softmax(np.asarray(m.logits(window[:-1]), np.float64)[0], axis=-1)
        total -= sum(float(logp[i, t]) for i, t in enumerate(window[1:]) if start + i >= s)
    return total


def test_perplexity_scores_every_token_once(run):
    m = gpt2_jax.load(run)
    long_text, short = VERSE * 2, "Thou art"  # 362 bytes: three windows of the 128-token context
    ids = [m.tokenizer.eos_id] + m.tokenizer.encode(long_text)
    one = m.perplexity(long_text)
    assert one["tokens"] == len(long_text.encode())
    assert one["loss"] == pytest.approx(_manual_nll(m, ids) / one["tokens"], rel=1e-5)
    assert one["ppl"] == pytest.approx(math.exp(one["loss"]))
    assert one["bpb"] == pytest.approx(one["loss"] / math.log(2), rel=1e-6)  # one byte per token
    both = m.perplexity([long_text, short], batch_size=2)
    two = m.perplexity(short)
    assert both["tokens"] == one["tokens"] + two["tokens"]
    assert both["loss"] * both["tokens"] == pytest.approx(one["loss"] * one["tokens"] + two["loss"] * two["tokens"],
                                                          rel=1e-5)
    assert one["ppl"] < 20  # it learned the verse (257 at chance)
    with pytest.raises(ValueError, match="encode to no scorable tokens"):
        m.perplexity([""])


def test_steps_paths_and_summary(run):
    latest, best = api.load(run), api.load(run, step="best")
    assert latest.step == 30 and api.load(run, 10).step == 10 and best.step in (10, 30)
    assert api.load(run / "checkpoints" / "10").step == 10
    summary = latest.summary()
    assert "124,736 params (float32)" in summary and "step 30 of" in summary and "mesh 1 device" in summary
    assert "val_loss=" in summary
    assert latest.logits([1, 2, 3]).shape == (1, 3, 257)
    assert not hasattr(latest, "opt_state") and set(latest.params) >= {"wte", "wpe", "h_0", "h_1"}


def test_summary_shows_the_final_results_of_that_step_else_says_estimate(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    results = {"step": 30, "val_loss": 1.6771, "val_ppl": 5.35, "val_bpb": 2.4196, "val_tokens": 218305.0,
               "val_complete": 1.0, "test_loss": 1.7109, "test_ppl": 5.534, "test_bpb": 2.4683}
    (copy / "results.json").write_text(json.dumps(results))
    summary = api.load(copy).summary()
    assert summary.endswith("held-out results, every token: val_loss=1.677, val_ppl=5.35, val_bpb=2.42, "
                            "test_loss=1.711, test_ppl=5.534, test_bpb=2.468")
    assert "held-out" not in api.load(copy, step=10).summary()  # results.json is of step 30
    estimate = {"val_loss": 1.8, "val_ppl": 6.05, "val_bpb": 2.6, "val_tokens": 32768.0, "val_complete": 0.0}
    assert api._metrics_line({}, estimate) == ("validation estimate on the first eval.max_batches batches "
                                               "(32,768 tokens): val_loss=1.8, val_ppl=6.05, val_bpb=2.6")


def test_dtype_and_devices(run, tmp_path):
    ref = api.load(run, devices=1)
    half = api.load(run, dtype="bfloat16", devices=jax.local_devices()[:1])
    assert {x.dtype for x in jax.tree.leaves(half.params)} == {np.dtype("bfloat16")}
    assert half.model.cfg.dtype == "bfloat16" and half.config.model.param_dtype == "bfloat16"
    ids = np.arange(5, 40)
    np.testing.assert_allclose(np.asarray(half.logits(ids), np.float32), np.asarray(ref.logits(ids)), atol=0.15)
    with pytest.raises(ValueError, match="dtype 'int8' is not one of"):
        api.load(run, dtype="int8")
    with pytest.raises(ValueError, match=f"devices=99, but this process has {jax.local_device_count()}"):
        api.load(run, devices=99)
    out = export.export(run, tmp_path / "exp", step="latest", dtype="float32")
    exported = gpt2_jax.load(out)
    assert exported.step == 30 and exported.source == str(out)
    np.testing.assert_array_equal(np.asarray(exported.logits(ids)), np.asarray(ref.logits(ids)))
    assert exported.generate("Shall I", 10, temperature=0).text == ref.generate("Shall I", 10, temperature=0).text
