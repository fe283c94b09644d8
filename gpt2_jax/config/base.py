"""Every config key with its default: `base_config()`; experiments override only what differs.

A workflow with its own section (distillation, reward tuning, ...) adds it here in one line, its
defaults and checks in a module of its own beside this one.
"""

from __future__ import annotations

from ml_collections import config_dict

from gpt2_jax.config import distill
from gpt2_jax.config import reward as reward_section

SECTIONS = ("model", "data", "optim", "train", "mesh", "eval", "checkpoint", "task", "finetune", "reward", "distill")
TASKS = ("lm", "classify", "sft", "reward", "distill")
TOKEN_TASKS = ("lm", "reward", "distill")  # tasks that read token windows of a text source, as pre-training
DTYPES = ("float32", "bfloat16", "float16")
INT_LIMIT = 2 ** 31 - 1  # steps, sizes and seeds become int32 inside jitted code


class ConfigError(ValueError):
    """A config problem the user can fix; the message is one line naming the key."""


def base_config() -> config_dict.ConfigDict:
    """Defaults for every key. Experiments override only what differs."""
    ph = config_dict.placeholder
    c = config_dict.ConfigDict()
    c.model = dict(
        preset="tiny",  # a key of model.PRESETS; fields below that are set override it
        n_layer=ph(int), n_head=ph(int), n_embd=ph(int), n_positions=ph(int),
        vocab_size=ph(int),  # default: the tokenizer's vocabulary
        vocab_multiple=1,  # round the embedding table up (e.g. 128: 50257 -> 50304)
        embd_dropout=0.0, attn_dropout=0.0, resid_dropout=0.0,
        init_std=0.02, dtype="float32", param_dtype="float32",
        attention="auto",  # auto | xla | cudnn | blocked
        remat="none",  # none | full | dots
    )
    c.data = dict(
        source="shakespeare/plays",  # shakespeare[/...] | tfds:NAME[/CONFIG] | text:GLOB | jsonl:GLOB:FIELD
        text_field="text",  # the text feature of a tfds: source
        tokenizer="byte",  # byte | gpt2 | gpt2:/dir_or_file | sentencepiece:/path/to/x.model
        data_dir="~/tensorflow_datasets",
        train_split="train", eval_split="validation", test_split="test",
        # A text:/jsonl: glob without {split}: the share held out for each of validation and test
        # (data/holdout.py); 0: every split reads the same text and test is not held out.
        holdout_fraction=0.05,
        seq_len=256, batch_size=32, seed=0,
        prepare_workers=0,  # processes that tokenize a split (0: one per CPU core)
        prefetch=2,  # training batches built ahead of the device
    )
    c.optim = dict(
        name="adamw",  # adamw | muon | lion | adafactor | schedule_free_adamw (optim/optimizers.py)
        lr=1e-3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0,
        schedule="cosine", warmup_steps=100, min_lr_ratio=0.1, decay_steps=ph(int),
        accum_steps=1, label_smoothing=0.0,
        adam_lr=ph(float),  # muon: lr of what Adam trains (embeddings, biases, gains, head); default lr
    )
    c.train = dict(
        steps=1000, seed=0, run_dir="runs/default",
        log_every=50, eval_every=250, progress=True, tensorboard=True,
        sample_prompt="ROMEO:", sample_tokens=200, sample_temperature=0.8, sample_top_k=40,
        loss_chunk=0,  # > 0: cross-entropy this many positions at a time (no whole-batch fp32 logits)
        # The LM loss over this many independent groups of rows, which XLA:CPU runs on separate cores;
        # 0: auto (2 on CPU when each batch shard's rows are even, else 1). train/steps.py lm_loss.
        row_groups=0,
        profile_steps="",  # "A:B": jax.profiler trace of steps A..B-1 into <run_dir>/profile
        # Stop when `metric` (val_loss, val_accuracy, ...; "" = off) has not improved by more than
        # min_delta for `patience` evaluations; mode auto: max for accuracy/F1, else min.
        early_stopping=dict(metric="", mode="auto", patience=3, min_delta=0.0),
    )
    # Devices per slice/node on each axis (-1: all remaining); dcn_*: slices/nodes on each axis.
    c.mesh = dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1,
                  rules="fsdp+tp")  # dp | fsdp | tp | fsdp+tp, or 'logical=axis,...' (parallel/sharding.py)
    c.eval = dict(batch_size=32, max_batches=ph(int))  # None: the whole split
    c.checkpoint = dict(every=500, max_to_keep=3, keep_best=1, async_save=True,
                        # each block's arrays saved stacked along a layer axis: a third of a save's CPU
                        # (checkpoint/layout.py); false saves the tree as is (no on-device copy of the state)
                        stack_layers=True,
                        resume_from="latest",  # latest (the newest good step) | best | a step number
                        init_from="")  # an export or run dir whose params start a new run (fine-tuning)
    c.task = dict(
        kind="lm",  # lm | classify (data.source: jsonl:GLOB:TEXT,LABEL, tfds:, shakespeare/genre) |
                    # sft (data.source: jsonl:GLOB:PROMPT,COMPLETION) | reward (the reward section) |
                    # distill (any text source; the distill section)
        label_field="label",  # classify, tfds: sources: the label feature
        labels="",  # classify: label names in id order, comma-separated ("" = sorted names found in train)
        aux_lm_weight=0.0,  # classify: weight of the auxiliary language-model loss (GPT-1's lambda)
    )
    c.finetune = dict(
        freeze="",  # comma-separated globs over param paths (h_0/attn/qkv_kernel), or embeddings | body | blocks:A-B
        lr_multipliers="",  # PATTERN=FACTOR,...: e.g. score=10 trains a new head at 10x the body's lr
        lora=dict(rank=0, alpha=16.0, targets="qkv,attn_out,mlp"),  # rank 0: off; else base weights frozen
    )
    c.reward = reward_section.defaults()  # task.kind=reward (config/reward.py)
    c.distill = distill.defaults()  # task.kind = distill: teacher, alpha, temperature, ... (config/distill.py)
    return c
