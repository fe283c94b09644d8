"""OpenAI's original GPT-2 release (hparams.json + model.ckpt.* + encoder.json/vocab.bpe) read
without TensorFlow (tf_bundle.py), through the Hugging Face tensor names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpt2_jax.model.gpt2 import GPT2Config
from gpt2_jax.weights import tf_bundle
from gpt2_jax.weights.huggingface import config_from_hf, params_from_hf_state_dict


def _hf_name_of_openai(name: str) -> str | None:
    """`model/h3/attn/c_attn/w` -> `h.3.attn.c_attn.weight` (None for tensors GPT-2 does not use)."""
    parts = name.removeprefix("model/").split("/")
    if parts[0].startswith("h") and parts[0][1:].isdigit():
        parts[0] = f"h.{parts[0][1:]}"
    suffix = {"w": "weight", "g": "weight", "b": "bias"}
    if parts[0] in ("wte", "wpe"):
        return f"{parts[0]}.weight"
    if parts[-1] not in suffix:
        return None
    return ".".join(parts[:-1] + [suffix[parts[-1]]])


def load_openai_directory(path: str | Path, **overrides: Any) -> tuple[GPT2Config, dict[str, Any]]:
    """(config, params) from OpenAI's GPT-2 release directory (hparams.json + model.ckpt.*)."""
    path = Path(path).expanduser()
    hparams_file = path / "hparams.json"
    if not hparams_file.is_file():
        raise FileNotFoundError(f"no hparams.json in {path}; point at an OpenAI GPT-2 model directory")
    h = json.loads(hparams_file.read_text())
    missing = [k for k in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer") if k not in h]
    if missing:
        raise ValueError(f"{hparams_file} lacks {missing}; is this an OpenAI GPT-2 hparams.json?")
    cfg = config_from_hf({"vocab_size": h["n_vocab"], "n_positions": h["n_ctx"], "n_embd": h["n_embd"],
                          "n_head": h["n_head"], "n_layer": h["n_layer"]}, **overrides)
    state = {}
    for name, array in tf_bundle.read_checkpoint(path / "model.ckpt").items():
        hf_name = _hf_name_of_openai(name)
        if hf_name is None:
            raise ValueError(f"OpenAI checkpoint tensor {name!r} is not part of GPT-2; is this a GPT-2 checkpoint?")
        # Conv1D weights are stored (1, in, out); HF keeps (in, out).
        state[hf_name] = array[0] if hf_name.endswith("weight") and array.ndim == 3 else array
    return cfg, params_from_hf_state_dict(state, cfg)
