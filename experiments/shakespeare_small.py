"""Shakespeare's plays, byte-level, the smallest of three sizes for the offline perplexity table.

shakespeare_small / _medium / _large share everything but the model's shape (2, 4 and 6 layers),
so the table in README.md compares sizes at an equal training budget: 400 steps x 16 x 128 bytes
(0.8M bytes, a sixth of an epoch), a few minutes each on a 2-core CPU.
"""

import pathlib
import runpy

_default = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))


def get_config():
    c = _default["get_config"]()  # the default run's data and schedule shape
    c.optim.name, c.optim.lr, c.optim.adam_lr = "adamw", 3e-3, None  # the table was measured with AdamW
    c.model.preset = "nano"
    c.model.n_layer, c.model.n_embd, c.model.n_head = 2, 128, 4
    c.train.steps = 400
    c.train.eval_every = 200
    c.train.sample_tokens = 0
    c.eval.max_batches = 8
    c.checkpoint.every = 400
    c.train.run_dir = "runs/shakespeare_small"
    return c
