"""Reward tuning from the default run toward comedy: sample 8 completions of 48 characters for each of
4 Shakespeare prompts (32 characters of the training plays) per step, reward them, and take a
policy-gradient step (advantages normalized within each prompt's 8) with a KL leash (weight 0.5,
k3 estimator) to the default run's model, which stays frozen as the reference.

Reward: the genre classifier's probability of "Comedies" when its run exists
(`gpt2-jax train --config experiments/finetune_genre.py` writes runs/finetune_genre), else the
lexical reward: how many comic words (below) a completion holds. The weights start from
`runs/default` (README's first command). `gpt2-jax train --config experiments/reward_comedy.py`.
"""

import pathlib
import runpy

_default = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))

COMIC_WORDS = ("merry,mirth,jest,jests,laugh,laughter,fool,fools,wit,sport,dance,sing,song,kiss,love,sweet,"
               "wooing,woo,marry,wedding,cuckold,ha")
CLASSIFIER = "runs/finetune_genre"


def get_config():
    c = _default["get_config"]()  # the default run's model shape, tokenizer and corpus
    c.task.kind = "reward"
    r = c.reward
    r.group_size = 8
    r.prompt_tokens = 32
    r.completion_tokens = 48
    r.temperature = 1.0
    r.kl_weight = 0.5
    r.kl_estimator = "k3"
    r.clip = 0.2
    r.inner_epochs = 1
    if pathlib.Path(CLASSIFIER, "checkpoints").is_dir():
        r.kind, r.classifier, r.label = "classifier", CLASSIFIER, "Comedies"
    else:
        r.kind, r.words = "lexical", COMIC_WORDS
    r.eval_prompts = 32
    r.samples_shown = 6
    c.data.batch_size = 4  # prompts per step: 32 completions
    c.optim.name, c.optim.adam_lr = "adamw", None  # not the default run's Muon: tuned with AdamW
    c.optim.lr = 3e-4
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 10
    c.optim.weight_decay = 0.0
    c.train.steps = 200
    c.train.eval_every = 50
    c.train.log_every = 5
    c.train.sample_prompt = "ROMEO:"
    c.eval.max_batches = 16
    c.checkpoint.every = 50
    c.checkpoint.init_from = "runs/default"
    c.train.run_dir = "runs/reward_comedy"
    return c
