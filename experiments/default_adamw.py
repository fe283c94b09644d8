"""The offline default as it was before issue 20: AdamW at lr 3e-3 for 1,800 steps.

The same model, data and batch as `experiments/default.py`; kept so that the old recipe can be
run beside the new one (`gpt2-jax bench recipes`) and so the checkpoints measured with it can be
remade. It scored 2.468 bits per byte on the test plays in 812 s on a quiet 2-core machine.
"""

import pathlib
import runpy

_default = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))


def get_config():
    c = _default["get_config"]()  # the default run's model, data, batch and schedule shape
    c.optim.name = "adamw"
    c.optim.lr = 3e-3
    c.optim.adam_lr = None
    c.train.steps = 1800
    c.train.eval_every = 600
    c.checkpoint.every = 600
    c.train.run_dir = "runs/default_adamw"
    return c
