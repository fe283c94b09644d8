"""Run in a child process with 8 virtual CPU devices by test_sharding.py; prints one JSON report.

(The device count is fixed when JAX starts, so the multi-device cases cannot share the pytest
process, which keeps a single device for everything else.)
"""

import json
import re

import jax
import numpy as np
import optax

from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.optim import optimizers as optim
from gpt2_jax.optim import schedules
from gpt2_jax.parallel import sharding
from gpt2_jax.train import steps as train

MESHES = [(1, 1, 1), (8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 2, 2)]


def steps_on(shape, optimizer_name, rules_name="fsdp+tp"):
    cfg = model_lib.GPT2Config(vocab_size=256, n_positions=64, n_layer=2, n_head=8, n_embd=64)
    model = model_lib.GPT2(cfg)
    schedule = schedules.make_schedule("constant", 1e-3 if optimizer_name == "adamw" else 0.1, 10, 0)
    optimizer = optim.make_optimizer(lr=schedule) if optimizer_name == "adamw" else optax.sgd(schedule)
    devices = jax.devices()[:1] if shape == (1, 1, 1) else jax.devices()
    mesh = sharding.make_mesh(sharding.MeshSpec(ici=shape), devices)
    return train.make_steps(model, optimizer, schedule, mesh, sharding.logical_rules(rules_name), 0, 32)


def two_steps(steps, batches, train_step=None):
    """Loss and grad norm of each step, and the params after each step (host numpy leaves)."""
    state, losses, norms, params = steps.init(), [], [], []
    for b in batches:
        batch = sharding.global_batch(steps.train_batch_sharding, b.shape, lambda rows: b[:, rows], batch_dim=1)
        state, metrics = (train_step or steps.train)(state, batch)
        losses.append(float(metrics["loss"]))
        norms.append(float(metrics["grad_norm"]))
        params.append(jax.tree.leaves(jax.device_get(state.params)))
    return losses, norms, params


def max_err(tree, ref, atol=1e-7):
    """Largest elementwise |a - b| / (|b| + atol / rtol) in units of rtol = 1e-5 (<= 1: within tolerance)."""
    return max(float(np.max(np.abs(a - b) / (1e-5 * np.abs(b) + atol))) for a, b in zip(tree, ref))


def norm_rel(tree, ref):
    """||a - b|| / ||b|| over the whole tree."""
    diff = sum(float(np.sum((a - b) ** 2)) for a, b in zip(tree, ref))
    return (diff / sum(float(np.sum(b ** 2)) for b in ref)) ** 0.5


def abstract_args(steps):
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         steps.abstract_state, steps.state_sharding)
    batch = jax.ShapeDtypeStruct((1, 16, 33), "int32", sharding=steps.train_batch_sharding)
    return state, batch


def compare(run, ref):
    losses, norms, params = run
    return {"losses": losses, "grad_norms": norms, "ref_losses": ref[0], "ref_grad_norms": ref[1],
            "param_err": [max_err(p, r) for p, r in zip(params, ref[2])],
            "param_norm_rel": [norm_rel(p, r) for p, r in zip(params, ref[2])]}


def sharded_decode():
    """Greedy KV-cache decoding on mesh (2, 1, 4) (rows over data, heads over tensor) vs one device."""
    from gpt2_jax.generate import decode as generate
    cfg = model_lib.GPT2Config(vocab_size=256, n_positions=64, n_layer=2, n_head=8, n_embd=64)
    model = model_lib.GPT2(cfg)
    params = train.strip_boxes(model_lib.init_params(cfg, jax.random.key(3)))
    prompts = [[1, 2, 3], list(range(40, 60)), [7], [9, 9, 9, 9, 9]]
    single = generate.generate(model, params, prompts, 24, temperature=0, return_logprobs=True)
    mesh = sharding.make_mesh(sharding.MeshSpec(ici=(2, 1, 4)))
    rules = sharding.logical_rules("fsdp+tp")
    sharded_params = generate.shard_params(model, params, mesh, rules)
    sharded = generate.generate(model, sharded_params, prompts, 24, temperature=0, return_logprobs=True,
                                mesh=mesh, rules=rules)
    spec = str(sharded_params["h_0"]["attn"]["qkv_kernel"].sharding.spec)
    diff = max(abs(a - b) for r1, r2 in zip(single.logprobs, sharded.logprobs) for a, b in zip(r1, r2))
    return {"same_tokens": single.tokens == sharded.tokens, "logprob_max_diff": diff, "qkv_spec": spec}


def main():
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (1, 16, 33)).astype(np.int32) for _ in range(2)]
    report = {"devices": jax.device_count(), "sgd": {}, "adamw": {}, "argument_bytes": {}}
    ref = None
    for shape in MESHES:  # SGD: the update is the gradient itself, so this compares gradients exactly
        steps = steps_on(shape, "sgd")
        run = two_steps(steps, batches)
        ref = ref or run
        report["sgd"][str(shape)] = compare(run, ref)
        report["sgd"][str(shape)]["qkv_spec"] = str(steps.state_sharding.params["h_0"]["attn"]["qkv_kernel"].spec)
        if shape == (2, 2, 2):
            text = steps.train.lower(*abstract_args(steps)).as_text()
            report["constraints"] = [line.strip()[:300] for line in text.splitlines()
                                     if re.search(r"sharding_constraint|@Sharding", line)]
    ref = None
    for shape in ((8, 1, 1), (1, 8, 1)):  # AdamW: replicated vs fsdp=8 params and optimizer state
        steps = steps_on(shape, "adamw")
        compiled = steps.train.lower(*abstract_args(steps)).compile()
        report["argument_bytes"][str(shape)] = int(compiled.memory_analysis().argument_size_in_bytes)
        run = two_steps(steps, batches, compiled)
        ref = ref or run
        report["adamw"][str(shape)] = compare(run, ref)
    report["decode"] = sharded_decode()
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    main()
