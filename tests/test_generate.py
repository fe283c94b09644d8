"""KV-cache generation: exact against the uncached model, HF-compatible filters and beam search,
one compile per bucket, streaming text and one-line errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # the `test` extra installs it: a missing reference must fail, not skip
import transformers
from transformers import generation as hf_gen

from gpt2_jax import api
from gpt2_jax.data import tokenizers
from gpt2_jax.generate import decode as generate
from gpt2_jax.generate import processors as sampling
from gpt2_jax.generate import window
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.train import steps as train
from gpt2_jax.weights import huggingface as convert

VOCAB = 97


@pytest.fixture(scope="module")
def tiny():
    cfg = model_lib.GPT2Config(vocab_size=VOCAB, n_positions=128, n_layer=2, n_head=4, n_embd=64, vocab_multiple=8)
    return model_lib.GPT2(cfg), train.strip_boxes(model_lib.init_params(cfg, jax.random.key(1)))


PROMPTS = [[5, 6, 7], list(range(10, 30)), [1], [40, 41, 42, 43, 44, 45, 46, 47, 48]]


def _uncached_greedy(model, params, prompt, steps):
    """Greedy decoding by a full forward pass over the whole sequence for every new token."""
    forward = jax.jit(lambda ids: model.apply({"params": params}, ids)[0])  # right padding: causal, unseen
    seq, tokens, logps = list(prompt), [], []
    for _ in range(steps):
        logits = forward(jnp.asarray([seq + [0] * (model.cfg.n_positions - len(seq))]))[len(seq) - 1]
        nxt = int(jnp.argmax(logits))
        tokens.append(nxt)
        logps.append(float(jax.nn.log_softmax(logits)[nxt]))
        seq.append(nxt)
    return tokens, logps


def test_cached_greedy_equals_repeated_full_forward(tiny):
    model, params = tiny
    out = generate.generate(model, params, PROMPTS, 64, temperature=0, return_logprobs=True)
    for prompt, tokens, logps in zip(PROMPTS, out.tokens, out.logprobs):
        ref_tokens, ref_logps = _uncached_greedy(model, params, prompt, 64)
        assert tokens == ref_tokens
        np.testing.assert_allclose(logps, ref_logps, atol=1e-5)
    assert out.finished == [False] * len(PROMPTS)


def test_cached_logits_match_uncached(tiny):
    model, params = tiny
    decode = jax.jit(lambda *a, last_only: model.apply({"params": params}, *a, last_only=last_only,
                                                       method=model_lib.GPT2.decode), static_argnames="last_only")
    tokens, pad = generate.left_pad(PROMPTS, 32)
    pad = jnp.asarray(pad)
    key_valid = jnp.arange(40)[None, :] >= pad[:, None]
    logits, cache = decode(tokens, generate._positions(pad, 0, 32), key_valid,
                           generate.init_cache(model.cfg, len(PROMPTS), 40), 0, last_only=False)
    nxt = jnp.asarray([[3], [4], [5], [6]], jnp.int32)
    step, _ = decode(nxt, generate._positions(pad, 32, 1), key_valid, cache, 32, last_only=True)
    forward = jax.jit(lambda ids: model.apply({"params": params}, ids)[0])
    for i, prompt in enumerate(PROMPTS):
        full = forward(jnp.asarray([prompt + [int(nxt[i, 0])]]))
        np.testing.assert_allclose(logits[i, int(pad[i]):, :VOCAB], full[:-1, :VOCAB], atol=1e-5)
        np.testing.assert_allclose(step[i, :VOCAB], full[-1, :VOCAB], atol=1e-5)


def _hf_process(logits, input_ids, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0):
    procs = hf_gen.LogitsProcessorList()
    if repetition_penalty != 1.0:
        procs.append(hf_gen.RepetitionPenaltyLogitsProcessor(repetition_penalty))
    procs.append(hf_gen.TemperatureLogitsWarper(temperature))
    if top_k:
        procs.append(hf_gen.TopKLogitsWarper(top_k))
    if top_p < 1.0:
        procs.append(hf_gen.TopPLogitsWarper(top_p))
    if min_p:
        procs.append(hf_gen.MinPLogitsWarper(min_p))
    return procs(torch.as_tensor(input_ids), torch.as_tensor(logits)).numpy()


@pytest.mark.parametrize("settings", [dict(top_k=5), dict(top_p=0.8), dict(top_p=0.3, temperature=0.7),
                                      dict(min_p=0.1), dict(repetition_penalty=1.3),
                                      dict(temperature=1.3, top_k=20, top_p=0.9, min_p=0.02, repetition_penalty=1.2)])
def test_filters_match_transformers_processors(settings):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((4, VOCAB)) * 3).astype(np.float32)
    input_ids = rng.integers(0, VOCAB, (4, 12))
    seen = np.zeros((4, VOCAB), bool)
    np.put_along_axis(seen, input_ids, True, axis=1)
    ours = np.asarray(sampling.process_logits(jnp.asarray(logits), jnp.asarray(seen),
                                              sampling.Settings.checked(**settings).arrays(), VOCAB))
    ref = _hf_process(logits, input_ids, **settings)
    assert (np.isinf(ours) == np.isinf(ref)).all()
    kept = np.isfinite(ref)
    np.testing.assert_allclose(ours[kept], ref[kept], rtol=1e-6)


@pytest.fixture(scope="module")
def hf_tiny():
    torch.manual_seed(0)
    # a large init scale makes the random model's distributions peaky, so rounding cannot reorder beams
    hf_cfg = transformers.GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                                     eos_token_id=1, pad_token_id=1, initializer_range=0.5, resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    cfg = convert.config_from_hf(hf_cfg.to_dict())
    return hf, model_lib.GPT2(cfg), convert.params_from_hf_state_dict(hf.state_dict(), cfg)


@pytest.mark.parametrize("length_penalty,early_stopping", [(1.0, False), (0.5, True), (2.0, "never")])
def test_beam_search_matches_transformers(hf_tiny, length_penalty, early_stopping):
    hf, model, params = hf_tiny
    prompts = [[5, 9, 13, 2], [7, 3], [20, 21, 22, 23, 24, 25]]
    ours = generate.beam_search(model, params, prompts, 20, 4, length_penalty=length_penalty,
                                early_stopping=early_stopping, eos_id=1, num_return=2)
    for prompt, our_rows, our_scores in zip(prompts, ours.tokens, ours.scores):
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              num_beams=4, max_new_tokens=20, do_sample=False, length_penalty=length_penalty,
                              early_stopping=early_stopping, num_return_sequences=2, output_scores=True,
                              return_dict_in_generate=True)
        hf_rows = [generate._cut(r[len(prompt):].tolist(), 1) for r in out.sequences]
        assert our_rows == hf_rows
        np.testing.assert_allclose(our_scores, out.sequences_scores.numpy(), rtol=1e-4)


def test_beam_search_ends_at_eos_like_transformers(hf_tiny):
    hf, model, params = hf_tiny
    ours = generate.beam_search(model, params, [[7, 3]], 20, 4, length_penalty=0.5, early_stopping=True, eos_id=1,
                                num_return=2)
    assert ours.tokens == [[[18, 40, 2], [18]]]  # both beams ended at EOS, as transformers' (test above)


def test_beam_width_one_is_greedy(tiny):
    model, params = tiny
    beams = generate.beam_search(model, params, PROMPTS, 24, num_beams=1)
    greedy = generate.generate(model, params, PROMPTS, 24, temperature=0)
    assert [b[0] for b in beams.tokens] == greedy.tokens


def test_second_call_in_the_same_bucket_does_not_compile(tiny):
    model, params = tiny
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    generate.generate(model, params, [[1, 2, 3, 4, 5]] * 2, 20, rng=0, temperature=0.9, top_k=5)
    jax.monitoring.register_event_duration_secs_listener(listener)
    cached = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)  # tests/conftest.py's cache would hide a compile
    try:
        generate.generate(model, params, [[1, 2, 3, 4, 5, 6, 7, 8, 9]] * 2, 30, rng=1, temperature=0.5, top_k=9)
        assert compiles == []  # prompt 9 and 30 new tokens are in the buckets of prompt 5 and 20 new
        generate.generate(model, params, [[1] * 20] * 2, 20, rng=0, temperature=0.9, top_k=5)
        assert len(compiles) >= 1  # a prompt of 20 tokens is the next bucket
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
        jax.config.update("jax_enable_compilation_cache", cached)


def test_sampling_is_seeded_and_stop_tokens_end_rows(tiny):
    model, params = tiny
    a = generate.generate(model, params, [[1, 2]], 30, rng=7, num_samples=3)
    b = generate.generate(model, params, [[1, 2]], 30, rng=7, num_samples=3)
    c = generate.generate(model, params, [[1, 2]], 30, rng=8, num_samples=3)
    assert a.tokens == b.tokens and a.tokens != c.tokens and len({tuple(t) for t in a.tokens}) == 3
    first = a.tokens[0]
    stopped = generate.generate(model, params, [[1, 2]], 30, rng=7, num_samples=3, stop_ids=[first[4]])
    assert stopped.tokens[0] == first[: first.index(first[4])] and stopped.finished[0]


def test_bad_inputs_are_one_line_errors(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match=r"prompt 0 is 120 tokens; with max_new_tokens=10 the 128-token context"):
        generate.generate(model, params, [[1] * 120], 10, truncate="error")
    assert len(generate.generate(model, params, [[1] * 120], 10, temperature=0, truncate="left").tokens[0]) == 10
    with pytest.raises(ValueError, match="max_new_tokens=128 leaves no room for a prompt"):
        generate.generate(model, params, [[1]], 128, truncate="error")
    with pytest.raises(ValueError, match="prompt 0 is 128 tokens; the model's 128-token context holds at most 127"):
        generate.generate(model, params, [[1] * 128], 5)  # sliding needs room for one new token
    with pytest.raises(ValueError, match=r"128-token context \(beam search decodes within one context\); ask for"):
        generate.beam_search(model, params, [[1]], 200, 2)
    with pytest.raises(ValueError, match="truncate='middle' is not one of slide, error, left"):
        generate.generate(model, params, [[1]], 5, truncate="middle")
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        generate.generate(model, params, [[1]], 5, top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        generate.generate(model, params, [[1]], 5, temperature=-1)
    with pytest.raises(ValueError, match="empty prompt and no EOS"):
        generate.generate(model, params, [[]], 5)
    # an empty prompt starts from EOS: the same as prompting with the EOS id
    assert generate.generate(model, params, [[]], 8, temperature=0, eos_id=96).tokens == \
        generate.generate(model, params, [[96]], 8, temperature=0, eos_id=96).tokens


def test_streamed_text_never_splits_a_character_and_stops_at_stop_strings():
    tok = tokenizers.ByteTokenizer()
    text = "Où est la bibliothèque? Ça va — très bien. FIN encore"
    pieces = list(api.stream_text(tok, tok.encode(text)))
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces) and len(pieces) > 10
    assert "".join(api.stream_text(tok, tok.encode(text), stop=["FIN", "zzz"])) == text[: text.index("FIN")]
    c = api._completion(tok, tok.encode(text), None, False, ["bien"])
    assert c.text == text[: text.index("bien")] and tok.decode(c.tokens) == c.text and c.finished


def test_stream_equals_batch_decoding(tiny):
    model, params = tiny
    streamed = list(generate.stream(model, params, [5, 6, 7], 40, temperature=0))
    assert streamed == generate.generate(model, params, [[5, 6, 7]], 40, temperature=0).tokens[0]


def _uncached_sliding_greedy(model, params, prompt, steps):
    """Greedy decoding by a full forward pass per token over a window that, once the context is full,
    restarts on the text's last context - slide_step tokens (nanoGPT's crop, moved in steps)."""
    ctx = model.cfg.n_positions
    keep = ctx - window.slide_step(ctx)
    forward = jax.jit(lambda ids: model.apply({"params": params}, ids)[0])
    seq, start = list(prompt), 0
    for _ in range(steps):
        if len(seq) - start == ctx:
            start = len(seq) - keep
        ids = seq[start:]
        seq.append(int(jnp.argmax(forward(jnp.asarray([ids + [0] * (ctx - len(ids))]))[len(ids) - 1])))
    return seq[len(prompt):]


def test_sliding_past_the_context_keeps_the_first_window_and_matches_an_uncached_slide(tiny):
    model, params = tiny
    ctx, prompt = model.cfg.n_positions, [5, 6, 7]
    first = ctx - len(prompt)
    long = generate.generate(model, params, [prompt], 200, temperature=0).tokens[0]  # 3 windows after the first
    assert len(long) == 200 > ctx
    assert long[:first] == generate.generate(model, params, [prompt], first, temperature=0, truncate="error").tokens[0]
    assert long == _uncached_sliding_greedy(model, params, prompt, 200)


def test_sampling_past_the_context_keeps_each_rows_first_window_and_streams_the_same(tiny):
    model, params = tiny
    ctx, prompt = model.cfg.n_positions, [5, 6, 7]
    kw = dict(rng=3, temperature=0.9, top_k=20)
    sampled = generate.generate(model, params, [prompt, list(range(10, 30))], 170, **kw)
    window_one = generate.generate(model, params, [prompt, list(range(10, 30))], ctx - 20, truncate="error", **kw)
    assert [len(t) for t in sampled.tokens] == [170, 170] and sampled.finished == [False, False]
    assert [t[:ctx - 20] for t in sampled.tokens] == window_one.tokens
    streamed = list(generate.stream(model, params, prompt, 170, **kw))
    assert streamed == generate.generate(model, params, [prompt], 170, **kw).tokens[0]


def test_sliding_stops_at_a_stop_token_in_a_later_window(tiny):
    model, params = tiny
    kw = dict(rng=3, temperature=0.9, top_k=20, num_samples=2)
    long = generate.generate(model, params, [[5, 6, 7]], 300, **kw).tokens
    first = model.cfg.n_positions - 3
    stop = max(set(long[0]), key=long[0].index)  # the token row 0 samples last for the first time
    assert long[0].index(stop) > first
    out = generate.generate(model, params, [[5, 6, 7]], 300, stop_ids=[stop], **kw)
    assert out.tokens[0] == long[0][:long[0].index(stop)] and out.finished[0]
    assert out.tokens[1] == (long[1][:long[1].index(stop)] if stop in long[1] else long[1])
