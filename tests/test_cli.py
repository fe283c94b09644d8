"""`gpt2-jax train` / `sample` end to end on a small text corpus the test writes."""

import json
import pathlib
import re
import subprocess
import sys

import pytest

from gpt2_jax import api
from gpt2_jax.cli import app as cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT = str(ROOT / "experiments" / "default.py")

VERSE = ("Shall I compare thee to a summer's day? Thou art more lovely and more temperate: "
         "Rough winds do shake the darling buds of May, and summer's lease hath all too short a date.\n")


def _corpus(tmp_path: pathlib.Path) -> str:
    for split, n in (("train", 40), ("validation", 4), ("test", 4)):
        d = tmp_path / "corpus" / split
        d.mkdir(parents=True)
        for i in range(2):
            (d / f"doc{i}.txt").write_text(VERSE * n)
    return f"text:{tmp_path}/corpus/{{split}}/*.txt"


def _args(tmp_path, source, steps, *extra):
    return ["train", "--config", DEFAULT, "--quiet",
            f"--config.data.source={source}", f"--config.data.data_dir={tmp_path}/data",
            f"--config.train.run_dir={tmp_path}/run", f"--config.train.steps={steps}",
            "--config.model.preset=nano", "--config.data.seq_len=32", "--config.data.batch_size=8",
            "--config.optim.warmup_steps=5", "--config.optim.lr=3e-3", "--config.train.eval_every=10",
            "--config.checkpoint.every=10", "--config.train.log_every=5", "--config.train.sample_tokens=20",
            "--config.train.tensorboard=false", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cli")
    source = _corpus(tmp_path)
    args = [a for a in _args(tmp_path, source, 30) if a != "--quiet"]  # the default output, into pipes
    proc = subprocess.run([sys.executable, "-m", "gpt2_jax.cli", *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp_path, source, proc.stdout, proc.stderr


def test_train_reports_evaluates_checkpoints_and_samples(trained):
    tmp_path, _, out, _ = trained
    run = tmp_path / "run"
    assert "validation: loss" in out and "bits/byte" in out and "test (held out)" in out and "sample:" in out
    results = json.loads((run / "results.json").read_text())
    assert results["step"] == 30 and results["val_loss"] < 3.0  # ln(257) = 5.55 at init
    assert results["test_bpb"] == pytest.approx(results["test_loss"] / 0.6931, rel=0.02)  # 1 byte per token
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 30
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20, 25, 30]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert all(r["tokens_per_s"] > 0 for r in train_rows)
    assert train_rows[-1]["epoch"] == pytest.approx(6 * train_rows[0]["epoch"]) and 0 < train_rows[0]["epoch"] < 1
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["steps"] == 30 and saved["model"]["preset"] == "nano"


def test_train_output_without_a_terminal_is_plain_lines_one_per_evaluation(trained):
    _, _, out, err = trained
    assert err == ""  # no bars, no warnings: stderr is for errors
    for noise in ("\x1b", "\r", "WARNING:absl", "Downloading and preparing", "Generating", "Shuffling", "it/s]"):
        assert noise not in out, noise
    evals = [l for l in out.splitlines() if " val loss " in l]
    assert [l.split(":")[0] for l in evals] == ["step 10/30", "step 20/30", "step 30/30"]
    number = r"\d+\.\d{4}"
    for line in evals:
        assert re.fullmatch(rf"step \d+/30: val loss {number}, bits/byte {number}, [\d,]+ tokens/s, "
                            r"elapsed \d:\d\d:\d\d", line), line
    progress = [l for l in out.splitlines() if re.fullmatch(r"step \d+/30: loss .* eta \d:\d\d:\d\d", l)]
    assert [l.split(":")[0] for l in progress] == [f"step {s}/30" for s in (5, 10, 15, 20, 25, 30)]


def test_resume_continues_from_the_last_checkpoint(trained, capsys):
    tmp_path, source, _, _ = trained
    assert cli.main(_args(tmp_path, source, 40)) == 0
    out = capsys.readouterr().out
    assert "resumed from step 30" in out
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r][-2:] == [35, 40]


def test_resume_refuses_a_different_model_shape(trained, capsys):
    tmp_path, source, _, _ = trained
    assert cli.main(_args(tmp_path, source, 50, "--config.model.n_embd=32")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpt2-jax: error:") and "n_embd: 64 -> 32" in err and "\n" not in err


def test_sample_command_and_load(trained, capsys):
    tmp_path, _, _, _ = trained
    assert cli.main(["sample", "--run", str(tmp_path / "run"), "--prompt", "Shall I", "--max-new-tokens", "12",
                     "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Shall I")
    m = api.load(tmp_path / "run")
    greedy = m.generate("Shall I", max_new_tokens=12, temperature=0)
    assert out.strip() == ("Shall I" + greedy.text).strip()  # streamed == batch decoding, same model
    assert len(greedy.tokens) <= 12 and m.tokenizer.decode(greedy.tokens) == greedy.text
    assert m.perplexity(VERSE[:100])["ppl"] < 20
    assert "params" in m.summary()
    # README's command: the default 200 new tokens outrun the 128-token context, so the window slides
    assert cli.main(["sample", "--run", str(tmp_path / "run"), "--prompt", "ROMEO:", "--temperature", "0.8",
                     "--top-k", "40"]) == 0
    out = capsys.readouterr().out
    c = m.generate("ROMEO:", max_new_tokens=200, temperature=0.8, top_k=40)
    assert out == "ROMEO:" + c.text + "\n" and (len(c.tokens) == 200 or c.finished)
    assert cli.main(["sample", "--run", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_prompt_longer_than_context_is_one_line(trained, capsys):
    tmp_path, _, _, _ = trained
    assert cli.main(["sample", "--run", str(tmp_path / "run"), "--prompt", "x" * 200, "--max-new-tokens", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("gpt2-jax: error: prompt 0 is 200 tokens; the model's 128-token context holds at most 127 with "
                   "one new token; shorten it, or pass truncate='left' (--truncate left) with max_new_tokens below 128")
    assert cli.main(["sample", "--run", str(tmp_path / "run"), "--prompt", "x" * 100, "--max-new-tokens", "50",
                     "--truncate", "error"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("gpt2-jax: error: prompt 0 is 100 tokens; with max_new_tokens=50 the 128-token context leaves "
                   "room for 78; shorten it, lower max_new_tokens, or pass truncate='left' (--truncate left)")
    assert cli.main(["sample", "--run", str(tmp_path / "run"), "--prompt", "x" * 200, "--max-new-tokens", "5",
                     "--truncate", "left", "--top-p", "0.9"]) == 0
    assert capsys.readouterr().out.startswith("x" * 200)
    assert cli.main(["sample", "--run", str(tmp_path / "run"), "--prompt", "x", "--top-p", "1.5"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "gpt2-jax: error: top_p must be in (0, 1] (1 keeps every token), got 1.5"


def test_divergence_stops_with_a_clear_message(tmp_path, capsys):
    source = _corpus(tmp_path)
    code = cli.main(_args(tmp_path, source, 30, "--config.optim.lr=1e30", "--config.optim.grad_clip=0.0",
                          "--config.optim.warmup_steps=0"))
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err
    assert "lower optim.lr" in err and ("nan" in err or "inf" in err)


def test_bench_prints_both_implementations_and_their_ratio(tmp_path, capsys):
    report_path = tmp_path / "bench.json"
    assert cli.main(["bench", "--preset", "nano", "--batch-size", "2", "--seq-len", "16", "--steps", "2",
                     "--warmup", "1", "--peer", "hf-torch", "--peer-compile", "off", "--json", str(report_path)]) == 0
    out = capsys.readouterr().out
    assert "gpt2_jax" in out and "hf-torch" in out and "ratio gpt2_jax / hf-torch" in out
    report = json.loads(report_path.read_text())
    assert report["results"]["gpt2_jax"]["tokens_per_s"] > 0 and report["ratio_vs_hf_torch"] > 0
    assert report["flops_per_token"] == 6 * (report["params"] - 128 * 64) + 12 * 2 * 16 * 64


def test_sample_prompts_file_beams_and_stop(trained, capsys, tmp_path):
    run = str(trained[0] / "run")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Shall I\nThou art\n\n")
    assert cli.main(["sample", "--run", run, "--prompts-file", str(prompts), "--max-new-tokens", "8",
                     "--num-beams", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    m = api.load(run)
    beams = m.generate(["Shall I", "Thou art"], 8, num_beams=2)
    assert [l for l in out if not l.startswith("---")] == ["Shall I" + beams[0].text, "Thou art" + beams[1].text]
    greedy = m.generate("Shall I", 30, temperature=0).text
    stop = greedy[5:8]
    assert cli.main(["sample", "--run", run, "--prompt", "Shall I", "--max-new-tokens", "30", "--temperature", "0",
                     "--stop", stop]) == 0
    assert capsys.readouterr().out == "Shall I" + greedy[: greedy.index(stop)] + "\n"


def _single_file(tmp_path: pathlib.Path) -> str:
    (tmp_path / "one.txt").write_text(VERSE * 60)
    return f"text:{tmp_path}/one.txt"


def test_a_single_file_without_eval_split_trains_and_tests_on_held_out_text(tmp_path, capsys):
    source = _single_file(tmp_path)
    assert cli.main(_args(tmp_path, source, 20, "--config.data.eval_split=", "--config.train.sample_tokens=0")) == 0
    out = capsys.readouterr().out
    cut = round(0.05 * len(VERSE) * 60)  # bytes held out for each of validation and test
    assert (f"data train: {source}@train~holdout0.05, {len(VERSE) * 60 - 2 * cut:,} tokens, "
            f"{len(VERSE) * 60 - 2 * cut:,} bytes, 1 documents; the rest, not held out: the first 90% of the "
            "characters of each of 1 document(s) (data.holdout_fraction=0.05)") in out
    assert (f"data test: {source}@test~holdout0.05, {cut:,} tokens, {cut:,} bytes, 1 documents; held out: the last "
            "5% of the characters of each of 1 document(s) (data.holdout_fraction=0.05)") in out
    assert "data eval: none (data.eval_split is empty)" in out and "validation: loss" not in out
    assert "test (held out): loss" in out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["step"] == 20 and "val_loss" not in results and results["test_loss"] < 5.55
    assert not [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
                if "val_loss" in r]
    m = api.load(tmp_path / "run", step="best")  # no validation losses: 'best' is the latest step
    assert m.step == 20


def test_early_stopping_and_a_test_split_that_is_not_held_out(tmp_path, capsys):
    source = _single_file(tmp_path)
    # lr 1e-30 (and Muon's Adam part at 1e-30) leaves the weights as they are: the second evaluation
    # does not improve on the first.
    assert cli.main(_args(tmp_path, source, 40, "--config.optim.lr=1e-30", "--config.optim.adam_lr=1e-30",
                          "--config.train.eval_every=5",
                          "--config.checkpoint.every=100", "--config.train.early_stopping.metric=val_loss",
                          "--config.train.early_stopping.patience=1", "--config.train.sample_tokens=0",
                          "--config.data.holdout_fraction=0")) == 0
    out = capsys.readouterr().out
    assert "early stopping at step 10: val_loss did not go below its best" in out
    assert "data test: " in out and "the same text as train, NOT held out" in out
    assert "test (the training text itself, NOT held out): loss" in out and "test (held out)" not in out
    assert json.loads((tmp_path / "run" / "results.json").read_text())["step"] == 10
    assert 10 in [int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()]
    assert cli.main(_args(tmp_path, source, 40, "--config.train.early_stopping.metric=val_loss",
                          "--config.data.eval_split=")) == 2
    assert capsys.readouterr().err.strip() == (
        "gpt2-jax: error: config key train.early_stopping.metric: 'val_loss' needs validation metrics but "
        "data.eval_split is empty; set data.eval_split or train.early_stopping.metric=''")
