"""The `distill` section: knowledge distillation from a frozen teacher (task.kind = distill).

Loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * data cross-entropy
       + hidden_weight * (1 - cosine) of the student's and teacher's hidden states on mapped layers.
The teacher's path is read (and its tokenizer, context and width compared) when the run is built,
not here: a saved config must stay loadable after its teacher moves.
"""

from __future__ import annotations

from ml_collections import config_dict

RANDOM = "random"
LAYERS_PREFIX = "layers:"


def defaults() -> config_dict.ConfigDict:
    """The section's keys and their defaults."""
    return config_dict.ConfigDict(dict(
        teacher="",  # a run directory, an export, or a Hugging Face GPT-2 directory
        alpha=0.5,  # weight of the distillation (KL) term; 1 - alpha weighs the data cross-entropy
        temperature=2.0,  # softmax temperature of both models in the KL term (scaled back by T^2)
        hidden_weight=0.0,  # weight of 1 - cosine(student, teacher) hidden states on mapped layers
        student_init="random",  # random | layers:0,2,4 (embeddings, ln_f and these teacher blocks copied)
    ))


def parse_layers(text: str) -> tuple[int, ...] | None:
    """The teacher blocks of student_init ('layers:0,2,4' -> (0, 2, 4); 'random' -> None); ValueError else."""
    if text == RANDOM:
        return None
    if not text.startswith(LAYERS_PREFIX):
        raise ValueError(f"{text!r} is not 'random' or 'layers:I,J,...' (teacher block indices, one per student block)")
    items = [s.strip() for s in text[len(LAYERS_PREFIX):].split(",")]
    if not all(s.isdigit() for s in items):
        raise ValueError(f"{text!r}: layer indices must be non-negative integers, e.g. layers:0,2,4")
    return tuple(int(s) for s in items)


def validate(cfg: config_dict.ConfigDict, n_layer: int) -> None:
    """Raise ConfigError naming the first impossible distill key (n_layer: the student's blocks)."""
    from gpt2_jax.config.base import ConfigError  # here: base imports this module for its defaults

    d, kind = cfg.distill, cfg.task.kind

    def check(cond: bool, key: str, message: str) -> None:
        if not cond:
            raise ConfigError(f"config key distill.{key}: {message}")

    check(0.0 <= d.alpha <= 1.0, "alpha", f"must be in [0, 1], got {d.alpha}")
    check(d.temperature > 0, "temperature", f"must be positive, got {d.temperature}")
    check(d.hidden_weight >= 0, "hidden_weight", f"must be >= 0, got {d.hidden_weight}")
    try:
        layers = parse_layers(d.student_init)
    except ValueError as e:
        raise ConfigError(f"config key distill.student_init: {e}") from None
    if layers is not None:
        check(len(layers) == n_layer, "student_init",
              f"{d.student_init!r} names {len(layers)} teacher blocks but the student has model.n_layer={n_layer}; "
              "name one teacher block per student block")
    if kind == "distill":
        check(bool(d.teacher), "teacher", "task.kind=distill needs a teacher: a run directory, an export or a "
              "Hugging Face GPT-2 directory (e.g. runs/default)")
    else:
        check(not d.teacher, "teacher", f"is set but task.kind={kind!r}; set task.kind=distill to use it")
