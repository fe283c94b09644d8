"""The offline default: a small byte-level GPT-2 on Shakespeare's plays, on one CPU in minutes."""

from gpt2_jax.config import base_config


def get_config():
    c = base_config()
    c.train.run_dir = "runs/default"
    return c
