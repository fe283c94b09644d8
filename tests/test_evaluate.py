"""Sliding-window evaluation: window coverage, parity with transformers' per-token NLL, units, LAMBADA,
detokenizers, dataset specs and the table writers."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest
import torch  # the `test` extra installs it: a missing reference must fail, not skip
import transformers

from gpt2_jax.data import tokenizers
from gpt2_jax.evaluate import datasets as eval_sets
from gpt2_jax.evaluate import continuations, detokenize, lambada, tables
from gpt2_jax.evaluate import scoring as evaluate
from gpt2_jax.model.gpt2 import GPT2, GPT2Config
from gpt2_jax.weights import huggingface as convert

CONTEXT = 64
TEXT = ("Now is the winter of our discontent made glorious summer by this sun of York; and all the clouds "
        "that lour'd upon our house in the deep bosom of the ocean buried. ") * 4  # 508 bytes


@pytest.fixture(scope="module")
def hf_model():
    """A random byte-vocabulary HF GPT-2 (fp32, eager attention, no dropout) with peaked logits."""
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=CONTEXT, vocab_size=257,
                                     bos_token_id=256, eos_token_id=256, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, initializer_range=0.2, attn_implementation="eager")
    return transformers.GPT2LMHeadModel(hf_cfg).eval()


@pytest.fixture(scope="module")
def ours(hf_model):
    cfg = convert.config_from_hf(hf_model.config.to_dict())
    params = convert.params_from_hf_state_dict({k: v.numpy() for k, v in hf_model.state_dict().items()}, cfg)
    return GPT2(cfg), params


def _hf_reference_logp(hf_model, ids: np.ndarray, context: int, stride: int) -> np.ndarray:
    """Per-target next-token log-probabilities (targets x vocab) by transformers: windows of `context`
    inputs every `stride` tokens, each scoring the targets not scored before; the last window is
    aligned to the end of the text."""
    n_targets = len(ids) - 1
    out = np.full((n_targets, hf_model.config.vocab_size), np.nan)
    begin, scored = 0, 0
    while scored < n_targets:
        begin = min(begin, n_targets - context)
        window = torch.from_numpy(ids[begin:begin + context + 1].astype(np.int64))[None]
        with torch.no_grad():
            logp = torch.log_softmax(hf_model(window[:, :-1]).logits.double(), -1)[0].numpy()
        out[scored:begin + context] = logp[scored - begin:]
        scored, begin = begin + context, begin + stride
    return out


@pytest.mark.parametrize("n,context,stride", [(2, 8, 8), (9, 8, 8), (10, 8, 3), (100, 16, 5), (17, 16, 16), (5, 8, 1)])
def test_sliding_windows_score_each_target_once_with_enough_context(n, context, stride):
    seen = np.zeros(n - 1, int)
    for w in evaluate.sliding_windows(n, context, stride):
        assert 0 <= w.start and w.start + w.length <= n - 1 and w.length == min(context, n - 1)
        seen[w.start + w.first_scored:w.start + w.length] += 1
        if w.start > 0:  # after the first window, every scored target sees >= context - stride tokens
            assert w.first_scored >= context - stride
    assert (seen == 1).all()


@pytest.mark.parametrize("stride", [CONTEXT, CONTEXT // 2])
def test_per_token_nll_matches_transformers(hf_model, ours, stride):
    model, params = ours
    tok = tokenizers.ByteTokenizer()
    [ids] = evaluate.encode_documents([TEXT], tok)
    scorer = evaluate.TokenScorer(model, params, batch_size=4)
    [nll] = evaluate.document_nlls(scorer, [ids], CONTEXT, stride)
    logp = _hf_reference_logp(hf_model, ids, CONTEXT, stride)
    ref = -logp[np.arange(len(ids) - 1), ids[1:]]
    assert len(nll) == len(TEXT.encode()) and not np.isnan(ref).any()
    np.testing.assert_allclose(nll, ref, rtol=1e-4, atol=1e-6)
    out = evaluate.evaluate_texts(model, params, [TEXT], tok, context=CONTEXT, stride=stride, scorer=scorer)
    assert out["tokens"] == len(ref)
    assert out["ppl"] == pytest.approx(math.exp(ref.mean()), rel=1e-4)
    top1 = np.count_nonzero(logp.argmax(-1) == ids[1:])
    top5 = np.count_nonzero((np.argsort(-logp, axis=-1)[:, :5] == ids[1:, None]).any(-1))
    assert out["top1"] == top1 / len(ref) and out["top5"] == top5 / len(ref)
    assert 0 < top1 < top5 < len(ref)  # neither count is trivially 0 or everything


def test_uniform_model_units_follow_from_counts():
    """All-zero weights give uniform logits: ppl = vocab, and bpb / bpc / word ppl are exact from counts."""
    cfg = GPT2Config(vocab_size=257, n_positions=32, n_layer=1, n_head=2, n_embd=16)
    model = GPT2(cfg)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"])
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.tree.map(lambda b: b.value, shapes,
                          is_leaf=lambda x: hasattr(x, "value")), is_leaf=lambda x: hasattr(x, "shape"))
    texts = ["héllo wörld, a few words here", "second text\nwith two lines and more words " * 3]
    out = evaluate.evaluate_texts(model, params, texts, tokenizers.ByteTokenizer(), context=32, stride=16)
    n_bytes = sum(len(t.encode()) for t in texts)
    n_chars, n_words = sum(map(len, texts)), sum(len(t.split()) for t in texts)
    assert out["tokens"] == n_bytes  # the byte tokenizer: one token per byte, each scored once
    assert out["ppl"] == pytest.approx(257, rel=1e-5)
    assert out["bpb"] == pytest.approx(math.log2(257), rel=1e-5)
    assert out["bpc"] == pytest.approx(n_bytes * math.log2(257) / n_chars, rel=1e-5)
    assert out["word_ppl"] == pytest.approx(math.exp(n_bytes * math.log(257) / n_words), rel=1e-4)
    assert (out["words"], out["bytes"], out["chars"]) == (n_words, n_bytes, n_chars)


def test_lambada_matches_transformers(hf_model, ours):
    model, params = ours
    tok = tokenizers.ByteTokenizer()
    rng = np.random.default_rng(0)
    passages = [" ".join("".join(rng.choice(list("abcde"), rng.integers(1, 5))) for _ in range(rng.integers(3, 12)))
                for _ in range(7)]
    passages += [_passage_ending_in_argmax(hf_model, p) for p in passages[:12]]  # some last-token hits
    out = lambada.evaluate_lambada(model, params, passages, tok, batch_size=4, detokenizer="none")
    word_nll, word_hit, last_nll, last_hit = [], [], [], []
    for p in passages:
        ctx, word = lambada.split_last_word(p)
        ids = torch.tensor([[256] + tok.encode(ctx) + tok.encode(word)])
        with torch.no_grad():
            logp = torch.log_softmax(hf_model(ids[:, :-1]).logits.double(), -1)[0]
        tgt = ids[0, 1:]
        nll, hit = -logp.gather(-1, tgt[:, None])[:, 0], logp.argmax(-1) == tgt
        k = len(word)
        word_nll.append(nll[-k:].sum().item()), word_hit.append(bool(hit[-k:].all()))
        last_nll.append(nll[-1].item()), last_hit.append(bool(hit[-1]))
    assert out["passages"] == len(passages)
    assert out["acc"] == pytest.approx(np.mean(word_hit)) and out["acc_token"] == pytest.approx(np.mean(last_hit))
    assert out["ppl"] == pytest.approx(math.exp(np.mean(word_nll)), rel=1e-4)
    assert out["ppl_token"] == pytest.approx(math.exp(np.mean(last_nll)), rel=1e-4)
    assert 0 < np.mean(last_hit) < 1  # the accuracy check is not vacuous


def _passage_ending_in_argmax(hf_model, passage: str) -> str:
    """passage's context + " c", c the model's argmax after it if printable (else passage unchanged)."""
    ctx = lambada.split_last_word(passage)[0] + " "
    with torch.no_grad():
        best = int(hf_model(torch.tensor([[256] + list(ctx.encode())])).logits[0, -1].argmax())
    return ctx + chr(best) if 33 <= best < 127 else passage


def test_split_last_word():
    assert lambada.split_last_word("he said hello to  Anna \n") == ("he said hello to ", " Anna")
    with pytest.raises(ValueError, match="no last word"):
        lambada.split_last_word("single")


def test_detokenizers_as_published():
    raw = " = = Early life = = \n He paid 1 @,@ 000 ( or so ) , and \" he said \" it 's the king 's . \n"
    assert detokenize.get("wikitext")(raw) == ' == Early life ==\nHe paid 1,000 (or so), and "he said" it\'s the king\'s.\n'
    assert detokenize.get("ptb")("the firm 's shares do n't rise $ 1 \n") == "the firm's shares don't rise $1\n"
    assert detokenize.get("lambada")(" \u201cyes\u201d she said ") == '"yes" she said'
    with pytest.raises(ValueError, match="unknown detokenizer"):
        detokenize.get("wiki")


def test_eval_set_specs(tmp_path):
    assert eval_sets.parse("shakespeare/milton") == eval_sets.EvalSet("milton", "shakespeare/milton", "test")
    s = eval_sets.parse(f"wikitext103=text:{tmp_path}/wiki.test.tokens@valid")
    assert (s.name, s.split, s.task, s.detokenizer) == ("wikitext103", "valid", "lm", "wikitext")
    assert eval_sets.parse("lambada=text:/x/lambada.jsonl").task == "lambada"
    assert eval_sets.parse(f"text:{tmp_path}/notes.txt").name == "notes"
    with pytest.raises(ValueError, match="CBT"):
        eval_sets.parse("cbt_cn=text:/x")
    (tmp_path / "lam.jsonl").write_text('{"text": "a b c"}\nplain line here\n\n')
    assert eval_sets.read_texts(eval_sets.parse(f"lambada=text:{tmp_path}/lam.jsonl"), str(tmp_path)) == \
        ["a b c", "plain line here"]


def test_table_formats_and_paper_values(tmp_path):
    lm = {"task": "lm", "source": "text:w", "split": "test", "protocol": "p", "ppl": 20.0, "word_ppl": 30.0,
          "bpb": 1.1, "bpc": 1.2}
    lam = {"task": "lambada", "source": "text:l", "split": "test", "protocol": "q", "acc": 0.5, "ppl": 40.0,
           "acc_token": 0.6, "ppl_token": 3.0}
    table = tables.build([{"model": "a", "size": tables.paper_size(12, 768, 50257),
                           "results": {"wikitext2": lm, "lambada": lam}},
                          {"model": "b", "size": None, "results": {"wikitext2": lm}}])
    a, b = table["rows"]
    assert a["size"] == "117M" and a["paper"]["wikitext2/word_ppl"] == 29.41 and a["values"]["lambada/acc"] == 50.0
    assert b["paper"] == {} and "lambada/acc" not in b["values"]
    md = tables.to_markdown(table)
    assert "30 (paper 29.41)" in md and "| b | 20 | 30 |" in md and "- lambada = text:l@test: q" in md
    paths = tables.write(table, tmp_path)
    assert json.loads(open(paths["json"]).read())["columns"][0] == "wikitext2/ppl"
    assert open(paths["csv"]).read().splitlines()[1].startswith("a,117M,20.0,,30.0,29.41")
    assert open(paths["png"], "rb").read(4) == b"\x89PNG"


def test_passages_lie_inside_documents_evenly_spread():
    docs = [np.arange(100, 130), np.arange(5), np.arange(200, 260)]  # the middle one is too short for a passage
    picked = continuations.passages(docs, 6, prompt_tokens=4, new_tokens=3)
    assert [p.document for p in picked] == [0, 0, 2, 2, 2, 2]
    for p in picked:
        assert p.prompt + p.reference == docs[p.document][p.start:p.start + 7].tolist() and len(p.reference) == 3
    assert picked == continuations.passages(docs, 6, 4, 3)  # deterministic
    starts = [p.start + (0 if p.document == 0 else 24) for p in picked]  # offsets among the 24 + 54 places
    assert np.diff(starts).min() >= 12
    with pytest.raises(ValueError, match="room for 78 passages of 7 tokens"):
        continuations.passages(docs, 79, 4, 3)


def test_bleu_and_chrf_are_sacrebleus_on_aligned_pairs():
    import sacrebleu

    refs = ["the cat sat on the mat", "a dog ran in the park today", "it rained all day long"]
    hyps = ["the cat sat on a mat", "a dog ran in a park", "it rained all day"]
    out = continuations.overlap_scores(hyps, refs)
    assert out["bleu"] == sacrebleu.corpus_bleu(hyps, [refs]).score and out["chrf"] == sacrebleu.corpus_chrf(hyps, [refs]).score
    assert out["bleu_signature"].startswith("nrefs:1|case:mixed") and "version:2.6.0" in out["chrf_signature"]
    assert continuations.overlap_scores(refs, refs)["bleu"] == pytest.approx(100.0)
    shifted = continuations.overlap_scores(hyps[1:] + hyps[:1], refs)  # hypotheses paired with the wrong references
    assert shifted["bleu"] < out["bleu"] and shifted["chrf"] < out["chrf"]
    with pytest.raises(ValueError, match="2 hypotheses for 3 references"):
        continuations.overlap_scores(hyps[:2], refs)


def test_table_has_accuracy_and_generation_columns_only_when_scored():
    lm = {"task": "lm", "source": "text:w", "split": "test", "protocol": "p", "ppl": 20.0, "word_ppl": 30.0,
          "bpb": 1.1, "bpc": 1.2, "top1": 0.25, "top5": 0.5}
    table = tables.build([{"model": "a", "size": None, "results": {"w": {**lm, "bleu": 3.5, "chrf": 20.0}}},
                          {"model": "b", "size": None, "results": {"w": lm}}])
    assert table["columns"] == ["w/ppl", "w/word_ppl", "w/bpb", "w/bpc", "w/top1", "w/top5", "w/bleu", "w/chrf"]
    assert table["rows"][0]["values"]["w/top1"] == 25.0 and "w/bleu" not in table["rows"][1]["values"]
    assert "| w top-1 acc % | w top-5 acc % | w BLEU | w chrF |" in tables.to_markdown(table)
    assert "| b | 20 | 30 | 1.1 | 1.2 | 25 | 50 | - | - |" in tables.to_markdown(table)


def test_eval_and_table_commands_on_a_run(tmp_path, capsys):
    from gpt2_jax import api
    from gpt2_jax.cli import app as cli

    docs = {"a.txt": TEXT, "b.txt": "A short second document.\n"}
    (tmp_path / "test").mkdir()
    for name, text in docs.items():
        (tmp_path / "test" / name).write_text(text)
    (tmp_path / "lam.txt").write_text("the cat sat on the mat\nto be or not to be\n")
    source = f"text:{tmp_path}/{{split}}/*.txt"
    run = str(tmp_path / "run")
    assert cli.main(["train", "--config", "experiments/default.py", "--quiet", f"--config.data.source={source}",
                     "--config.data.train_split=test", "--config.data.eval_split=test", "--config.data.test_split=",
                     f"--config.data.data_dir={tmp_path}/data", f"--config.train.run_dir={run}",
                     "--config.model.preset=nano", "--config.data.seq_len=32", "--config.data.batch_size=4",
                     "--config.train.steps=2", "--config.optim.warmup_steps=1", "--config.train.eval_every=2", "--config.checkpoint.every=2",
                     "--config.train.sample_tokens=0", "--config.train.tensorboard=false"]) == 0
    data = [f"docs={source}", f"lambada=text:{tmp_path}/lam.txt"]
    out = tmp_path / "m.json"
    assert cli.main(["eval", "--run", run, "--data", *data, "--context", "32", "--stride", "16", "--quiet",
                     "--json", str(out), "--generate", "3", "--generate-prompt", "12", "--generate-tokens", "8"]) == 0
    got = json.loads(out.read_text())
    m = api.load(run)
    direct = evaluate.evaluate_texts(m.model, m.params, list(docs.values()), m.tokenizer, context=32, stride=16)
    assert got["docs"]["ppl"] == pytest.approx(direct["ppl"], rel=1e-6) and got["lambada"]["passages"] == 2
    assert got["docs"]["top1"] == direct["top1"] and got["docs"]["top5"] == direct["top5"]
    printed = capsys.readouterr().out
    assert "docs: token ppl" in printed and "top-5" in printed and "BLEU" in printed and "version:2.6.0" in printed
    assert got["docs"]["generated"] == 3 and "bleu" not in got["lambada"]
    for ex in got["docs"]["examples"]:  # each reference is what follows its prompt; each hypothesis is greedy
        assert ex["prompt"] + ex["reference"] in TEXT and len(ex["prompt"].encode()) == 12
        assert ex["generated"] == m.generate(ex["prompt"], 8, temperature=0).text
    assert cli.main(["table", "--runs", run, run, "--names", "x", "y", "--data", *data, "--out", str(tmp_path / "t"),
                     "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| x |" in printed and "| y |" in printed and (tmp_path / "t" / "table.png").is_file()
    assert "docs top-1 acc %" in printed and "BLEU" not in printed  # no --generate: no BLEU column
    assert cli.main(["eval", "--run", run, "--data", "cbt_cn=text:x"]) == 2
    assert "CBT" in capsys.readouterr().err


SHARDED_PROBE = """
import jax, numpy as np
import flax.linen as nn
from gpt2_jax.evaluate import scoring as evaluate
from gpt2_jax.parallel import sharding
from gpt2_jax.data import tokenizers
from gpt2_jax.model.gpt2 import GPT2, GPT2Config, init_params
cfg = GPT2Config(vocab_size=257, n_positions=32, n_layer=1, n_head=2, n_embd=16)
params = nn.meta.unbox(init_params(cfg, jax.random.key(0)))
texts = ["some words of text " * 9, "more"]
one = sharding.make_mesh(sharding.MeshSpec(rules="dp"), devices=jax.devices()[:1])
for mesh in (one, None):  # one device, then all four
    scorer = evaluate.TokenScorer(GPT2(cfg), params, batch_size=3, mesh=mesh)
    out = evaluate.evaluate_texts(GPT2(cfg), params, texts, tokenizers.ByteTokenizer(), stride=8, scorer=scorer)
    print(scorer.mesh.size, scorer.batch_size, repr(out["nll"]))
"""


def test_sharded_evaluation_matches_one_device():
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SHARDED_PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]
    single, sharded = (line.split() for line in proc.stdout.splitlines()[-2:])
    assert single[:2] == ["1", "3"] and sharded[:2] == ["4", "4"]  # the batch is rounded up to the devices
    assert float(sharded[2]) == pytest.approx(float(single[2]), rel=1e-5)
