"""bench_decode: our KV-cache greedy decoding beside transformers' generate, on the same weights."""

from __future__ import annotations

import json

import pytest
import torch  # noqa: F401  the `test` extra installs it: a missing peer must fail, not skip
import transformers  # noqa: F401

from gpt2_jax.bench import decode as bench


@pytest.fixture(scope="module")
def report():
    # init_std 0.2 (10x GPT-2's): peaky logits, so fp32 rounding cannot flip a greedy choice.
    return bench.bench_decode("nano", batch_size=2, prompt_len=16, new_tokens=8, rounds=1, vocab_size=257,
                              init_std=0.2, peer="hf-torch")


def test_report_has_both_sides_a_ratio_and_agreeing_tokens(report):
    assert set(report["results"]) == {"gpt2_jax", "hf-torch"}
    for row in report["results"].values():
        assert row["tokens_per_s"] > 0 and 0 < row["s_min"] <= row["s_median"] and len(row["times_s"]) == 1
    ratio = report["results"]["gpt2_jax"]["tokens_per_s"] / report["results"]["hf-torch"]["tokens_per_s"]
    assert report["ratio_vs_hf_torch"] == pytest.approx(ratio)
    assert report["ratio_vs_hf_torch_best"] > 0
    # the same weights and prompts: every greedy token of both rows agrees
    assert report["tokens_match"] >= 8 and report["tokens_match_per_row"] == [8, 8]
    assert report["batch_size"] == 2 and report["prompt_len"] == 16 and report["new_tokens"] == 8
    assert {"jax", "torch", "transformers"} <= set(report["versions"])
    assert report["first_call_s"] >= report["compile_s"] >= 0
    json.dumps(report)  # the CLI writes it as JSON


def test_format_decode_report_shows_both_rows_and_the_ratio(report):
    text = bench.format_decode_report(report)
    assert "gpt2_jax" in text and "hf-torch" in text and "ratio gpt2_jax / hf-torch" in text
    assert "8 of 8" in text


def test_bad_peer_is_a_one_line_error():
    with pytest.raises(ValueError, match="peer must be"):
        bench.bench_decode("nano", peer="torch")


def test_cli_bench_decode(tmp_path, capsys):
    from gpt2_jax.cli import app as cli
    out = tmp_path / "decode.json"
    assert cli.main(["bench", "decode", "--preset", "nano", "--batch-size", "2", "--prompt-len", "8",
                     "--new-tokens", "4", "--rounds", "1", "--vocab-size", "257", "--json", str(out)]) == 0
    assert "gpt2_jax" in capsys.readouterr().out
    assert json.loads(out.read_text())["results"]["gpt2_jax"]["tokens_per_s"] > 0


def test_n_layer_overrides_the_presets_depth():
    full = bench.bench_decode("nano", batch_size=1, prompt_len=4, new_tokens=2, rounds=1, vocab_size=257, peer="none")
    half = bench.bench_decode("nano", batch_size=1, prompt_len=4, new_tokens=2, rounds=1, vocab_size=257, peer="none",
                              n_layer=1)
    assert (full["n_layer"], half["n_layer"]) == (2, 1) and half["params"] < full["params"]
    assert "(1 layers," in bench.format_decode_report(half)
