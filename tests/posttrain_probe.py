"""Run in a child process with 8 virtual CPU devices by test_posttrain.py; prints one JSON report:
a classifier with LoRA adapters and a 10x head trained on 1 device and on a (2, 2, 2) mesh."""

import json

import jax
import numpy as np

from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.model import lora as lora_lib
from gpt2_jax.optim import groups, optimizers
from gpt2_jax.parallel import sharding
from gpt2_jax.posttrain import build, classify
from gpt2_jax.train import steps as step_lib
from gpt2_jax.train import tasks

CFG = model_lib.GPT2Config(vocab_size=97, n_positions=32, n_layer=2, n_head=4, n_embd=64)
TASK = classify.ClassifyTask(("a", "b", "c"), pad_id=96, aux_lm_weight=0.5, lora=lora_lib.LoraSpec(2, 4.0))


def run(shape):
    labels = groups.param_labels(build.param_shapes(CFG, TASK), multipliers=[("score", 10.0)],
                                 always_frozen=build.ALIASES["body"])
    opt = optimizers.make_optimizer(lr=1e-2, labels=labels)
    devices = jax.devices()[:1] if shape == (1, 1, 1) else jax.devices()
    mesh = sharding.make_mesh(sharding.MeshSpec(ici=shape), devices)
    steps = step_lib.make_steps(model_lib.GPT2(CFG), opt, lambda s: 1e-2, mesh, sharding.logical_rules("fsdp+tp"),
                                0, 16, task=TASK, trainable=groups.trainable_mask(labels))
    rng = np.random.default_rng(0)
    state, losses = steps.init(), []
    for _ in range(2):
        local = {"tokens": rng.integers(0, 96, (1, 8, 16)).astype(np.int32),
                 "lengths": rng.integers(2, 17, (1, 8)).astype(np.int32),
                 "labels": rng.integers(0, 3, (1, 8)).astype(np.int32)}
        batch = tasks.global_batch(steps.train_batch_sharding, 8, lambda rows: {k: v[:, rows] for k, v in local.items()},
                                   batch_dim=1)
        state, metrics = steps.train(state, batch)
        losses.append(float(metrics["loss"]))
    a = state.params["lora"]["h_0"]["attn"]["qkv_kernel"]["a"]
    mu = state.opt_state[1].inner_states["lr_x1"].inner_state[0].mu["lora"]["h_0"]["attn"]["qkv_kernel"]["a"]
    return {"losses": losses, "a_spec": str(a.sharding.spec), "mu_spec": str(mu.sharding.spec),
            "b_spec": str(state.params["lora"]["h_0"]["attn"]["qkv_kernel"]["b"].sharding.spec)}


print("REPORT " + json.dumps({"devices": jax.device_count(), "one": run((1, 1, 1)), "mesh": run((2, 2, 2))}))
