"""Hugging Face GPT-2 weights in and out of this project's parameter tree.

In: `transformers` GPT-2 directories (config.json + model.safetensors, or pytorch_model.bin read
with `torch.load(weights_only=True)`). Out: a Hugging Face directory (model.safetensors +
config.json + vocab.json + merges.txt) that `transformers.GPT2LMHeadModel.from_pretrained` loads.
A classifier goes both ways as `GPT2ForSequenceClassification`: `score.weight` (num_labels,
n_embd) is params['score']['kernel'] transposed; config.json carries num_labels, id2label and
pad_token_id (the token whose rightmost absence marks each row's last real token).
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from gpt2_jax.data import tokenizers
from gpt2_jax.model import heads
from gpt2_jax.model.gpt2 import GPT2Config

HF_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")
# A tokenizer without Hugging Face files (byte-level, SentencePiece) is written as its spec here.
TOKENIZER_SPEC = "gpt2_jax_tokenizer.json"
# Non-parameter buffers some HF checkpoints store (causal mask tables).
_HF_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")


# --------------------------------------------------------------------------- config

def config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> GPT2Config:
    """A `GPT2Config` from a Hugging Face GPT-2 `config.json` dict; `overrides` set other fields."""
    missing = [k for k in ("n_layer", "n_head", "n_embd", "vocab_size") if k not in hf_config]
    if missing:
        raise ValueError(f"HF config lacks {missing}; is this a GPT-2 config.json?")
    act = hf_config.get("activation_function", "gelu_new")
    if act not in HF_ACTIVATIONS:
        raise ValueError(f"HF config activation_function={act!r} is unsupported; GPT-2 needs one of {HF_ACTIVATIONS}")
    n_inner = hf_config.get("n_inner")
    if n_inner not in (None, 4 * hf_config["n_embd"]):
        raise ValueError(f"HF config n_inner={n_inner} is unsupported; the MLP width must be 4*n_embd (or null)")
    if not hf_config.get("scale_attn_weights", True) or hf_config.get("scale_attn_by_inverse_layer_idx", False):
        raise ValueError("HF config changes attention scaling (scale_attn_weights / scale_attn_by_inverse_layer_idx); "
                         "only standard 1/sqrt(head_dim) scaling is supported")
    fields = dict(
        vocab_size=hf_config["vocab_size"],
        n_positions=hf_config.get("n_positions", hf_config.get("n_ctx", 1024)),
        n_layer=hf_config["n_layer"],
        n_head=hf_config["n_head"],
        n_embd=hf_config["n_embd"],
        layer_norm_eps=hf_config.get("layer_norm_epsilon", 1e-5),
        init_std=hf_config.get("initializer_range", 0.02),
        embd_dropout=hf_config.get("embd_pdrop", 0.0),
        attn_dropout=hf_config.get("attn_pdrop", 0.0),
        resid_dropout=hf_config.get("resid_pdrop", 0.0),
    )
    return GPT2Config(**{**fields, **overrides})


# --------------------------------------------------------------------------- state dict

def _to_numpy(x: Any) -> np.ndarray:
    """A numpy array from a numpy/jax array or a torch tensor (bf16 tensors go through fp32)."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        return (x.float() if str(x.dtype) == "torch.bfloat16" else x).numpy()
    return np.asarray(x)


def _expected_hf_shapes(cfg: GPT2Config) -> dict[str, tuple[int, ...]]:
    """HF GPT-2 tensor names (without the `transformer.` prefix) and their shapes for `cfg`."""
    d, v, p = cfg.n_embd, cfg.vocab_size, cfg.n_positions
    shapes = {"wte.weight": (v, d), "wpe.weight": (p, d), "ln_f.weight": (d,), "ln_f.bias": (d,)}
    for i in range(cfg.n_layer):
        shapes.update({
            f"h.{i}.ln_1.weight": (d,), f"h.{i}.ln_1.bias": (d,),
            f"h.{i}.attn.c_attn.weight": (d, 3 * d), f"h.{i}.attn.c_attn.bias": (3 * d,),
            f"h.{i}.attn.c_proj.weight": (d, d), f"h.{i}.attn.c_proj.bias": (d,),
            f"h.{i}.ln_2.weight": (d,), f"h.{i}.ln_2.bias": (d,),
            f"h.{i}.mlp.c_fc.weight": (d, 4 * d), f"h.{i}.mlp.c_fc.bias": (4 * d,),
            f"h.{i}.mlp.c_proj.weight": (4 * d, d), f"h.{i}.mlp.c_proj.bias": (d,),
        })
    return shapes


def _normalize_hf_names(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """Strip the `transformer.` prefix, drop mask buffers; return (tensors, lm_head or None)."""
    out, lm_head = {}, None
    for name, value in state_dict.items():
        if name == "lm_head.weight":
            lm_head = value
            continue
        short = name.removeprefix("transformer.")
        if short.endswith(_HF_BUFFER_SUFFIXES):
            continue
        if short in out:
            raise ValueError(f"HF tensor {short!r} appears twice (with and without 'transformer.'); keep one")
        out[short] = value
    return out, lm_head


def params_from_hf_state_dict(state_dict: Mapping[str, Any], cfg: GPT2Config) -> dict[str, Any]:
    """This project's (unboxed) parameter tree, in `cfg.param_dtype`, from a HF GPT-2 state dict.

    The token embedding is zero-padded to `cfg.padded_vocab_size` rows; a tied `lm_head.weight`
    is ignored (an untied one is an error: the model's head is tied to `wte`).
    """
    tensors, lm_head = _normalize_hf_names(state_dict)
    expected = _expected_hf_shapes(cfg)
    for name, shape in expected.items():
        if name not in tensors:
            raise ValueError(f"HF state dict is missing tensor {name!r} (expected shape {shape}); "
                             f"check that n_layer={cfg.n_layer} matches the checkpoint")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ValueError(f"HF state dict has unexpected tensors {unexpected[:5]}; "
                         f"is it a GPT-2 checkpoint with n_layer={cfg.n_layer}?")
    arrays = {}
    for name, shape in expected.items():
        a = _to_numpy(tensors[name])
        if a.shape != shape:
            raise ValueError(f"HF tensor {name!r} has shape {a.shape}, expected {shape} for this config; "
                             "check config.json matches the weights")
        arrays[name] = a
    if lm_head is not None and not np.array_equal(_to_numpy(lm_head), arrays["wte.weight"]):
        raise ValueError("HF tensor 'lm_head.weight' differs from 'transformer.wte.weight'; "
                         "only checkpoints with a tied LM head are supported")

    dtype = jnp.dtype(cfg.param_dtype)  # a numpy dtype; bfloat16 via ml_dtypes
    cast = lambda a: np.ascontiguousarray(a, dtype=dtype)
    d, h, hd = cfg.n_embd, cfg.n_head, cfg.head_dim
    wte = np.zeros((cfg.padded_vocab_size, d), dtype)
    wte[: cfg.vocab_size] = arrays["wte.weight"]
    ln = lambda prefix: {"scale": cast(arrays[f"{prefix}.weight"]), "bias": cast(arrays[f"{prefix}.bias"])}
    params: dict[str, Any] = {"wte": {"embedding": wte}, "wpe": {"embedding": cast(arrays["wpe.weight"])}}
    for i in range(cfg.n_layer):
        a = lambda n: arrays[f"h.{i}.{n}"]
        params[f"h_{i}"] = {
            "ln_1": ln(f"h.{i}.ln_1"),
            # Conv1D output columns are [q | k | v], each head-major (H, hd).
            "attn": {
                "qkv_kernel": cast(a("attn.c_attn.weight").reshape(d, 3, h, hd)),
                "qkv_bias": cast(a("attn.c_attn.bias").reshape(3, h, hd)),
                "out_kernel": cast(a("attn.c_proj.weight").reshape(h, hd, d)),
                "out_bias": cast(a("attn.c_proj.bias")),
            },
            "ln_2": ln(f"h.{i}.ln_2"),
            "mlp": {
                "fc_kernel": cast(a("mlp.c_fc.weight")), "fc_bias": cast(a("mlp.c_fc.bias")),
                "proj_kernel": cast(a("mlp.c_proj.weight")), "proj_bias": cast(a("mlp.c_proj.bias")),
            },
        }
    params["ln_f"] = ln("ln_f")
    return params


# --------------------------------------------------------------------------- files

def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file as numpy arrays (bf16 via ml_dtypes)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    """A pytorch_model.bin state dict, loaded without executing pickled code."""
    try:
        import torch
    except ImportError:
        raise ValueError(f"{path} needs PyTorch to read; pip install torch, or convert it to "
                         "model.safetensors") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused a pickled object: nothing of it ran
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"a pickled {found.group(1)}" if found else "pickled objects"
        raise ValueError(f"{path} is not plain tensors (it holds {what}), so it was not loaded and none of "
                         "it ran; convert it to model.safetensors where it was made, or use a model.safetensors "
                         "copy") from None
    except RuntimeError as e:  # not a torch file at all (truncated, another format)
        raise ValueError(f"{path} is not a readable PyTorch file ({' '.join(str(e).split())[:160]}); "
                         "use model.safetensors instead") from None
    if not isinstance(state, dict) or not all(hasattr(v, "detach") for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors; use model.safetensors instead")
    return {k: _to_numpy(v) for k, v in state.items()}


def read_hf_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The raw tensors of a HF model directory (safetensors, sharded safetensors, or pytorch_model.bin)."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return _read_safetensors(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in _read_safetensors(path / shard).items()}
    if (path / "pytorch_model.bin").is_file():
        return _read_torch_bin(path / "pytorch_model.bin")
    raise ValueError(f"no model.safetensors or pytorch_model.bin in {path}; point at a HF GPT-2 model directory")


def load_hf_directory(path: str | Path, **overrides: Any) -> tuple[GPT2Config, dict[str, Any]]:
    """(config, params) from a HF GPT-2 directory; `overrides` set GPT2Config fields (e.g. dtype).
    A GPT2ForSequenceClassification's `score.weight` becomes params['score'] (see task_of)."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"no config.json in {path}; point at a HF GPT-2 model directory (save_pretrained output)")
    cfg = config_from_hf(json.loads(config_file.read_text()), **overrides)
    state = read_hf_state_dict(path)
    score = state.pop("score.weight", None)
    params = params_from_hf_state_dict(state, cfg)
    if score is not None:
        params[heads.SCORE_KEY] = {"kernel": np.ascontiguousarray(_to_numpy(score).T, dtype=jnp.dtype(cfg.param_dtype))}
    return cfg, params


def task_of(path: str | Path, params: Mapping[str, Any]) -> dict[str, Any]:
    """{'kind': 'lm'} for a language model, or a classifier's {'kind': 'classify', 'num_labels',
    'id2label', 'pad_token_id'} from config.json, for the params load_hf_directory read from path."""
    if heads.SCORE_KEY not in params:
        return {"kind": "lm"}
    hf = json.loads((Path(path) / "config.json").read_text())
    n = params[heads.SCORE_KEY]["kernel"].shape[1]
    given = hf.get("id2label") or {}
    id2label = [str(given.get(str(i), given.get(i, f"LABEL_{i}"))) for i in range(n)]
    pad = hf.get("pad_token_id")
    if pad is None:
        raise ValueError(f"{path}/config.json has no pad_token_id; a sequence classifier needs it to find each "
                         "row's last token (set it, e.g. to eos_token_id)")
    return {"kind": "classify", "num_labels": n, "id2label": id2label, "pad_token_id": int(pad), "lora": None}



# --------------------------------------------------------------------------- export

def params_to_hf_state_dict(params: Mapping[str, Any], cfg: GPT2Config) -> dict[str, np.ndarray]:
    """HF GPT-2 tensors (`transformer.*`, float32, Conv1D (in, out) layout) from this project's params;
    the inverse of params_from_hf_state_dict (padded vocabulary rows are dropped)."""
    d = cfg.n_embd
    f32 = lambda x: np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    out = {"wte.weight": f32(params["wte"]["embedding"])[: cfg.vocab_size], "wpe.weight": f32(params["wpe"]["embedding"]),
           "ln_f.weight": f32(params["ln_f"]["scale"]), "ln_f.bias": f32(params["ln_f"]["bias"])}
    for i in range(cfg.n_layer):
        p = params[f"h_{i}"]
        attn, mlp = p["attn"], p["mlp"]
        out.update({
            f"h.{i}.ln_1.weight": f32(p["ln_1"]["scale"]), f"h.{i}.ln_1.bias": f32(p["ln_1"]["bias"]),
            f"h.{i}.attn.c_attn.weight": f32(attn["qkv_kernel"]).reshape(d, 3 * d),
            f"h.{i}.attn.c_attn.bias": f32(attn["qkv_bias"]).reshape(3 * d),
            f"h.{i}.attn.c_proj.weight": f32(attn["out_kernel"]).reshape(d, d),
            f"h.{i}.attn.c_proj.bias": f32(attn["out_bias"]),
            f"h.{i}.ln_2.weight": f32(p["ln_2"]["scale"]), f"h.{i}.ln_2.bias": f32(p["ln_2"]["bias"]),
            f"h.{i}.mlp.c_fc.weight": f32(mlp["fc_kernel"]), f"h.{i}.mlp.c_fc.bias": f32(mlp["fc_bias"]),
            f"h.{i}.mlp.c_proj.weight": f32(mlp["proj_kernel"]), f"h.{i}.mlp.c_proj.bias": f32(mlp["proj_bias"]),
        })
    return {f"transformer.{k}": v for k, v in out.items()}


def hf_config(cfg: GPT2Config, eos_id: int | None = None) -> dict[str, Any]:
    """A transformers GPT-2 `config.json` dict for cfg (tied head, GELU-tanh, fp32 weights)."""
    eos = cfg.vocab_size - 1 if eos_id is None else eos_id
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
            "n_positions": cfg.n_positions, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
            "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": cfg.layer_norm_eps,
            "initializer_range": cfg.init_std, "embd_pdrop": cfg.embd_dropout, "attn_pdrop": cfg.attn_dropout,
            "resid_pdrop": cfg.resid_dropout, "bos_token_id": eos, "eos_token_id": eos,
            "tie_word_embeddings": True, "torch_dtype": "float32"}


def _bpe_files(tokenizer) -> tuple[Path, Path] | None:
    """(vocabulary json, merges) files of a GPT-2 BPE tokenizer, or None if it has no such pair."""
    spec = tokenizer.spec()
    if spec.get("kind") != "gpt2_bpe" or spec.get("format") not in ("encoder_json", "hf"):
        return None
    vocab, merges = (Path(f["path"]) for f in spec["files"])
    return vocab, merges


def hf_classifier_config(cfg: GPT2Config, task: Mapping[str, Any], eos_id: int | None = None) -> dict[str, Any]:
    """config.json of a GPT2ForSequenceClassification for cfg and a classifier's task meta."""
    names = list(task["id2label"])
    return {**hf_config(cfg, eos_id), "architectures": ["GPT2ForSequenceClassification"], "num_labels": len(names),
            "id2label": {str(i): n for i, n in enumerate(names)}, "label2id": {n: i for i, n in enumerate(names)},
            "pad_token_id": int(task["pad_token_id"]), "problem_type": "single_label_classification"}


def save_hf_directory(path: str | Path, cfg: GPT2Config, params: Mapping[str, Any], tokenizer=None,
                      task: Mapping[str, Any] | None = None) -> list[str]:
    """Write a HF GPT-2 directory: model.safetensors + config.json, and vocab.json + merges.txt +
    tokenizer_config.json when the tokenizer is GPT-2 BPE with such files. Returns the files written.
    A classifier's task meta makes it a GPT2ForSequenceClassification directory (with score.weight)."""
    from safetensors.numpy import save_file

    path = Path(path).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    tensors = params_to_hf_state_dict(params, cfg)
    eos_id = getattr(tokenizer, "eos_id", None)
    config = hf_config(cfg, eos_id)
    if task is not None and task.get("kind") == "classify":
        tensors["score.weight"] = np.ascontiguousarray(np.asarray(params[heads.SCORE_KEY]["kernel"], np.float32).T)
        config = hf_classifier_config(cfg, task, eos_id)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    written = ["model.safetensors", "config.json"]
    files = _bpe_files(tokenizer) if tokenizer is not None else None
    if files is not None:
        shutil.copyfile(files[0], path / "vocab.json")
        shutil.copyfile(files[1], path / "merges.txt")
        eot = tokenizers.EOT_TEXT
        tok_cfg = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": cfg.n_positions, "bos_token": eot,
                   "eos_token": eot, "unk_token": eot, "add_prefix_space": False}
        (path / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
        written += ["vocab.json", "merges.txt", "tokenizer_config.json"]
    elif tokenizer is not None and tokenizer.spec().get("kind") == "byte":
        (path / TOKENIZER_SPEC).write_text(json.dumps(tokenizer.spec(), indent=2) + "\n")
        written.append(TOKENIZER_SPEC)
    return written
