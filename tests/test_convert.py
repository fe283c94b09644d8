"""GPT-2 weights out to Hugging Face and in from OpenAI's TensorFlow checkpoint format.

TensorFlow is not installed (a ~600 MB dependency for one test), so the OpenAI-format checkpoint is
written by `_write_tf_checkpoint` below: a minimal, independent writer of the tensor-bundle format
(LevelDB SSTable index with prefix-compressed keys + raw data shard), separate from the reader.
"""

from __future__ import annotations

import json
import struct

import jax
import numpy as np
import pytest
import torch  # the `test` extra installs it: a missing reference must fail, not skip
import transformers

from gpt2_jax import api
from gpt2_jax.cli import app as cli
from gpt2_jax.data import tokenizers
from gpt2_jax.model.gpt2 import GPT2, GPT2Config
from gpt2_jax.weights import huggingface as convert
from gpt2_jax.weights import tf_bundle

CFG = GPT2Config(vocab_size=50257, n_positions=32, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(scope="module")
def params():
    """Random weights with non-trivial LayerNorm/bias values, as numpy."""
    boxed = GPT2(CFG).init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda x: np.asarray(x.value) + 0.05 * rng.standard_normal(x.value.shape, np.float32), boxed,
                        is_leaf=lambda x: hasattr(x, "value"))


def _ids():
    return np.random.default_rng(1).integers(0, CFG.vocab_size, (2, 16)).astype(np.int32)


def _our_logits(cfg, params):
    return np.asarray(GPT2(cfg).apply({"params": params}, _ids()))


def test_hf_export_loads_in_transformers_with_same_logits(tmp_path, params):
    tok = tokenizers.GPT2BPETokenizer.default()
    written = convert.save_hf_directory(tmp_path, CFG, params, tok)
    assert {"model.safetensors", "config.json", "vocab.json", "merges.txt"} <= set(written)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        theirs = hf(torch.from_numpy(_ids()).long()).logits.numpy()
    np.testing.assert_allclose(theirs, _our_logits(CFG, params), rtol=1e-4, atol=1e-4)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf_tok("Hello world!")["input_ids"] == tok.encode("Hello world!") == [15496, 995, 0]
    back = api.load_weights(tmp_path)  # and back in
    assert back.kind == "hf" and back.tokenizer.encode("Hello world!") == [15496, 995, 0]
    np.testing.assert_allclose(_our_logits(back.config, back.params), _our_logits(CFG, params), rtol=1e-5, atol=1e-5)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _block(entries: list[tuple[bytes, bytes]], restart_every: int = 3) -> bytes:
    out, restarts, last = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_every:
            while shared < min(len(key), len(last)) and key[shared] == last[shared]:
                shared += 1
        else:
            restarts.append(len(out))
        out += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        last = key
    return bytes(out) + b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))


def _write_tf_checkpoint(prefix, tensors: dict[str, np.ndarray]) -> None:
    """A TF V2 checkpoint: PREFIX.index (SSTable) + PREFIX.data-00000-of-00001, float32 tensors."""
    data, entries = bytearray(), [(b"", _field(1, 1))]  # BundleHeaderProto: num_shards 1, little-endian
    for name in sorted(tensors):
        raw = np.ascontiguousarray(tensors[name], "<f4").tobytes()
        shape = b"".join(_field(2, _field(1, d)) for d in tensors[name].shape)
        entry = _field(1, 1) + _field(2, shape) + _field(4, len(data)) + _field(5, len(raw))
        entries.append((name.encode(), entry))
        data += raw
    open(f"{prefix}.data-00000-of-00001", "wb").write(bytes(data))
    data_block = _block(entries)
    index_block = _block([(entries[-1][0], _varint(0) + _varint(len(data_block)))])
    meta_block = _block([])
    trailer = b"\0" * 5  # no compression; zero checksum
    body = data_block + trailer + index_block + trailer + meta_block + trailer
    meta_at, index_at = len(data_block) + 5 + len(index_block) + 5, len(data_block) + 5
    handles = _varint(meta_at) + _varint(len(meta_block)) + _varint(index_at) + _varint(len(index_block))
    footer = handles.ljust(40, b"\0") + struct.pack("<Q", tf_bundle.TABLE_MAGIC)
    open(f"{prefix}.index", "wb").write(body + footer)


def _openai_tensors(params) -> dict[str, np.ndarray]:
    """OpenAI's names and layouts: model/h{i}/..., Conv1D weights as (1, in, out), LayerNorm g/b."""
    hf = convert.params_to_hf_state_dict(params, CFG)
    out = {}
    for name, value in hf.items():
        parts = name.removeprefix("transformer.").split(".")
        if parts[0] == "h":
            parts = [f"h{parts[1]}"] + parts[2:]
        leaf = {"weight": "g" if parts[-2].startswith("ln") else "w", "bias": "b"}[parts[-1]]
        is_conv = parts[-2] in ("c_attn", "c_proj", "c_fc") and leaf == "w"
        key = "model/" + ("/".join(parts[:-1]) if parts[0] in ("wte", "wpe") else "/".join(parts[:-1] + [leaf]))
        out[key] = value[None] if is_conv else value
    return out


def test_openai_checkpoint_imports_to_same_logits(tmp_path, params):
    tensors = _openai_tensors(params)
    assert "model/h1/attn/c_attn/w" in tensors and tensors["model/h1/attn/c_attn/w"].shape == (1, 32, 96)
    _write_tf_checkpoint(tmp_path / "model.ckpt", tensors)
    (tmp_path / "hparams.json").write_text(json.dumps({"n_vocab": 50257, "n_ctx": 32, "n_embd": 32, "n_head": 2,
                                                       "n_layer": 2}))
    read = tf_bundle.read_checkpoint(tmp_path / "model.ckpt")
    assert sorted(read) == sorted(tensors) and all(np.array_equal(read[k], tensors[k]) for k in tensors)
    w = api.load_weights(tmp_path)
    assert w.kind == "openai" and w.tokenizer.vocab_size == 50257  # packaged BPE files when none are beside it
    np.testing.assert_allclose(_our_logits(w.config, w.params), _our_logits(CFG, params), rtol=1e-5, atol=1e-5)


def test_convert_cli_openai_to_hf(tmp_path, params, capsys):
    src, dst = tmp_path / "openai", tmp_path / "hf"
    src.mkdir()
    _write_tf_checkpoint(src / "model.ckpt", _openai_tensors(params))
    (src / "hparams.json").write_text(json.dumps({"n_vocab": 50257, "n_ctx": 32, "n_embd": 32, "n_head": 2, "n_layer": 2}))
    assert cli.main(["convert", str(src), "--to", "hf", "--out", str(dst)]) == 0
    hf = transformers.GPT2LMHeadModel.from_pretrained(dst).eval()
    with torch.no_grad():
        theirs = hf(torch.from_numpy(_ids()).long()).logits.numpy()
    np.testing.assert_allclose(theirs, _our_logits(CFG, params), rtol=1e-4, atol=1e-4)
    run = tmp_path / "run"  # and into a run directory that gpt2_jax.load reads
    assert cli.main(["convert", str(dst), "--to", "run", "--out", str(run)]) == 0
    m = api.load(run)
    assert m.step == 0 and m.tokenizer.encode("Hello world!") == [15496, 995, 0]
    np.testing.assert_allclose(np.asarray(m.logits(_ids())), _our_logits(CFG, params), rtol=1e-5, atol=1e-5)
    assert cli.main(["convert", str(dst), "--to", "run", "--out", str(run)]) == 2  # never over a run's checkpoints


def test_bad_inputs_name_the_problem(tmp_path, params):
    tensors = _openai_tensors(params)
    tensors["model/h0/mlp/c_fc/w"] = tensors["model/h0/mlp/c_fc/w"][:, :, :8]
    _write_tf_checkpoint(tmp_path / "model.ckpt", tensors)
    (tmp_path / "hparams.json").write_text(json.dumps({"n_vocab": 50257, "n_ctx": 32, "n_embd": 32, "n_head": 2,
                                                       "n_layer": 2}))
    with pytest.raises(ValueError, match=r"'h.0.mlp.c_fc.weight' has shape \(32, 8\)"):
        api.load_weights(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        api.load_weights(tmp_path / "nowhere")
    (tmp_path / "bad.index").write_bytes(b"x" * 60)
    with pytest.raises(tf_bundle.BundleError, match="no SSTable footer"):
        tf_bundle.read_checkpoint(tmp_path / "bad")


class _Payload:
    """Pickles as a call to open(marker, 'w'): loading it with plain pickle would create the marker."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pytorch_bin_that_is_not_plain_tensors_is_one_line_and_never_runs(tmp_path, params, capsys):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32,
                                                "n_positions": 32, "vocab_size": 50257}))
    marker = tmp_path / "payload_ran"
    torch.save({"transformer.wte.weight": torch.zeros(2, 2), "extra": _Payload(marker)}, hf / "pytorch_model.bin")
    assert cli.main(["eval", "--run", str(hf), "--data", f"text:{hf / 'config.json'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"gpt2-jax: error: {hf / 'pytorch_model.bin'} is not plain tensors (it holds a pickled "
                   f"{open.__module__}.open), so it was not loaded and none of it ran; convert it to model.safetensors "
                   "where it was made, or use a model.safetensors copy")
    assert not marker.exists()
    (hf / "pytorch_model.bin").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ValueError, match="is not a readable PyTorch file .*; use model.safetensors instead"):
        api.load_weights(hf)
