"""Inspection (gpt2_jax/interpret): parity with transformers' GPT-2 on the same converted weights,
the logit lens, entropy, per-token loss, no cost when not collected, embeddings, pictures, errors."""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import numpy as np
import pytest
import scipy.stats
import torch  # the `test` extra installs it: a missing reference must fail, not skip
from test_parity import VOCAB, converted, hf_model  # noqa: F401  (the shared random HF GPT-2 and its conversion)

from gpt2_jax import config as config_lib
from gpt2_jax.data import tokenizers
from gpt2_jax.interpret import embeddings, forward, plots
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.optim import optimizers
from gpt2_jax.train import steps as train_steps

T = 24


class _Tokenizer:
    """Ids 0..VOCAB-1 as text 't<id> ' (the HF test model's vocabulary has no real tokenizer)."""

    vocab_size, eos_id = VOCAB, 0

    def decode_bytes(self, ids):
        return "".join(f"t{i}" for i in ids).encode()


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(7).integers(1, VOCAB, T).astype(np.int32)


@pytest.fixture(scope="module")
def hf_out(hf_model, ids):  # noqa: F811
    """transformers' attentions, hidden states, logits, and the last block's raw output (a hook)."""
    last = {}
    hook = hf_model.transformer.h[-1].register_forward_hook(
        lambda mod, args, out: last.setdefault("x", (out[0] if isinstance(out, tuple) else out).detach()))
    with torch.no_grad():
        out = hf_model(torch.from_numpy(ids).long()[None], output_attentions=True, output_hidden_states=True)
    hook.remove()
    return {"attentions": np.stack([a[0].numpy() for a in out.attentions]),
            "hidden": [h[0].numpy() for h in out.hidden_states], "last_block": last["x"][0].numpy(),
            "logits": out.logits[0].double().numpy()}


@pytest.fixture(scope="module", params=["xla", "blocked"])
def inspection(request, converted, ids):  # noqa: F811
    cfg, params = converted
    model = model_lib.GPT2(dataclasses.replace(cfg, attention=request.param))
    return forward.inspect_ids(model, params, ids, _Tokenizer(), top_k=5)


def test_attention_and_residual_stream_equal_transformers(inspection, hf_out):
    n_layer = len(hf_out["attentions"])
    assert inspection.attention.shape == (n_layer, 4, T, T) and inspection.residual.shape == (n_layer + 1, T, 64)
    np.testing.assert_allclose(inspection.attention, hf_out["attentions"], atol=1e-5, rtol=0)
    # hidden_states[i] is the stream entering block i; transformers' last entry is after ln_f, so the
    # stream after the last block is compared with that block's own output.
    for i in range(n_layer):
        np.testing.assert_allclose(inspection.residual[i], hf_out["hidden"][i], atol=1e-5, rtol=0)
    np.testing.assert_allclose(inspection.residual[n_layer], hf_out["last_block"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(inspection.attention.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(inspection.attention, k=1) == 0)  # causal: no query sees a later key


def test_last_lens_layer_entropy_topk_and_loss_equal_the_logits(inspection, hf_out, ids):
    logp = hf_out["logits"] - scipy.special.logsumexp(hf_out["logits"], axis=-1, keepdims=True)
    probs = np.exp(logp)
    true_next = probs[np.arange(T - 1), ids[1:]]
    np.testing.assert_allclose(inspection.lens_true_prob[-1, :-1], true_next, atol=1e-5, rtol=0)
    assert np.isnan(inspection.lens_true_prob[:, -1]).all() and np.isnan(inspection.loss[-1])
    np.testing.assert_array_equal(inspection.lens_top_ids[-1], inspection.top_ids)
    np.testing.assert_array_equal(inspection.top_ids, np.argsort(-probs, axis=-1, kind="stable")[:, :5])
    np.testing.assert_allclose(inspection.top_probs, np.sort(probs, axis=-1)[:, ::-1][:, :5], atol=1e-6, rtol=0)
    np.testing.assert_allclose(inspection.entropy, scipy.stats.entropy(probs, axis=-1), atol=1e-5, rtol=0)
    np.testing.assert_allclose(inspection.entropy_bits, scipy.stats.entropy(probs, base=2, axis=-1), atol=1e-5)
    np.testing.assert_allclose(inspection.loss[:-1], -np.log(true_next), atol=1e-5, rtol=0)
    # earlier lens layers are other distributions, each a probability
    assert np.all((inspection.lens_true_prob[:, :-1] > 0) & (inspection.lens_true_prob[:, :-1] < 1))
    assert not np.allclose(inspection.lens_true_prob[0, :-1], true_next, atol=1e-3)


def test_a_prefix_inspects_as_the_start_of_the_whole(inspection, converted, ids):  # noqa: F811
    """Texts are padded to a few compiled lengths: 9 tokens (padded to 16) read exactly as the first 9 of 24 (32)."""
    cfg, params = converted
    model = model_lib.GPT2(dataclasses.replace(cfg, attention=model_lib.attention.resolve_implementation(
        "auto", "float32")))
    short = forward.inspect_ids(model, params, ids[:9], _Tokenizer(), top_k=5)
    first = {"attention": np.s_[:, :, :9, :9], "residual": np.s_[:, :9], "entropy": np.s_[:9],
             "top_probs": np.s_[:9], "lens_top_probs": np.s_[:, :9]}
    for name, part in first.items():
        np.testing.assert_allclose(getattr(short, name), getattr(inspection, name)[part], atol=2e-6, err_msg=name)
    np.testing.assert_allclose(short.loss[:8], inspection.loss[:8], atol=2e-6)
    assert np.isnan(short.loss[8]) and not np.isnan(inspection.loss[8])


def test_to_dict_is_json_with_nulls(inspection):
    import json

    d = json.loads(json.dumps(inspection.to_dict()))
    assert d["loss_nats"][-1] is None and d["logit_lens"]["true_next_prob"][0][-1] is None
    assert d["logit_lens"]["layers"] == ["embed", "block 0", "block 1"]
    assert d["entropy_bits"][3] == pytest.approx(d["entropy_nats"][3] / math.log(2))
    assert len(d["top_k"]) == T and len(d["top_k"][0]["tokens"]) == 5 and d["tokens"][0] == f"t{inspection.ids[0]}"


def _op_count(hlo_text: str) -> int:
    return len(re.findall(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=", hlo_text, flags=re.M))


def _train_step_programs(cfg) -> tuple[str, str]:
    """The train step's jaxpr (as traced, before any dead-code elimination) and lowered StableHLO."""
    model = model_lib.GPT2(cfg)
    schedule, optimizer = optimizers.optimizer_from_config(config_lib.base_config())
    state = jax.eval_shape(lambda: train_steps.init_state(model, optimizer, jax.random.key(0), 16))
    batch = jax.ShapeDtypeStruct((1, 2, 17), np.int32)
    step = train_steps.make_train_step(model, optimizer, schedule)
    return str(jax.make_jaxpr(step)(state, batch)), jax.jit(step).lower(state, batch).as_text()


def test_sowing_costs_nothing_unless_collected(monkeypatch):
    """The train step and the forward of every attention implementation trace and lower to the very
    same program (so compile to the same one) as with the model's sow replaced by a no-op: nothing
    sown is even traced unless asked. Collecting the intermediates does add the work."""
    cfg = model_lib.GPT2Config(vocab_size=97, n_positions=16, n_layer=2, n_head=2, n_embd=32)
    params = model_lib.param_shapes(cfg)  # tracing needs shapes only

    def forward_jaxpr(attention, **kw):
        model = model_lib.GPT2(dataclasses.replace(cfg, attention=attention))
        return str(jax.make_jaxpr(lambda p, x: model.apply(p, x, **kw))({"params": params}, np.zeros((1, 16), np.int32)))

    impls = ("blocked", "xla")
    train_with, plain = _train_step_programs(cfg), [forward_jaxpr(a) for a in impls]
    collecting = [forward_jaxpr(a, mutable=[model_lib.INTERMEDIATES]) for a in impls]
    monkeypatch.setattr(model_lib, "sow", lambda module, name, value_fn: None)
    train_without = _train_step_programs(cfg)
    assert train_with == train_without and _op_count(train_with[1]) > 500
    assert [forward_jaxpr(a) for a in impls] == plain
    for c, p in zip(collecting, plain):  # each layer's softmax is really there when asked
        assert c.count(" exp ") >= p.count(" exp ") + cfg.n_layer and len(c) > len(p)


def test_encode_errors_and_truncation():
    tok = tokenizers.ByteTokenizer()
    ids, cut = forward.encode(tok, "abc", 8)
    assert ids.tolist() == [256, 97, 98, 99] and cut is None
    assert forward.encode(tok, [5, 6], 8, prepend_eos=True)[0].tolist() == [5, 6]  # ids are taken as they are
    for bad, match in (("", "the text to inspect is empty"), ([], "no token ids"), ([1, 300], "token id 300"),
                       (np.zeros((2, 3), int), "one sequence"), ("x" * 9, "10 tokens, more than the model's context "
                                                                         "of 8; shorten it, or pass truncate=True")):
        with pytest.raises(ValueError, match=match) as info:
            forward.encode(tok, bad, 8)
        assert "\n" not in str(info.value)
    ids, cut = forward.encode(tok, "x" * 9, 8, truncate=True)
    assert ids.tolist() == [256] + [120] * 7 and cut == 10


def test_index_errors_are_one_line(inspection):
    for call, match in ((lambda: inspection.attention_map(2, 0), "layer 2 is out of range: the model has 2 layers"),
                        (lambda: inspection.attention_map(0, 4), "head 4 is out of range: the model has 4 heads"),
                        (lambda: plots.attention_grid(inspection, layers=[0], heads=[-1]), "head -1 is out of range")):
        with pytest.raises(ValueError, match=match):
            call()


def test_pictures_have_tokens_on_their_axes(inspection, tmp_path):
    fig = plots.attention_grid(inspection, layers=[1], heads=[0, 3])
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 2 and images[0].get_title() == "layer 1 head 0"
    assert [t.get_text() for t in images[0].get_yticklabels()] == inspection.tokens
    np.testing.assert_array_equal(images[1].images[0].get_array(), inspection.attention[1, 3])
    strip = plots.entropy_strip(inspection, per_row=10)
    rows = [ax for ax in strip.axes if ax.images]
    assert len(rows) == 3 and [t.get_text() for t in rows[0].get_xticklabels()] == inspection.tokens[:10]
    lens = plots.logit_lens_grid(inspection, max_positions=6)
    texts = [t.get_text() for t in lens.axes[0].texts]
    assert len(texts) == 3 * 6 and texts[-1] == inspection.label(inspection.lens_top_ids[2, 5, 0])[:6]
    for i, f in enumerate((fig, strip, lens)):
        f.savefig(tmp_path / f"{i}.png")
        assert (tmp_path / f"{i}.png").read_bytes()[:4] == b"\x89PNG"


def test_nearest_tokens_and_pca():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(12, 8))
    table[3] = 5.0 * table[1]  # same direction: cosine 1
    table[4] = -table[1] + 0.01 * rng.normal(size=8)  # opposite: the least similar
    [near] = embeddings.nearest_tokens(table, [1], k=11)
    assert near[0][0] == 3 and near[0][1] == pytest.approx(1.0) and near[-1][0] == 4 and 1 not in [i for i, _ in near]
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    assert [s for _, s in near] == pytest.approx(sorted((unit[1] @ unit.T)[np.arange(12) != 1], reverse=True))
    # points in a 2-D plane of the 8-D space: the PCA keeps every pairwise distance and all the variance
    plane = rng.normal(size=(6, 2)) @ rng.normal(size=(2, 8)) + 3.0
    points, explained = embeddings.pca_2d(plane)
    dist = lambda x: np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.testing.assert_allclose(dist(points), dist(plane), atol=1e-9)
    assert explained.sum() == pytest.approx(1.0) and explained[0] >= explained[1]
    tok = tokenizers.ByteTokenizer()
    proj = embeddings.project(rng.normal(size=(257, 8)), tok, ["a", "b", 99, "a"])
    assert proj.ids == [97, 98, 99] and proj.labels == ["a", "b", "c"] and proj.points.shape == (3, 2)
    with pytest.raises(ValueError, match="'ab' is 2 tokens, not one"):
        embeddings.token_ids(tok, ["ab"])
    with pytest.raises(ValueError, match="at least two tokens"):
        embeddings.pca_2d(table[:1])


# --------------------------------------------------------------------------- on a trained run

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tiny_run import make_run

    return make_run(tmp_path_factory.mktemp("inspect") / "run")


def test_loaded_model_inspect_and_embeddings(run):
    import gpt2_jax

    m = gpt2_jax.load(run)
    ins = m.inspect("Shall I compare thee")
    assert ins.tokens[:3] == ["<eos>", "S", "h"] and ins.attention.shape == (2, 2, 21, 21)
    ids = np.asarray(m.tokenizer.encode("Shall I compare thee"))
    logits = np.asarray(m.logits(np.concatenate([[m.tokenizer.eos_id], ids])), np.float64)[0]
    probs = scipy.special.softmax(logits, axis=-1)
    np.testing.assert_allclose(ins.entropy, scipy.stats.entropy(probs, axis=-1), atol=1e-5)
    assert ins.loss[:-1].mean() < math.log(257)  # it learned the verse a little
    near = m.nearest_tokens("e", k=3)
    assert list(near) == ["e"] and len(near["e"]) == 3 and all(-1 <= s <= 1 for _, s in near["e"])
    proj = m.embedding_pca(["a", "e", "i", "o", "u", "t"])
    assert proj.labels == ["a", "e", "i", "o", "u", "t"] and 0 < proj.explained.sum() <= 1
    with pytest.raises(ValueError, match="more than the model's context of 128"):
        m.inspect("x" * 200)
    cut = m.inspect("x" * 200, truncate=True)
    assert cut.truncated_from == 201 and len(cut.ids) == 128


def test_inspect_command_writes_pictures_and_numbers(run, tmp_path, capsys):
    import json

    from gpt2_jax.cli import app as cli

    out = tmp_path / "out"
    assert cli.main(["inspect", "--run", str(run), "--text", "Thou art more lovely", "--out", str(out),
                     "--layers", "1", "--heads", "0,1", "--tokens", "a", "e", "o"]) == 0
    printed = capsys.readouterr()
    assert "mean next-token entropy" in printed.out and "wrote" in printed.err
    for name in ("attention.png", "entropy.png", "logit_lens.png", "embeddings.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    numbers = json.loads((out / "inspection.json").read_text())
    assert numbers["tokens"][:2] == ["<eos>", "T"] and numbers["embeddings"]["pca"]["tokens"] == ["a", "e", "o"]
    assert set(numbers["embeddings"]["nearest_by_cosine"]) == {"a", "e", "o"}
    arrays = np.load(out / "arrays.npz")
    assert arrays["attention"].shape == (2, 2, 21, 21) and arrays["residual"].shape == (3, 21, 64)
    for args, message in ((["--layers", "2"], "layer 2 is out of range: the model has 2 layers"),
                          (["--heads", "x"], "--heads 'x' is not a comma-separated list"),
                          (["--text", ""], "the text to inspect is empty"),
                          (["--text", "y" * 130], "131 tokens, more than the model's context of 128")):
        argv = ["inspect", "--run", str(run), "--text", "abc", "--out", str(tmp_path / "bad"), *args]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("gpt2-jax: error:") and message in err[-1], err
    assert not (tmp_path / "bad").exists()  # nothing written for a bad request
    assert cli.main(["inspect", "--run", str(run), "--text", "y" * 130, "--truncate", "--out", str(out)]) == 0
    assert "notice: the text is 131 tokens; inspected its first 128" in capsys.readouterr().err


SHARDED_PROBE = """
import sys, jax, numpy as np, gpt2_jax
one, four = gpt2_jax.load(sys.argv[1], devices=1), gpt2_jax.load(sys.argv[1], devices=4)
assert four.mesh is not None and four.mesh.size == 4
a, b = one.inspect("Shall I compare thee"), four.inspect("Shall I compare thee")
for name in ("attention", "residual", "entropy", "lens_true_prob", "top_probs"):
    np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=1e-5, equal_nan=True)
print("same on", jax.device_count(), "devices")
"""


def test_inspect_on_a_multi_device_load(run):
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SHARDED_PROBE, str(run)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert proc.stdout.strip().endswith("same on 4 devices")
