"""`gpt2-jax bench eval`: both sides score the same tokens with the same weights."""

import pytest

from gpt2_jax.bench import scoring as bench_eval
from gpt2_jax.cli import app as cli


def test_bench_eval_scores_the_same_targets_as_transformers(capsys):
    r = bench_eval.bench_eval("nano", seq_len=64, stride=32, num_tokens=300, rounds=1, vocab_size=257)
    ours, hf = r["results"]["gpt2_jax"], r["results"]["hf-torch"]
    assert ours["targets"] == hf["targets"] == 299  # every token but the first, once
    # same weights and text; the windows differ only in where each one starts (ours: 64 inputs, 64 targets)
    assert ours["mean_nll"] == pytest.approx(hf["mean_nll"], rel=1e-2)
    assert r["ratio_vs_hf_torch"] > 0 and r["ratio_vs_hf_torch_best"] > 0
    assert "ratio gpt2_jax / hf-torch" in bench_eval.format_eval_report(r)
    assert cli.main(["bench", "eval", "--preset", "nano", "--seq-len", "512"]) == 2
    assert "exceeds preset nano's 128 positions" in capsys.readouterr().err
