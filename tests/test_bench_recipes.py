"""`gpt2-jax bench recipes`: a real training subprocess read into a curve, nanoGPT's lines and data
format, and the held-out scoring of a nanoGPT checkpoint."""

from __future__ import annotations

import math
import os
import pathlib
import pickle
import sys
import types

import numpy as np
import pytest

from gpt2_jax.bench import recipes


def _corpus(tmp_path: pathlib.Path) -> pathlib.Path:
    corpus = tmp_path / "corpus"
    for split in ("train", "validation", "test"):
        (corpus / split).mkdir(parents=True)
        (corpus / split / "a.txt").write_text("To be, or not to be, that is the question. " * 60)
    return corpus


def test_a_training_run_becomes_stamped_validation_points_and_final_scores(tmp_path):
    corpus = _corpus(tmp_path)
    ours = recipes.recipe_list(tmp_path / "out", str(tmp_path / "data"), None, eval_every=2)[0]
    ours["argv"] += [f"--config.data.source=text:{corpus}/{{split}}/*.txt", "--config.model.preset=nano",
                     "--config.train.steps=4", "--config.optim.warmup_steps=1", "--config.data.seq_len=32",
                     "--config.data.batch_size=4", "--config.checkpoint.every=4", "--config.train.sample_tokens=0",
                     "--config.train.tensorboard=false"]
    echoed = []
    row = recipes.run_recipe(ours, dict(os.environ), echoed.append)
    assert [p["step"] for p in row["curve"]] == [2, 4]
    assert 0 < row["curve"][0]["seconds"] < row["curve"][1]["seconds"] < row["wall_s"]
    assert all(1.0 < p["bpb"] < 9.0 for p in row["curve"])
    assert 1.0 < row["validation"] < 9.0 and 1.0 < row["test"] < 9.0
    assert len(echoed) == 2 and "validation" in echoed[0]
    assert (tmp_path / "out" / "default" / "results.json").is_file()  # the run went where the recipe says


def test_a_failing_recipe_is_one_error_with_its_last_lines(tmp_path):
    broken = {"name": "broken", "kind": "nanogpt", "cwd": str(tmp_path),
              "argv": [sys.executable, "-c", "print('step 0: train loss 5.0000, val loss 5.5452'); "
                       "raise SystemExit('no data here')"]}
    with pytest.raises(RuntimeError, match=r"broken failed \(exit 1\): .*no data here"):
        recipes.run_recipe(broken, {}, print)


def test_nanogpt_lines_read_as_bits_per_byte_and_other_lines_as_nothing():
    kind, step, bpb = recipes.parse_line("nanogpt", "step 250: train loss 1.9770, val loss 2.0794")
    assert (kind, step) == ("val", 250) and bpb == pytest.approx(2.0794 / math.log(2))
    assert recipes.parse_line("nanogpt", "iter 250: loss 1.9770, time 80.12ms, mfu -100.00%") is None
    assert recipes.parse_line("gpt2_jax", "step 50/600: loss 2.5529, 2,695 tokens/s, elapsed 0:00:38, eta 0:07:06") is None


def test_nanogpt_gets_our_byte_tokens_in_its_own_format(tmp_path):
    splits = {"train": types.SimpleNamespace(tokens=np.array([72, 105, 256, 33], np.uint16)),
              "validation": types.SimpleNamespace(tokens=np.array([1, 2, 3], np.uint16))}
    folder = recipes.write_nanogpt_data(splits, tmp_path / "data")
    assert np.fromfile(folder / "train.bin", np.uint16).tolist() == [72, 105, 256, 33]
    assert np.fromfile(folder / "val.bin", np.uint16).tolist() == [1, 2, 3]
    assert pickle.loads((folder / "meta.pkl").read_bytes()) == {"vocab_size": 257}


def test_a_nanogpt_checkpoint_is_scored_on_every_byte_of_a_split(tmp_path):
    torch = pytest.importorskip("torch")
    # A model.py with nanoGPT's interface whose logits are all zero: every byte costs log2(257) bits.
    (tmp_path / "model.py").write_text(
        "import dataclasses, torch\n"
        "@dataclasses.dataclass\n"
        "class GPTConfig:\n    block_size: int = 8\n    vocab_size: int = 257\n"
        "class GPT(torch.nn.Module):\n"
        "    def __init__(self, config):\n"
        "        super().__init__(); self.config = config; self.bias = torch.nn.Parameter(torch.zeros(config.vocab_size))\n"
        "    def forward(self, idx, targets=None):\n"
        "        return self.bias.expand(*idx.shape, -1), None\n")
    torch.save({"model_args": {"block_size": 8, "vocab_size": 257}, "model": {"_orig_mod.bias": torch.zeros(257)}},
               tmp_path / "ckpt.pt")
    split = types.SimpleNamespace(tokens=np.arange(21, dtype=np.uint16), header={"num_bytes": 20})
    bpb = recipes.score_nanogpt(str(tmp_path), tmp_path / "ckpt.pt", {"test": split}, batch=2)["test"]
    assert bpb == pytest.approx(math.log2(257))  # 20 targets (3 windows of 8, the last padded) over 20 bytes
