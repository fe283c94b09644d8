"""Distillation: a 3-block student (half the default's 6, same width) trained from the default run.

Teacher: `runs/default` (README's first command: 6 x 192, byte tokenizer, context 128). The student
has the default's shape with half the blocks and trains for 600 steps at its batch (16 x 128) on
the same plays: loss = 0.5 x CE on the data + 0.5 x T^2 x KL(teacher_T || student_T) at T = 2,
computed inside one jitted step with the teacher's params frozen. The arms of README "Distillation":
  scratch:            --config.task.kind=lm --config.distill.teacher=
  distilled, random:  (this file)
  distilled, layers:  --config.distill.student_init=layers:0,2,4
"""

import pathlib
import runpy

_default = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))


def get_config():
    c = _default["get_config"]()  # the teacher's data, tokenizer, context, batch and schedule shape
    c.model.n_layer = 3
    c.task.kind = "distill"
    c.distill.teacher = "runs/default"
    c.distill.alpha = 0.5
    c.distill.temperature = 2.0
    c.optim.name, c.optim.lr, c.optim.adam_lr = "adamw", 3e-3, None  # the student's recipe: AdamW, as measured
    c.train.steps = 600
    c.train.eval_every = 300
    c.checkpoint.every = 300
    c.train.run_dir = "runs/distill_half"
    return c
