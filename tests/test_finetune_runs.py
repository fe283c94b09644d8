"""Fine-tuning runs end to end through `gpt2-jax train`: early stopping on a plateau, a classifier on
a labelled JSONL corpus the test writes, LoRA on a language model, exports and loading."""

from __future__ import annotations

import contextlib
import io
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
            "--config.optim.name=adamw",  # the fine-tuning experiments' optimizer, not the default run's Muon
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


@pytest.fixture(scope="module")
def plateau(tmp_path_factory):
    """A pre-training run built to plateau (lr 1e-9: the validation loss cannot move by min_delta,
    so the first evaluation stays the best), with early stopping on val_loss, patience 2."""
    tmp_path = tmp_path_factory.mktemp("plateau")
    args = _args(tmp_path, "run", _corpus(tmp_path), 100, "--config.optim.lr=1e-9",
                 "--config.train.early_stopping.metric=val_loss", "--config.train.early_stopping.patience=2",
                 "--config.train.early_stopping.min_delta=1e-3")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert cli.main(args) == 0
    return tmp_path, args, out.getvalue()


def test_early_stopping_stops_a_plateaued_pretraining_run_where_patience_says(plateau, capsys):
    tmp_path, args, out = plateau
    assert "early stopping at step 15: val_loss did not go below its best" in out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    es = results["early_stopping"]
    assert results["step"] == 15 and es["stopped"] and es["stopped_step"] == 15 and es["best_step"] == 5
    assert results["evaluated_step"] == 5 and "test_loss" in results
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert 5 in steps and steps[-1] == 15  # the best and the last are kept
    assert cli.main(args) == 0  # run again: nothing is trained
    assert "stopped early at step 15" in capsys.readouterr().out


def _hf_logits(hf_dir, ids, pad):
    import torch
    import transformers

    hf = transformers.GPT2ForSequenceClassification.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        return hf(torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(ids != pad).long()).logits.numpy()


def test_classifier_trains_predicts_and_round_trips_through_transformers(tmp_path, capsys):
    import numpy as np

    from gpt2_jax import api
    from gpt2_jax.posttrain import predict

    source = _labelled(tmp_path)
    args = _args(tmp_path, "cls", source, 20, "--config.task.kind=classify", "--config.data.seq_len=64",
                 "--config.finetune.freeze=embeddings", "--config.finetune.lr_multipliers=head=10",
                 "--config.task.aux_lm_weight=0.5", "--config.train.early_stopping.metric=val_accuracy",
                 "--config.train.early_stopping.patience=5")
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "data train:" in out and "160 examples; classes down" in out
    assert "trained (lr_x1" in out and "lr_x10 128)" in out and "frozen; optimizer state" in out
    assert "test (held out): loss" in out and "macro-F1" in out
    run = tmp_path / "cls"
    results = json.loads((run / "results.json").read_text())
    assert results["test_accuracy"] > 0.8 and {"test_macro_f1", "test_recall_up", "test_recall_down"} <= set(results)
    assert sum(map(sum, results["test_confusion"])) == 32
    assert (run / "confusion_test.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_accuracy" in r for r in rows) and any("lm_loss" in r for r in rows)

    assert cli.main(["predict", "--run", str(run), "--input", str(tmp_path / "test.jsonl")]) == 0
    assert "32 records classified" in capsys.readouterr().out
    written = [json.loads(line) for line in (tmp_path / "test.predictions.jsonl").read_text().splitlines()]
    m = api.load(run, step="best")
    one = m.classify(written[0]["text"])
    assert one.label == written[0]["predicted"] and sum(one.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="is a classify model .* not a language model; use .classify"):
        m.generate("rise")

    assert cli.main(["convert", str(run), "--to", "hf", "--out", str(tmp_path / "hf"), "--step", "best"]) == 0
    texts = [r["text"] for r in written[:5]]
    tokens, lengths = predict.encode_texts(m.tokenizer.encode, texts, 64, 256)
    tokens = tokens[:, :lengths.max()]
    ours = np.asarray(m._classifier.logits(m.params, m.model, tokens, lengths)[0])
    theirs = _hf_logits(tmp_path / "hf", tokens, 256)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
    assert cli.main(["convert", str(tmp_path / "hf"), "--to", "run", "--out", str(tmp_path / "back")]) == 0
    back = api.load(tmp_path / "back").classify(texts)
    for b, (o, name) in zip(back, [(row, m.task["id2label"]) for row in ours]):
        expected = np.exp(o - o.max()) / np.exp(o - o.max()).sum()
        assert [b.probabilities[n] for n in name] == pytest.approx(expected.tolist(), abs=1e-5)
    capsys.readouterr()
    assert cli.main(["eval", "--run", str(tmp_path / "hf"), "--data", f"x=text:{tmp_path}/test.jsonl"]) == 2
    assert "is a sequence classifier (labels ['down', 'up']), not a language model" in capsys.readouterr().err


def test_lora_sft_trains_adapters_only_and_its_merged_export_equals_the_unmerged_run(plateau, tmp_path, capsys):
    import numpy as np

    from gpt2_jax import api

    base_run = plateau[0] / "run"
    with open(tmp_path / "sft.jsonl", "w") as f:
        for i in range(64):
            f.write(json.dumps({"prompt": f"Q: who wrote verse {i}?\nA:", "completion": " Shakespeare."}) + "\n")
    args = _args(tmp_path, "lora", f"jsonl:{tmp_path}/sft.jsonl:prompt,completion", 10, "--config.task.kind=sft",
                 "--config.finetune.lora.rank=4", "--config.finetune.lora.targets=qkv,mlp", "--init-from",
                 str(base_run))
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "initialized the GPT-2 weights from run" in out and "fresh lora" in out
    assert "params: 7,168 trained (lr_x1 7,168), 124,736 frozen" in out  # 2 layers x 4 x (64+192 + 64+256 + 256+64)
    assert cli.main(["export", "--run", str(tmp_path / "lora"), "--out", str(tmp_path / "merged"),
                     "--dtype", "float32"]) == 0
    ids = np.array([[10, 81, 58, 32, 119, 104, 111, 32]])
    unmerged = api.load(tmp_path / "lora", step="best", merge_lora=False)
    assert unmerged.adapters is not None and "lora" not in unmerged.params
    merged = api.load(tmp_path / "merged")
    np.testing.assert_allclose(np.asarray(merged.logits(ids)), np.asarray(unmerged.logits(ids)), atol=1e-5, rtol=0)
    base = api.load(base_run)
    assert np.abs(np.asarray(base.logits(ids)) - np.asarray(unmerged.logits(ids))).max() > 1e-4
    capsys.readouterr()
    assert cli.main(["predict", "--run", str(base_run), "--input", str(tmp_path / "sft.jsonl"),
                     "--field", "prompt"]) == 2
    assert "is a language model, not a classifier" in capsys.readouterr().err
