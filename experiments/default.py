"""The offline default: a byte-level GPT-2 (6 layers, 192 wide) on Shakespeare's plays, on 2 CPU cores.

Sized so that `gpt2-jax train` on it takes under 8 minutes on a quiet 2-core machine and scores
the two held-out plays of the test split at <= 2.45 bits per byte: Muon (orthogonalized momentum)
on the blocks' matrices at lr 0.02, Adam at 3e-3 for embeddings, biases and gains, 600 steps. The
recipe it replaced (AdamW, 1,800 steps, 2.468 in 812 s) is `experiments/default_adamw.py`.
"""

from gpt2_jax.config import base_config


def get_config():
    c = base_config()
    c.model.preset = "tiny"
    c.model.n_positions = 128
    c.data.seq_len = 128
    c.data.batch_size = 16
    c.optim.name = "muon"
    c.optim.lr = 0.02
    c.optim.adam_lr = 3e-3
    c.optim.warmup_steps = 30
    c.optim.min_lr_ratio = 0.05
    c.train.steps = 600
    c.train.eval_every = 200
    c.train.log_every = 50
    c.train.sample_tokens = 120
    c.eval.max_batches = 16
    c.checkpoint.every = 200
    c.train.run_dir = "runs/default"
    return c
