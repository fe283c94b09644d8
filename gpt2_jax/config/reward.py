"""The `reward` section (task.kind=reward): rollouts, the objective and the reward, with its checks.

Registered in `base.py` (SECTIONS, base_config) and `checks.py` (validate); docs in
gpt2_jax/reward/.
"""

from __future__ import annotations

from ml_collections import config_dict

KL_ESTIMATORS = ("k3", "exact")
REWARD_KINDS = ("lexical", "callable", "classifier")


def defaults() -> dict:
    """Every key of the reward section with its default."""
    return dict(
        group_size=4,  # G completions sampled per prompt; advantages are normalized within each group
        prompts="",  # "": windows of the data.source splits; else a .jsonl file of prompts (field prompt_field)
        prompt_field="prompt",
        prompt_tokens=32,  # prompt length: text windows are this long, JSONL prompts left-padded with EOS
        completion_tokens=32,  # tokens sampled per completion (a sampled EOS ends it early)
        temperature=1.0, top_k=0, top_p=1.0,  # the sampler's settings; the loss uses logits / temperature
        kl_weight=0.1,  # beta of the KL penalty to the frozen reference (the starting params)
        kl_estimator="k3",  # k3 (Schulman's estimator on the sampled token) | exact (sum over the vocabulary)
        clip=0.2,  # PPO ratio clip epsilon (0: plain REINFORCE); acts only when inner_epochs > 1
        inner_epochs=1,  # optimizer updates on each rollout batch
        kind="lexical",  # lexical | callable | classifier
        words="",  # lexical: comma-separated words, each occurrence scores 1 (case-insensitive)
        whole_words=True,  # lexical: count whole words only (False: any substring)
        callable="",  # callable: module:function(prompts, completions) -> one float per completion
        classifier="",  # classifier: a run dir or export of task.kind=classify
        label="",  # classifier: the label whose probability is the reward
        eval_prompts=32,  # prompts of each evaluation (rewards, KL, samples)
        samples_shown=4,  # completions in each evaluation's samples table
    )


def check(cfg: config_dict.ConfigDict, n_positions: int, fail) -> None:
    """Call fail(key, message) for the first impossible reward key (only when task.kind is reward);
    n_positions is the model's context."""
    r = cfg.reward
    rules = [
        (r.group_size >= 2, "group_size", f"must be >= 2 (advantages compare completions of a prompt), got {r.group_size}"),
        (r.prompt_tokens >= 1, "prompt_tokens", f"must be >= 1, got {r.prompt_tokens}"),
        (r.completion_tokens >= 1, "completion_tokens", f"must be >= 1, got {r.completion_tokens}"),
        (r.temperature > 0, "temperature", f"must be > 0 (sampling; the loss divides logits by it), got {r.temperature}"),
        (r.top_k >= 0, "top_k", f"must be >= 0 (0: every token), got {r.top_k}"),
        (0 < r.top_p <= 1, "top_p", f"must be in (0, 1], got {r.top_p}"),
        (r.kl_weight >= 0, "kl_weight", f"must be >= 0, got {r.kl_weight}"),
        (r.kl_estimator in KL_ESTIMATORS, "kl_estimator", f"{r.kl_estimator!r} is not one of {', '.join(KL_ESTIMATORS)}"),
        (0 <= r.clip < 1, "clip", f"must be in [0, 1) (0: no clipping), got {r.clip}"),
        (r.inner_epochs >= 1, "inner_epochs", f"must be >= 1, got {r.inner_epochs}"),
        (r.kind in REWARD_KINDS, "kind", f"{r.kind!r} is not one of {', '.join(REWARD_KINDS)}"),
        (r.kind != "lexical" or bool(r.words.strip(", ")), "words", "the lexical reward needs words, e.g. "
         "--config.reward.words=love,merry"),
        (r.kind != "callable" or r.callable.count(":") == 1, "callable",
         f"{r.callable!r} must be module:function (e.g. my_rewards:score)"),
        (r.kind != "classifier" or bool(r.classifier), "classifier", "name a classifier run (task.kind=classify)"),
        (r.kind != "classifier" or bool(r.label), "label", "name the label whose probability is the reward"),
        (r.eval_prompts >= 1, "eval_prompts", f"must be >= 1, got {r.eval_prompts}"),
        (r.samples_shown >= 0, "samples_shown", f"must be >= 0, got {r.samples_shown}"),
        (not r.prompts or r.prompts.endswith(".jsonl"), "prompts", f"{r.prompts!r} must be a .jsonl file, or '' "
         "for windows of data.source"),
    ]
    for ok, key, message in rules:
        if not ok:
            fail(f"reward.{key}", message)
    n = n_positions
    if r.prompt_tokens + r.completion_tokens > n:
        fail("reward.completion_tokens", f"prompt_tokens + completion_tokens = {r.prompt_tokens + r.completion_tokens}"
             f" exceeds the model's context model.n_positions={n}")
