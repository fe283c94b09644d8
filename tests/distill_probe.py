"""Run in a child process with 4 virtual CPU devices by test_distill.py; prints one JSON report: a
distillation step (a 4-block teacher, a 2-block student copied from teacher blocks 1 and 3, a hidden
loss) trained on 1 device and on a (1, 2, 2) mesh (fsdp x tensor)."""

import json

import jax
import numpy as np

from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.optim import optimizers
from gpt2_jax.parallel import sharding
from gpt2_jax.posttrain import distill
from gpt2_jax.train import steps as step_lib
from gpt2_jax.train import tasks

T = 16
STUDENT = model_lib.GPT2Config(vocab_size=61, n_positions=32, n_layer=2, n_head=4, n_embd=64, vocab_multiple=16)
TEACHER = model_lib.GPT2Config(vocab_size=61, n_positions=32, n_layer=4, n_head=4, n_embd=64, vocab_multiple=8)
TEACHER_PARAMS = jax.device_get(step_lib.strip_boxes(model_lib.init_params(TEACHER, jax.random.key(7), T)))


def read(target):
    return jax.tree.map(lambda x, t: jax.device_put(np.asarray(x, t.dtype), t.sharding), TEACHER_PARAMS, target)


TASK = distill.DistillTask(loss_chunk=5, teacher_cfg=TEACHER, read_teacher=read, alpha=0.7, temperature=2.0,
                           hidden_weight=0.3, layers=(1, 3), hidden_pairs=((0, 1), (1, 3)))


def run(shape):
    opt = optimizers.make_optimizer(lr=1e-2)
    devices = jax.devices()[:1] if shape == (1, 1, 1) else jax.devices()
    mesh = sharding.make_mesh(sharding.MeshSpec(ici=shape), devices)
    steps = step_lib.make_steps(model_lib.GPT2(STUDENT), opt, lambda s: 1e-2, mesh, sharding.logical_rules("fsdp+tp"),
                                0, T, task=TASK)
    rng = np.random.default_rng(0)
    state, out = steps.init(), {"losses": [], "kl": []}
    for _ in range(2):
        local = {"tokens": rng.integers(0, 61, (1, 8, T + 1)).astype(np.int32)}
        batch = tasks.global_batch(steps.train_batch_sharding, 8, lambda rows: {k: v[:, rows] for k, v in local.items()},
                                   batch_dim=1)
        state, metrics = steps.train(state, batch)
        out["losses"].append(float(metrics["loss"]))
        out["kl"].append(float(metrics["kl"]))
    out["qkv"] = np.asarray(jax.device_get(state.params["h_1"]["attn"]["qkv_kernel"])).ravel()[:64].tolist()
    out["teacher_spec"] = str(steps.frozen["h_0"]["attn"]["qkv_kernel"].sharding.spec)
    out["student_spec"] = str(state.params["h_0"]["attn"]["qkv_kernel"].sharding.spec)
    return out


meshes = {str(s): run(s) for s in ((1, 1, 1), (1, 2, 2))}
print("REPORT " + json.dumps({"devices": jax.device_count(), "meshes": meshes}))
