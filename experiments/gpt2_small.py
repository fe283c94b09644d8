"""GPT-2 124M with OpenAI's BPE on the Shakespeare plays: the full-size architecture, for a GPU."""

from gpt2_jax.config import base_config


def get_config():
    c = base_config()
    c.model.preset = "gpt2"
    c.model.vocab_multiple = 128  # 50257 -> 50304 rows: matmul-friendly, padded logits masked
    c.model.dtype = "bfloat16"
    c.model.embd_dropout = c.model.resid_dropout = 0.1  # ~1.4M train tokens: regularize
    c.model.attn_dropout = 0.0  # dropout on attention probabilities would rule out cuDNN flash attention
    c.data.tokenizer = "gpt2"
    c.data.seq_len = 1024
    c.data.batch_size = 16
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 100
    c.train.steps = 2000
    c.train.run_dir = "runs/gpt2_small"
    c.train.sample_prompt = "HAMLET:"
    c.eval.batch_size = 16
    return c
