"""Parity with Hugging Face's PyTorch GPT-2 built from a random config (no downloaded weights)."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import optax
import pytest
import torch  # the `test` extra installs it: a missing reference must fail, not skip
import transformers

from gpt2_jax.model.gpt2 import GPT2
from gpt2_jax.weights import huggingface as convert

VOCAB, B, T = 101, 3, 32


@pytest.fixture(scope="module")
def hf_model():
    """A small random HF GPT-2 in eval mode, fp32, eager attention, no dropout."""
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager",
    )
    model = transformers.GPT2LMHeadModel(hf_cfg).eval()
    # Non-trivial LayerNorm and bias values, so a mapping mix-up cannot hide behind ones/zeros.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def converted(hf_model):
    """(cfg, params) converted from the HF model's state dict."""
    cfg = convert.config_from_hf(hf_model.config.to_dict())
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    return cfg, convert.params_from_hf_state_dict(state, cfg)


def _ids(seed=0, shape=(B, T)):
    return np.random.default_rng(seed).integers(0, VOCAB, shape).astype(np.int32)


def _hf_logits(model, ids, **kw):
    kw = {k: torch.from_numpy(np.asarray(v)).long() for k, v in kw.items()}
    with torch.no_grad():
        return model(torch.from_numpy(ids).long(), **kw).logits.numpy()


def _our_logits(cfg, params, ids, **kw):
    return np.asarray(jax.jit(GPT2(cfg).apply)({"params": params}, ids, **kw))


def test_config_from_hf(hf_model):
    cfg = convert.config_from_hf(hf_model.config.to_dict(), dtype="bfloat16")
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.n_positions, cfg.vocab_size) == (2, 4, 64, 64, VOCAB)
    assert cfg.layer_norm_eps == 1e-5 and cfg.dtype == "bfloat16"
    bad = {**hf_model.config.to_dict(), "activation_function": "relu"}
    with pytest.raises(ValueError, match="activation_function='relu'"):
        convert.config_from_hf(bad)


def test_logits_match_hf(hf_model, converted):
    ids = _ids()
    ours = _our_logits(*converted, ids)
    assert ours.shape == (B, T, VOCAB)
    np.testing.assert_allclose(ours, _hf_logits(hf_model, ids), atol=1e-4, rtol=0)


def test_loss_matches_hf_labels(hf_model, converted):
    ids = _ids(1)
    with torch.no_grad():
        hf_loss = hf_model(torch.from_numpy(ids).long(), labels=torch.from_numpy(ids).long()).loss.item()
    logits = _our_logits(*converted, ids)
    ours = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()
    assert abs(float(ours) - hf_loss) <= 1e-5


def test_right_padding(hf_model, converted):
    ids, n = _ids(2), 20
    mask = np.ones((B, T), np.int32)
    mask[1, n:] = 0
    ours = _our_logits(*converted, ids, attention_mask=mask)
    hf = _hf_logits(hf_model, ids, attention_mask=mask)
    np.testing.assert_allclose(ours[1, :n], hf[1, :n], atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours[[0, 2]], hf[[0, 2]], atol=1e-4, rtol=0)
    alone = _our_logits(*converted, ids[1:2, :n])
    np.testing.assert_allclose(ours[1, :n], alone[0], atol=1e-5, rtol=0)


def test_left_padding_with_positions(hf_model, converted):
    ids, pad = _ids(3), 12
    mask = np.ones((B, T), np.int32)
    mask[1, :pad] = 0
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    ours = _our_logits(*converted, ids, positions=positions, attention_mask=mask)
    hf = _hf_logits(hf_model, ids, attention_mask=mask, position_ids=positions)
    np.testing.assert_allclose(ours[1, pad:], hf[1, pad:], atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours[[0, 2]], hf[[0, 2]], atol=1e-4, rtol=0)
    alone = _our_logits(*converted, ids[1:2, pad:])
    np.testing.assert_allclose(ours[1, pad:], alone[0], atol=1e-5, rtol=0)


def test_padded_vocab(hf_model, converted):
    cfg = dataclasses.replace(converted[0], vocab_multiple=64)
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    params = convert.params_from_hf_state_dict(state, cfg)
    assert params["wte"]["embedding"].shape == (128, 64)
    assert not params["wte"]["embedding"][VOCAB:].any()
    ids = _ids(4)
    ours = _our_logits(cfg, params, ids)
    assert ours.shape == (B, T, 128)
    np.testing.assert_allclose(ours[..., :VOCAB], _hf_logits(hf_model, ids), atol=1e-4, rtol=0)
    pad = ours[..., VOCAB:]
    assert np.all(np.isneginf(pad) | (pad == np.finfo(np.float32).min))
    with torch.no_grad():
        hf_loss = hf_model(torch.from_numpy(ids).long(), labels=torch.from_numpy(ids).long()).loss.item()
    loss = optax.softmax_cross_entropy_with_integer_labels(ours[:, :-1], ids[:, 1:]).mean()
    assert abs(float(loss) - hf_loss) <= 1e-5


def test_load_hf_directory_safetensors(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    cfg, params = convert.load_hf_directory(tmp_path)
    ids = _ids(5)
    np.testing.assert_allclose(_our_logits(cfg, params, ids), _hf_logits(hf_model, ids), atol=1e-4, rtol=0)


def test_load_hf_directory_torch_bin(hf_model, converted, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(hf_model.config.to_dict()))
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    cfg, params = convert.load_hf_directory(tmp_path, param_dtype="bfloat16")
    assert cfg.param_dtype == "bfloat16" and params["h_0"]["attn"]["qkv_kernel"].dtype == np.dtype("bfloat16")
    expected = converted[1]["h_1"]["mlp"]["proj_kernel"]
    np.testing.assert_allclose(params["h_1"]["mlp"]["proj_kernel"].astype(np.float32), expected, rtol=1e-2)


def test_load_hf_directory_errors(hf_model, tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        convert.load_hf_directory(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf_model.config.to_dict()))
    with pytest.raises(ValueError, match="no model.safetensors or pytorch_model.bin"):
        convert.load_hf_directory(tmp_path)


def _one_line_error(state, cfg, *needles):
    with pytest.raises(ValueError) as info:
        convert.params_from_hf_state_dict(state, cfg)
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


def test_mismatched_state_dict_errors(hf_model, converted):
    cfg = converted[0]
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    wrong = {**state, "transformer.h.1.attn.c_attn.weight": state["transformer.h.1.attn.c_attn.weight"].T}
    _one_line_error(wrong, cfg, "h.1.attn.c_attn.weight", "(192, 64)", "(64, 192)")
    missing = {k: v for k, v in state.items() if k != "transformer.h.0.mlp.c_fc.bias"}
    _one_line_error(missing, cfg, "h.0.mlp.c_fc.bias", "(256,)")
    _one_line_error({**state, "transformer.h.2.ln_1.weight": state["transformer.ln_f.weight"]}, cfg, "h.2.ln_1.weight")
    untied = {**state, "lm_head.weight": state["lm_head.weight"] + 1}
    _one_line_error(untied, cfg, "lm_head.weight")


def test_prefix_and_buffers_tolerated(hf_model, converted):
    state = {k.removeprefix("transformer."): v.numpy() for k, v in hf_model.state_dict().items()}
    state.pop("lm_head.weight")
    state["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), bool))
    state["h.0.attn.masked_bias"] = np.float32(-1e4)
    params = convert.params_from_hf_state_dict(state, converted[0])
    jax.tree.map(np.testing.assert_array_equal, params, converted[1])
