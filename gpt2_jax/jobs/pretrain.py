"""The `gpt2-jax train` job: an experiment config -> tokenizer, prepared splits, model and optimizer
-> the training loop -> held-out results, a checkpoint and a sample, reported line by line."""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any, Callable

import jax
from ml_collections import config_dict

from gpt2_jax import api
from gpt2_jax import config as config_lib
from gpt2_jax.data import holdout, labelled, sources, tokenizers
from gpt2_jax.data import tokens as tokens_lib
from gpt2_jax.generate import decode as generate
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.optim import optimizers
from gpt2_jax.parallel import distributed
from gpt2_jax.posttrain import build as task_build
from gpt2_jax.reward import task as reward_task
from gpt2_jax.train import loop, progress


def build(cfg: config_dict.ConfigDict, echo: Callable[..., None] = print) -> loop.Components:
    """Tokenizer, prepared token splits (or a task's example splits), model, task, parameter groups,
    schedule and optimizer for cfg."""
    d = cfg.data
    data_dir = str(pathlib.Path(d.data_dir).expanduser())
    tokenizer = tokenizers.make_tokenizer(d.tokenizer)
    mcfg = config_lib.model_config(cfg, tokenizer.vocab_size)
    if mcfg.vocab_size < tokenizer.vocab_size:  # checked before any tokenizing
        raise config_lib.ConfigError(f"config key model.vocab_size: {mcfg.vocab_size} is smaller than the "
                                     f"{d.tokenizer} tokenizer's {tokenizer.vocab_size}; unset it or raise it")
    if cfg.task.kind not in config_lib.TOKEN_TASKS:
        splits, id2label = task_build.task_splits(cfg, tokenizer, echo)
        return _components(cfg, tokenizer, mcfg, splits, id2label)
    task = (False if cfg.task.kind == "reward"  # False: _components builds it (with its reward) below
            else task_build.make_task(cfg, tokenizer.eos_id, None, mcfg, tokenizer))  # a teacher: checked before any data
    splits = {}
    roles = list(role_splits(cfg).items())
    if distributed.is_primary():  # one process tokenizes; the others then find the shards prepared
        for _, name in roles:
            tokens_lib.prepare_split(d.source, name, tokenizer, data_dir,
                                     show_progress=progress.bars_wanted(cfg.train.progress),
                                     text_field=d.text_field, workers=d.prepare_workers or tokens_lib.cpu_count())
    distributed.sync("data prepared")
    for role, name in roles:
        splits[role] = tokens_lib.load_split(tokens_lib.split_dir(d.source, name, tokenizer, data_dir), tokenizer)
    return _components(cfg, tokenizer, mcfg, splits, task=task)


def _components(cfg, tokenizer, mcfg, splits, id2label=None, task=False) -> loop.Components:
    if task is False and cfg.task.kind == "reward":
        task = reward_task.from_config(cfg, tokenizer, load_classifier=api.load)
    elif task is False:  # None is a task too: the language-model path
        task = task_build.make_task(cfg, tokenizer.eos_id, id2label, mcfg, tokenizer)
    labels = task_build.param_labels(cfg, task_build.param_shapes(mcfg, task))
    schedule, optimizer = optimizers.optimizer_from_config(cfg, labels)
    return loop.Components(cfg, tokenizer, model_lib.GPT2(mcfg), schedule, optimizer, splits, task, labels)


def _result_line(r: dict, prefix: str) -> str:
    """One line of held-out metrics: perplexity for language models, accuracy for classifiers."""
    if f"{prefix}_accuracy" in r:
        recalls = ", ".join(f"{k.split('_', 2)[2]} {v:.3f}" for k, v in r.items() if k.startswith(f"{prefix}_recall_"))
        return (f"loss {r[f'{prefix}_loss']:.4f}, accuracy {r[f'{prefix}_accuracy']:.4f}, macro-F1 "
                f"{r[f'{prefix}_macro_f1']:.4f}, recall {recalls}")
    line = f"loss {r[f'{prefix}_loss']:.4f} nats/token, ppl {r[f'{prefix}_ppl']:.3f}"
    line += f", bits/byte {r[f'{prefix}_bpb']:.4f}" if f"{prefix}_bpb" in r else ""
    if f"{prefix}_reward" in r:  # reward tuning: the evaluation prompts' reward beside the reference's
        line += (f"; reward {r[f'{prefix}_reward']:.4f} (reference {r[f'{prefix}_reward_reference']:.4f}), "
                 f"KL {r[f'{prefix}_kl']:.4f} nats per completion")
    return line


def role_splits(cfg: config_dict.ConfigDict) -> dict[str, str]:
    """{role (train, eval, test): split name} the run reads: the configured splits, or the held-out
    parts of a source without splits of its own (data.holdout_fraction > 0)."""
    d = cfg.data
    names = {role: d[f"{role}_split"] for role in ("train", "eval", "test") if d[f"{role}_split"]}
    return holdout.role_splits(sources.has_own_splits(d.source), names, d.holdout_fraction)


def describe_split(cfg: config_dict.ConfigDict, role: str, header: dict) -> str:
    """What the split of `role` is, in words: a held-out part, the same text as training, or the source's own."""
    held = holdout.describe(header.get("source_fingerprint", {}))
    if held:
        return held
    if not sources.has_own_splits(cfg.data.source):
        return ("the same text as train, NOT held out: the glob has no {split} and data.holdout_fraction=0"
                if role != "train" else "every file of the glob")
    return f"the source's own {header.get('split')!r} split"


def held_out(cfg: config_dict.ConfigDict) -> bool:
    """Whether the test split is text that training never reads (a task's examples have no held-out parts)."""
    return labelled.has_own_splits(cfg.data.source) or (cfg.task.kind in config_lib.TOKEN_TASKS
                                                        and cfg.data.holdout_fraction > 0)


def sample_text(c: loop.Components, params, prompt: str, max_new_tokens: int, temperature: float, top_k: int,
                seed: int = 0) -> str:
    """Decode a continuation of prompt (the prompt itself is not included)."""
    ids = c.tokenizer.encode(prompt)[-(c.model.cfg.n_positions - 1):]  # never fail a finished run over its prompt
    new = generate.sample(c.model, params, ids, max_new_tokens, jax.random.key(seed),
                          temperature=temperature, top_k=top_k, eos_id=c.tokenizer.eos_id)
    return c.tokenizer.decode(new)


def run(cfg: config_dict.ConfigDict, say: Callable[..., None] = print) -> dict[str, Any]:
    """Train a validated config end to end, saying what happens through `say` (every process calls
    this; pass a silent `say` on all but process 0). Returns the held-out results and, under
    'params', the trained/frozen parameter counts and the optimizer state's bytes."""
    t0 = time.perf_counter()
    comps = build(cfg, say)
    mcfg = comps.model.cfg
    n = model_lib.count_params(model_lib.param_shapes(mcfg))
    say(f"model: {mcfg.n_layer} layers x {mcfg.n_embd} wide x {mcfg.n_head} heads, {n:,} params, "
        f"vocab {mcfg.vocab_size}, context {mcfg.n_positions}", flush=True)
    token_task = comps.task is None or comps.task.kind in config_lib.TOKEN_TASKS
    for role, split in comps.splits.items() if token_task else ():
        h = split.header
        say(f"data {role}: {cfg.data.source}@{h.get('split')}, {h['num_tokens']:,} tokens, {h['num_bytes']:,} "
            f"bytes, {h['num_documents']} documents; {describe_split(cfg, role, h)}", flush=True)
    if "eval" not in comps.splits:
        say("data eval: none (data.eval_split is empty): no periodic evaluation, no early stopping, and the "
            "'best' checkpoint is the latest", flush=True)
    counts = task_build.group_summary(task_build.param_shapes(mcfg, comps.task), comps.param_labels, comps.optimizer)
    if comps.task is not None or comps.param_labels is not None:
        say(task_build.describe_groups(counts), flush=True)
    out = loop.fit(comps, echo=say)
    r = out["results"]
    held = "test (held out)" if held_out(cfg) else "test (the training text itself, NOT held out)"
    for prefix, name in (("val", "validation"), ("test", held)):
        if f"{prefix}_loss" in r:
            say(f"{name}: {_result_line(r, prefix)}", flush=True)
    if "early_stopping" in r:
        say(f"early stopping: {r['early_stopping']['reason']}; scored step {r['evaluated_step']}", flush=True)
    run_dir = os.path.abspath(cfg.train.run_dir)
    say(f"checkpoint: {run_dir}/checkpoints/{r['step']}; loss curve: {run_dir}/loss.png", flush=True)
    if cfg.train.sample_tokens > 0 and cfg.task.kind != "classify":
        params = loop.evaluated_params(out["state"])
        params = params if comps.task is None else comps.task.model_params(params)
        params = distributed.to_host(params)  # collective: gathers shards other processes hold
        if distributed.is_primary():
            text = sample_text(comps, params, cfg.train.sample_prompt, cfg.train.sample_tokens,
                               cfg.train.sample_temperature, cfg.train.sample_top_k, seed=cfg.train.seed)
            say(f"sample:\n{cfg.train.sample_prompt}{text}", flush=True)
    say(f"done in {time.perf_counter() - t0:.0f} s", flush=True)
    return {**r, "params": counts}
