"""Memory planning without the hardware: compile a config's train step ahead of time for a mesh
of virtual devices and report what one device must hold.

Parameter and optimizer bytes are exact (shard shapes of the real layout). Activations are given
two ways: the compiled step's temporary buffers as XLA:CPU plans them (measured, but remat does
not lower them on XLA:CPU, and the CPU compile upcasts bf16 matmuls), and the
closed-form count of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
Transformer Models", eq. 2, tensor parallel without sequence parallel) plus the logits, which
does model remat. The 'fits' verdict uses the closed form.
"""

from __future__ import annotations

import time
from typing import Any

import flax.linen as nn
import jax
from ml_collections import config_dict

from gpt2_jax import config as config_lib
from gpt2_jax.data import tokenizers
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.parallel import sharding
from gpt2_jax.optim import optimizers
from gpt2_jax.posttrain import teacher as teacher_lib
from gpt2_jax.train import steps as train

GIB = 1024**3


def plan_memory(cfg: config_dict.ConfigDict, devices=None) -> dict[str, Any]:
    """Per-device bytes of params, optimizer state, batch and activations for cfg's train step."""
    vocab = tokenizers.make_tokenizer(cfg.data.tokenizer).vocab_size
    model = model_lib.GPT2(config_lib.model_config(cfg, vocab))
    schedule, optimizer = optimizers.optimizer_from_config(cfg)
    mesh = sharding.make_mesh(sharding.MeshSpec.from_config(cfg.mesh), devices)
    rules = sharding.logical_rules(cfg.mesh.rules)
    sharding.check_layout(mesh.shape, rules, model.cfg.n_head, model.cfg.n_embd, {"data.batch_size": cfg.data.batch_size})
    groups = train.resolve_row_groups(cfg.train.row_groups, mesh, rules, cfg.data.batch_size)
    steps = train.make_steps(model, optimizer, schedule, mesh, rules, 0, cfg.data.seq_len, cfg.optim.label_smoothing,
                             loss_chunk=cfg.train.loss_chunk, row_groups=groups)
    state = sharding.abstract_on(steps.abstract_state, steps.state_sharding)
    batch = jax.ShapeDtypeStruct((cfg.optim.accum_steps, cfg.data.batch_size, cfg.data.seq_len + 1), "int32",
                                 sharding=steps.train_batch_sharding)
    t0 = time.perf_counter()
    compiled = steps.train.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    stats = compiled.memory_analysis()
    params = sharding.per_device_bytes(steps.abstract_state.params, steps.state_sharding.params)
    opt = sharding.per_device_bytes(steps.abstract_state.opt_state, steps.state_sharding.opt_state)
    temp = int(stats.temp_size_in_bytes)
    args = int(stats.argument_size_in_bytes)
    rows_per_device = cfg.data.batch_size // sharding.batch_shards(mesh.shape, rules)
    closed_form = activation_bytes(model.cfg, rows_per_device, cfg.data.seq_len, mesh.shape["tensor"])
    teacher = teacher_bytes(cfg, mesh, rules) if cfg.task.kind == "distill" else 0
    return {
        "preset": cfg.model.preset, "mesh": dict(mesh.shape), "rules": cfg.mesh.rules, "remat": cfg.model.remat,
        "dtype": cfg.model.dtype, "batch": cfg.data.batch_size, "seq_len": cfg.data.seq_len,
        "params": model_lib.count_params(steps.abstract_state.params),
        "param_bytes": params, "optimizer_bytes": opt, "argument_bytes": args, "xla_cpu_temp_bytes": temp,
        "activation_bytes": closed_form, "teacher_bytes": teacher,
        # Arguments are donated (the step updates them in place), so peak = state + gradients + activations
        # (+ a distillation teacher's params, an argument that is not donated).
        "total_bytes": 2 * params + opt + closed_form + teacher, "compile_s": compile_s,
    }


def teacher_bytes(cfg: config_dict.ConfigDict, mesh, rules) -> int:
    """Per-device bytes of a distill config's teacher params, placed by the same rules on the same mesh
    (its forward keeps nothing for the backward pass: only the params stay resident)."""
    teacher = teacher_lib.open_teacher(cfg.distill.teacher)
    boxed = jax.eval_shape(lambda k: model_lib.init_params(teacher.cfg, k, 1), jax.random.key(0))
    return sharding.per_device_bytes(nn.meta.unbox(boxed), sharding.param_shardings(boxed, rules, mesh))


def activation_bytes(mcfg: model_lib.GPT2Config, rows: int, seq_len: int, tensor: int = 1) -> int:
    """Closed-form activation bytes one device keeps for the backward pass (see the module docstring).

    Per layer, without remat: s*b*h*(10 + 24/t + 5*a*s/(h*t)) bytes at 16-bit activations (scaled for
    fp32); with full remat each layer keeps only its input, and one layer's set is rebuilt at a time;
    'dots' keeps the matmul outputs (q, k, v, attention output, MLP hidden, MLP output). The a*s/h
    term (attention scores) is dropped for flash attention. The logits add b*s*V*(activation
    bytes + 8) for the fp32 log-softmax and its gradient.
    """
    s, b, h, a, t = seq_len, rows, mcfg.n_embd, mcfg.n_head, tensor
    scale = jnp_itemsize(mcfg.dtype) / 2
    # Flash attention (cuDNN, chosen by 'auto' for half precision on GPU) keeps no s x s scores.
    flash = mcfg.attention == "cudnn" or (mcfg.attention == "auto" and mcfg.dtype != "float32")
    per_layer = s * b * h * (10 + 24 / t + (0 if flash else 5 * a * s / (h * t))) * scale
    layer_input = s * b * h * 2 * scale
    if mcfg.remat == "full":
        layers = mcfg.n_layer * layer_input + per_layer
    elif mcfg.remat == "dots":
        layers = mcfg.n_layer * (layer_input + s * b * (9 * h / t) * 2 * scale) + per_layer
    else:
        layers = mcfg.n_layer * per_layer
    logits = b * s * (mcfg.padded_vocab_size / t) * (2 * scale + 8)
    return int(layers + logits)


def jnp_itemsize(dtype: str) -> int:
    """Bytes per element of a config dtype name."""
    return {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]


def format_plan(rows: list[dict[str, Any]], device_gib: float) -> str:
    """A markdown table of plan_memory rows, with whether each fits device_gib per device."""
    head = ("| preset | params | mesh (data, fsdp, tensor) | remat | batch x T | params GiB | optimizer GiB "
            f"| activations GiB | XLA:CPU temp GiB | total GiB | fits {device_gib:g} GiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        mesh = ", ".join(str(n) for n in r["mesh"].values())
        total = r["total_bytes"] / GIB
        teacher = f" + teacher {r['teacher_bytes'] / GIB:.2f}" if r.get("teacher_bytes") else ""
        lines.append(f"| {r['preset']} | {r['params'] / 1e6:.0f}M | ({mesh}) | {r['remat']} | {r['batch']} x "
                     f"{r['seq_len']} | {r['param_bytes'] / GIB:.2f}{teacher} | {r['optimizer_bytes'] / GIB:.2f} | "
                     f"{r['activation_bytes'] / GIB:.2f} | {r['xla_cpu_temp_bytes'] / GIB:.2f} | {total:.2f} | {'yes' if total <= device_gib else 'no'} |")
    return "\n".join(lines)
