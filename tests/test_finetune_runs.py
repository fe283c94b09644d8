"""Fine-tuning runs end to end through `gpt2-jax train`: early stopping on a plateau, a classifier on
a labelled JSONL corpus the test writes, LoRA on a language model, exports and loading."""

from __future__ import annotations

import json
import pathlib
import random

import pytest

from gpt2_jax.cli import app as cli
from gpt2_jax.train import early_stopping

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT = str(ROOT / "experiments" / "default.py")
VERSE = ("Shall I compare thee to a summer's day? Thou art more lovely and more temperate: "
         "Rough winds do shake the darling buds of May, and summer's lease hath all too short a date.\n")


def _corpus(tmp_path: pathlib.Path) -> str:
    for split, n in (("train", 20), ("validation", 4), ("test", 4)):
        d = tmp_path / "corpus" / split
        d.mkdir(parents=True)
        (d / "doc.txt").write_text(VERSE * n)
    return f"text:{tmp_path}/corpus/{{split}}/*.txt"


def _labelled(tmp_path: pathlib.Path) -> str:
    r = random.Random(0)
    for split, n in (("train", 160), ("validation", 32), ("test", 32)):
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            for _ in range(n):
                label = r.choice(["up", "down"])
                words = ["rise", "climb", "soar"] if label == "up" else ["fall", "sink", "drop"]
                text = " ".join(r.choice(words + ["the", "and", "then"]) for _ in range(r.randint(3, 10)))
                f.write(json.dumps({"text": text, "label": label}) + "\n")
    return f"jsonl:{tmp_path}/{{split}}.jsonl:text,label"


def _args(tmp_path, run, source, steps, *extra):
    return ["train", "--config", DEFAULT, "--quiet", f"--config.data.source={source}",
            f"--config.data.data_dir={tmp_path}/data", f"--config.train.run_dir={tmp_path}/{run}",
            f"--config.train.steps={steps}", "--config.model.preset=nano", "--config.data.seq_len=32",
            "--config.data.batch_size=8", "--config.optim.warmup_steps=0", "--config.optim.lr=3e-3",
            "--config.train.eval_every=5", "--config.checkpoint.every=10", "--config.train.log_every=5",
            "--config.train.sample_tokens=0", "--config.train.tensorboard=false", "--config.eval.batch_size=8",
            "--config.checkpoint.async_save=false", *extra]


def test_patience_rule():
    rule = early_stopping.EarlyStopping("val_accuracy", "max", patience=2, min_delta=0.01)
    seen = [rule.update(s, {"val_accuracy": v}) for s, v in ((10, 0.5), (20, 0.6), (30, 0.605), (40, 0.7),
                                                              (50, 0.69), (60, 0.70))]
    assert seen == [False, False, False, False, False, True]
    assert rule.best_step == 40 and rule.stopped_step == 60 and "in 2 evaluation(s)" in rule.reason()
    assert early_stopping.resolve_mode("val_macro_f1", "auto") == "max"
    assert early_stopping.resolve_mode("val_bpb", "auto") == "min"
    with pytest.raises(ValueError, match="'val_acc' is not reported by evaluation"):
        early_stopping.EarlyStopping("val_acc").update(5, {"val_loss": 1.0})


def test_early_stopping_stops_a_plateaued_pretraining_run_where_patience_says(tmp_path, capsys):
    source = _corpus(tmp_path)
    # lr 1e-9: the validation loss cannot move by min_delta, so the first evaluation stays the best.
    args = _args(tmp_path, "run", source, 100, "--config.optim.lr=1e-9", "--config.train.early_stopping.metric=val_loss",
                 "--config.train.early_stopping.patience=2", "--config.train.early_stopping.min_delta=1e-3")
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "early stopping at step 15: val_loss did not go below its best" in out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    es = results["early_stopping"]
    assert results["step"] == 15 and es["stopped"] and es["stopped_step"] == 15 and es["best_step"] == 5
    assert results["evaluated_step"] == 5 and "test_loss" in results
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert 5 in steps and steps[-1] == 15  # the best and the last are kept
    assert cli.main(args) == 0  # run again: nothing is trained
    assert "stopped early at step 15" in capsys.readouterr().out
