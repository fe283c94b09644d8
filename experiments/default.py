"""The offline default: a byte-level GPT-2 (6 layers, 192 wide) on Shakespeare's plays, on 2 CPU cores.

Sized so that README's first command (install included) finishes in under 15 minutes on a
2-core machine and scores the two held-out plays of the test split at <= 2.5 bits per byte.
"""

from gpt2_jax.config import base_config


def get_config():
    c = base_config()
    c.model.preset = "tiny"
    c.model.n_positions = 128
    c.data.seq_len = 128
    c.data.batch_size = 16
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 30
    c.optim.min_lr_ratio = 0.05
    c.train.steps = 1800
    c.train.eval_every = 600
    c.train.log_every = 50
    c.train.sample_tokens = 120
    c.eval.max_batches = 16
    c.checkpoint.every = 600
    c.train.run_dir = "runs/default"
    return c
