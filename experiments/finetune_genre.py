"""Genre of a Shakespeare passage, fine-tuned from the default run: Comedies, Histories or Tragedies
as the First Folio's own catalogue (1623) files each play (gpt2_jax/data/genre.py).

Passages of at most 128 characters of whole lines, split by whole plays (validation: Macbeth,
Twelfth Night, King John; test: Hamlet, A Midsummer Night's Dream, Richard II; the other 29
catalogue plays train). The model is the default run's (byte-level, 6 x 192, context 128), its
weights read from `runs/default` (README's first command), with a fresh classification head on
the last character's hidden state; early stopping on validation accuracy keeps the best step.
`gpt2-jax finetune --config experiments/finetune_genre.py` runs this beside random init, a
TF-IDF baseline, a frozen body and LoRA (README "Fine-tuning").
"""

import pathlib
import runpy

_default = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))


def get_config():
    c = _default["get_config"]()  # the default run's model shape and tokenizer
    c.task.kind = "classify"
    c.data.source = "shakespeare/genre"
    c.data.batch_size = 32
    c.model.embd_dropout = c.model.resid_dropout = 0.1
    c.optim.name, c.optim.adam_lr = "adamw", None  # not the default run's Muon: tuned with AdamW
    c.optim.lr = 5e-4
    c.optim.warmup_steps = 20
    c.optim.weight_decay = 0.01
    c.optim.min_lr_ratio = 0.1
    c.train.steps = 400
    c.train.eval_every = 50
    c.train.log_every = 25
    c.train.early_stopping.metric = "val_accuracy"
    c.train.early_stopping.patience = 3
    c.eval.batch_size = 64
    c.eval.max_batches = 8  # periodic evaluations score 512 validation passages (a random sample); the final one all
    c.checkpoint.every = 50
    c.checkpoint.init_from = "runs/default"
    c.train.run_dir = "runs/finetune_genre"
    return c
