"""From a config to the pieces a task run adds to the one loop: the task object, its splits read
and tokenized, and the parameter groups (frozen, per-group learning rates, LoRA)."""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

import flax.linen as nn
import jax
from ml_collections import config_dict

from gpt2_jax.data import labelled
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.model import heads
from gpt2_jax.model import lora as lora_lib
from gpt2_jax.optim import groups
from gpt2_jax import config as config_lib
from gpt2_jax.config import distill as dist_config
from gpt2_jax.posttrain import classify, distill, examples, sft
from gpt2_jax.posttrain import teacher as teacher_lib
from gpt2_jax.train import tasks

# Names a freeze or lr-multiplier pattern may use for several parameter paths.
ALIASES = {"embeddings": ("wte", "wpe"), "body": ("wte", "wpe", "h_*", "ln_f"), "head": (heads.SCORE_KEY,),
           "adapters": (tasks.LORA_KEY,)}
_BLOCKS = re.compile(r"^blocks:(\d+)-(\d+)$")


def lora_spec(cfg: config_dict.ConfigDict) -> lora_lib.LoraSpec | None:
    """The LoRA adapters finetune.lora asks for (None for rank 0)."""
    lo = cfg.finetune.lora
    return lora_lib.LoraSpec(lo.rank, lo.alpha, lora_lib.parse_targets(lo.targets)) if lo.rank else None


def make_task(cfg: config_dict.ConfigDict, pad_id: int, id2label: tuple[str, ...] | None = None,
              mcfg: model_lib.GPT2Config | None = None, tokenizer=None):
    """The task of cfg.task.kind (None: plain language modeling, the pre-training path); distill
    needs the student's model config and tokenizer (the teacher is checked against them)."""
    kind, lora = cfg.task.kind, lora_spec(cfg)
    if kind == "distill":
        return distill_task(cfg, mcfg, tokenizer, lora)
    if kind == "classify":
        return classify.ClassifyTask(tuple(id2label), pad_id, cfg.task.aux_lm_weight, lora)
    if kind == "sft":
        return sft.SFTTask(lora)
    return tasks.LMTask(lora, cfg.optim.label_smoothing, cfg.train.loss_chunk) if lora else None


def distill_task(cfg: config_dict.ConfigDict, mcfg: model_lib.GPT2Config, tokenizer,
                 lora: lora_lib.LoraSpec | None = None) -> distill.DistillTask:
    """The distill task of cfg.distill: the teacher opened and checked (one line each: missing path,
    another tokenizer or context, an impossible layer map), its params not yet read."""
    d = cfg.distill
    teacher = teacher_lib.open_teacher(d.teacher)
    teacher_lib.check_student(teacher, mcfg, tokenizer.spec(), cfg.data.tokenizer)
    layers = dist_config.parse_layers(d.student_init)
    if layers is not None:
        teacher_lib.check_layers(layers, mcfg, teacher.cfg)
    pairs = ()
    if d.hidden_weight > 0:
        mapped = layers or teacher_lib.spread_layers(mcfg.n_layer, teacher.cfg.n_layer)
        if mcfg.n_embd != teacher.cfg.n_embd:
            raise config_lib.ConfigError(f"config key distill.hidden_weight: the student is {mcfg.n_embd} wide, the "
                                         f"teacher {teacher.cfg.n_embd}; a cosine of hidden states needs one width "
                                         "(set distill.hidden_weight=0)")
        pairs = tuple(enumerate(mapped))
    return distill.DistillTask(lora, cfg.optim.label_smoothing, cfg.train.loss_chunk, teacher_cfg=teacher.cfg,
                               read_teacher=teacher.read, alpha=d.alpha, temperature=d.temperature,
                               hidden_weight=d.hidden_weight, layers=layers, hidden_pairs=pairs,
                               teacher_meta=teacher.describe())


def task_splits(cfg: config_dict.ConfigDict, tokenizer, say: Callable[..., None] = print):
    """({role: ExampleSplit}, id2label or None) of a classify or sft config, with class counts said."""
    d, kind = cfg.data, cfg.task.kind
    roles = [(role, d[f"{role}_split"]) for role in ("train", "eval", "test") if d[f"{role}_split"]]
    read = lambda split: labelled.read_pairs(d.source, split, d.data_dir, d.text_field, cfg.task.label_field,
                                             labels_are_ids=kind == "classify")
    pairs = {role: read(split) for role, split in roles}
    if kind == "sft":
        return {role: examples.sft_split(pairs[role], split, tokenizer.encode, d.seq_len, tokenizer.eos_id)
                for role, split in roles}, None
    names = examples.label_names(pairs["train"], cfg.task.labels)
    splits = {}
    for role, split in roles:
        splits[role] = examples.classify_split(pairs[role], split, d.source, names, tokenizer.encode, d.seq_len,
                                               tokenizer.eos_id)
        counts = examples.class_counts(splits[role].arrays["labels"], names)
        say(f"data {role}: {d.source}:{split} {len(splits[role]):,} examples; classes "
            + ", ".join(f"{n} {c:,}" for n, c in counts.items()), flush=True)
    return splits, names


def param_shapes(mcfg: model_lib.GPT2Config, task=None) -> Any:
    """Unboxed ShapeDtypeStructs of the params a run trains (the model's, or the task's tree)."""
    if task is None:
        return model_lib.param_shapes(mcfg)
    boxed = jax.eval_shape(functools.partial(task.init_params, mcfg, seq_len=1), jax.random.key(0))
    return nn.meta.unbox(boxed)


def expand_patterns(text: str) -> list[str]:
    """Freeze / multiplier patterns with aliases expanded (blocks:A-B = h_A .. h_B)."""
    out = []
    for item in groups.parse_patterns(text, ALIASES):
        m = _BLOCKS.match(item)
        out.extend([f"h_{i}" for i in range(int(m[1]), int(m[2]) + 1)] if m else [item])
    return out


def param_labels(cfg: config_dict.ConfigDict, shapes) -> Any:
    """The parameter groups of cfg.finetune over shapes (None when everything trains at one lr)."""
    f = cfg.finetune
    freeze = expand_patterns(f.freeze)
    mults = [(p, m) for pattern, m in groups.parse_multipliers(f.lr_multipliers) for p in expand_patterns(pattern)]
    always = ALIASES["body"] if f.lora.rank else ()  # LoRA trains the adapters, never the base weights
    if not (freeze or mults or always):
        return None
    return groups.param_labels(shapes, freeze, mults, always)


def group_summary(shapes, labels, optimizer) -> dict:
    """{'trained', 'frozen', 'groups': {label: params}, 'optimizer_state_bytes'} of a run's params."""
    counts = groups.count_by_label(shapes, labels if labels is not None else jax.tree.map(lambda _: "lr_x1", shapes))
    trained = {k: v for k, v in sorted(counts.items()) if k != groups.FROZEN}
    return {"trained": sum(trained.values()), "frozen": counts.get(groups.FROZEN, 0), "groups": trained,
            "optimizer_state_bytes": groups.state_bytes(jax.eval_shape(optimizer.init, shapes))}


def describe_groups(summary: dict) -> str:
    """'params: 577 trained (lr_x1 577), 2,743,488 frozen; optimizer state 4,616 bytes'."""
    per = ", ".join(f"{k} {v:,}" for k, v in summary["groups"].items())
    return (f"params: {summary['trained']:,} trained ({per}), {summary['frozen']:,} frozen; "
            f"optimizer state {summary['optimizer_state_bytes']:,} bytes")
