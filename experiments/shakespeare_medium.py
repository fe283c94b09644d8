"""Shakespeare's plays, byte-level: shakespeare_small's run with a 4-layer, 192-wide model."""

import pathlib
import runpy

_small = runpy.run_path(str(pathlib.Path(__file__).with_name("shakespeare_small.py")))


def get_config():
    c = _small["get_config"]()
    c.model.n_layer, c.model.n_embd, c.model.n_head = 4, 192, 6
    c.train.run_dir = "runs/shakespeare_medium"
    return c
