"""`gpt2-jax convert --to run`: weights of any kind written as a run directory that `load()`,
`gpt2-jax sample` and `--init-from` read."""

from __future__ import annotations

import dataclasses
import pathlib

import jax

from gpt2_jax import api
from gpt2_jax import config as config_lib
from gpt2_jax.checkpoint import manager as ckpt
from gpt2_jax.optim import optimizers
from gpt2_jax.train import steps as step_lib


def save_as_run(run_dir: str | pathlib.Path, weights: api.Weights, source: str = "") -> pathlib.Path:
    """Write weights as a run directory: a step-0 checkpoint (params, fresh optimizer state) whose config
    and meta describe the model and tokenizer, so `gpt2_jax.load(run_dir)` and `gpt2-jax sample` work."""
    run_dir = pathlib.Path(run_dir).expanduser()
    if (run_dir / ckpt.CHECKPOINT_SUBDIR).exists():
        raise ValueError(f"{run_dir} already has checkpoints; pick a new --out directory")
    c = weights.config
    cfg = config_lib.base_config()
    for name in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size"):
        cfg.model[name] = getattr(c, name)
    cfg.data.tokenizer = "gpt2" if weights.tokenizer.spec()["kind"] == "gpt2_bpe" else "byte"
    cfg.data.seq_len = min(cfg.data.seq_len, c.n_positions)
    cfg.train.run_dir = str(run_dir)
    if weights.task.get("kind") == "classify":  # the head travels; task meta says how to read it
        cfg.task.kind, cfg.task.labels = "classify", ",".join(weights.task["id2label"])
        cfg.data.source = "jsonl:unknown.jsonl:text,label"  # a classifier's config needs a labelled source
    config_lib.validate(cfg)
    _, optimizer = optimizers.optimizer_from_config(cfg)
    params = jax.device_put(weights.params)
    state = step_lib.TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                                opt_state=optimizer.init(params), rng=jax.random.key(0))
    meta = {"tokenizer": weights.tokenizer.spec(), "model": dataclasses.asdict(c), "metrics": {},
            "data_position": {"step": 0, "seed": cfg.data.seed}, "converted_from": {"path": source, "kind": weights.kind},
            "task": weights.task}
    manager = ckpt.make_manager(run_dir, async_save=False)
    ckpt.save(manager, 0, state, cfg.to_dict(), meta, stack_layers=cfg.checkpoint.stack_layers)
    manager.wait_until_finished()
    manager.close()
    return run_dir
