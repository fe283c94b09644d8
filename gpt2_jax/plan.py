"""Memory planning without the hardware: compile a config's train step ahead of time for a mesh
of virtual devices and report what one device must hold.

Parameter and optimizer bytes are exact (shard shapes of the real layout). Activation bytes
are the compiled step's temporary buffers as XLA:CPU plans them; a GPU or TPU compiler fuses
differently, so read them as an estimate of the right order.
"""

from __future__ import annotations

import time
from typing import Any

import jax
from ml_collections import config_dict

from gpt2_jax import config as config_lib
from gpt2_jax import experiment, sharding, train
from gpt2_jax import model as model_lib
from gpt2_jax.data import tokenizers

GIB = 1024**3


def plan_memory(cfg: config_dict.ConfigDict, devices=None) -> dict[str, Any]:
    """Per-device bytes of params, optimizer state, batch and activations for cfg's train step."""
    vocab = tokenizers.make_tokenizer(cfg.data.tokenizer).vocab_size
    model = model_lib.GPT2(config_lib.model_config(cfg, vocab))
    schedule, optimizer = experiment.optimizer_from_config(cfg)
    mesh = sharding.make_mesh(sharding.MeshSpec.from_config(cfg.mesh), devices)
    rules = sharding.logical_rules(cfg.mesh.rules)
    sharding.check_layout(mesh.shape, rules, model.cfg.n_head, model.cfg.n_embd, {"data.batch_size": cfg.data.batch_size})
    steps = train.make_steps(model, optimizer, schedule, mesh, rules, 0, cfg.data.seq_len, cfg.optim.label_smoothing)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         steps.abstract_state, steps.state_sharding)
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
    return {
        "preset": cfg.model.preset, "mesh": dict(mesh.shape), "rules": cfg.mesh.rules, "remat": cfg.model.remat,
        "dtype": cfg.model.dtype, "batch": cfg.data.batch_size, "seq_len": cfg.data.seq_len,
        "params": model_lib.count_params(steps.abstract_state.params),
        "param_bytes": params, "optimizer_bytes": opt, "argument_bytes": args, "activation_bytes": temp,
        # Arguments are donated (the step updates them in place), so peak = arguments + temporaries.
        "total_bytes": args + temp, "compile_s": compile_s,
    }


def format_plan(rows: list[dict[str, Any]], device_gib: float) -> str:
    """A markdown table of plan_memory rows, with whether each fits device_gib per device."""
    head = ("| preset | params | mesh (data, fsdp, tensor) | remat | batch x T | params GiB | optimizer GiB "
            f"| activations GiB | total GiB | fits {device_gib:g} GiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        mesh = ", ".join(str(n) for n in r["mesh"].values())
        total = r["total_bytes"] / GIB
        lines.append(f"| {r['preset']} | {r['params'] / 1e6:.0f}M | ({mesh}) | {r['remat']} | {r['batch']} x "
                     f"{r['seq_len']} | {r['param_bytes'] / GIB:.2f} | {r['optimizer_bytes'] / GIB:.2f} | "
                     f"{r['activation_bytes'] / GIB:.2f} | {total:.2f} | {'yes' if total <= device_gib else 'no'} |")
    return "\n".join(lines)
