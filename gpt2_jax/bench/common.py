"""What every `gpt2-jax bench` kind shares: the CPU threads a peer gets, the library versions a
report records, and a random transformers GPT-2 of a preset's shape to measure beside."""

from __future__ import annotations

import os

import jax
import numpy as np

from gpt2_jax.model import gpt2 as model_lib


def hf_random_model(preset: str, vocab_size: int, init_std: float, seed: int, n_layer: int | None = None):
    """A random transformers GPT2LMHeadModel (eval, fp32, sdpa attention) of preset's shape (n_layer
    blocks when given), and its config.

    No BOS/EOS ids, so `generate` never stops early and no logits processor touches the scores.
    """
    import torch
    import transformers

    shape = model_lib.PRESETS[preset]
    torch.manual_seed(seed)
    hf_cfg = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=shape.get("n_positions", 1024), n_embd=shape["n_embd"],
        n_layer=n_layer or shape["n_layer"], n_head=shape["n_head"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        initializer_range=init_std, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf_cfg._attn_implementation = "sdpa"
    return transformers.GPT2LMHeadModel(hf_cfg).eval(), hf_cfg


def cpu_threads() -> int:
    """CPU cores this process may run on (the thread count the PyTorch peers get)."""
    return len(os.sched_getaffinity(0))


def versions() -> dict[str, str]:
    """Versions of the libraries a bench report depends on."""
    import flax
    import jaxlib.version

    out = {"jax": jax.__version__, "jaxlib": jaxlib.version.__version__, "flax": flax.__version__,
           "numpy": np.__version__}
    try:
        import torch
        import transformers

        out.update(torch=torch.__version__, transformers=transformers.__version__)
    except ImportError:
        pass
    return out
