"""A tiny real run directory for the load()/notebook tests, made in-process in a few seconds.

It trains the `nano` model on a repeated verse with the project's train step and writes what
`gpt2-jax train` writes for loading: checkpoints (state + config + meta) and metrics.jsonl.
"""

import dataclasses
import pathlib

import jax
import numpy as np

from gpt2_jax import config as config_lib
from gpt2_jax.checkpoint import manager as ckpt
from gpt2_jax.data import tokenizers
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.optim import optimizers
from gpt2_jax.train import metrics
from gpt2_jax.train import steps as train

VERSE = ("Shall I compare thee to a summer's day? Thou art more lovely and more temperate: "
         "Rough winds do shake the darling buds of May, and summer's lease hath all too short a date.\n")


def make_run(run_dir: pathlib.Path, steps: int = 30, save_at: tuple[int, ...] = (10, 30)) -> pathlib.Path:
    """Train `steps` steps, checkpointing at `save_at` (val_loss: the train loss there); returns run_dir."""
    cfg = config_lib.base_config()
    cfg.model.preset, cfg.data.seq_len, cfg.data.batch_size = "nano", 32, 8
    cfg.train.run_dir, cfg.train.steps, cfg.optim.warmup_steps, cfg.optim.lr = str(run_dir), steps, 0, 3e-3
    config_lib.validate(cfg)
    tokenizer = tokenizers.ByteTokenizer()
    model = model_lib.GPT2(config_lib.model_config(cfg, tokenizer.vocab_size))
    schedule, optimizer = optimizers.optimizer_from_config(cfg)
    state = train.init_state(model, optimizer, jax.random.key(0), cfg.data.seq_len)
    step_fn = jax.jit(train.make_train_step(model, optimizer, schedule))
    ids = np.array(tokenizer.encode(VERSE * 20), np.int32)
    writer = metrics.MetricsWriter(run_dir, tensorboard=False)
    manager = ckpt.make_manager(run_dir)
    rng = np.random.default_rng(0)
    for step in range(1, steps + 1):
        starts = rng.integers(0, len(ids) - 33, 8)
        state, m = step_fn(state, np.stack([ids[s:s + 33] for s in starts])[None])
        m = {k: float(v) for k, v in m.items()}
        writer.write(step, m)
        if step in save_at:
            meta = {"tokenizer": tokenizer.spec(), "model": dataclasses.asdict(model.cfg),
                    "metrics": {"val_loss": m["loss"]}}
            ckpt.save(manager, step, state, cfg.to_dict(), meta, metrics={"val_loss": m["loss"]})
    ckpt.finish(manager)
    manager.close()
    writer.close()
    return run_dir
