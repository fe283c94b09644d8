"""Shakespeare's plays, byte-level, the smallest of three sizes for the offline perplexity table.

shakespeare_small / _medium / _large share everything but the model's shape (2, 4 and 6 layers),
so the table in README.md compares sizes at an equal training budget: 400 steps x 16 x 128 bytes
(0.8M bytes, a sixth of an epoch), a few minutes each on a 2-core CPU.
"""

from gpt2_jax.config import base_config


def get_config():
    c = base_config()
    c.model.preset = "nano"
    c.model.n_layer, c.model.n_embd, c.model.n_head = 2, 128, 4
    c.model.n_positions = 128
    c.data.seq_len = 128
    c.data.batch_size = 16
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 30
    c.optim.min_lr_ratio = 0.05
    c.train.steps = 400
    c.train.eval_every = 200
    c.train.sample_tokens = 0
    c.eval.max_batches = 8
    c.checkpoint.every = 400
    c.train.run_dir = "runs/shakespeare_small"
    return c
