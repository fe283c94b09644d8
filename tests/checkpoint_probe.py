"""Run by test_checkpoint.py in a child process with 8 virtual CPU devices; prints one JSON report.

`write RUN_DIR OVERRIDE...`: train a few steps on an fsdp=4 x tensor=2 mesh, checkpointing into
RUN_DIR, then save the params it holds and its logits on fixed ids (expected.npz).
`restore RUN_DIR OVERRIDE...`: restore that checkpoint onto a (2, 2, 2) mesh, and load() it over
all 8 devices, and compare.
"""

import json
import pathlib
import sys

import jax
import numpy as np

from gpt2_jax import api
from gpt2_jax import config as config_lib
from gpt2_jax.checkpoint import manager as ckpt
from gpt2_jax.jobs import pretrain
from gpt2_jax.parallel import sharding
from gpt2_jax.train import loop

ROOT = pathlib.Path(__file__).resolve().parents[1]
IDS = np.arange(3, 35, dtype=np.int32)[None]


def flat_params(params) -> dict[str, np.ndarray]:
    """{'h_0/attn/qkv_kernel': array} on the host."""
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
    return {"/".join(str(k.key) for k in path): np.asarray(v) for path, v in leaves}


def sharded_logits(comps, steps, params) -> np.ndarray:
    """Logits of IDS computed on the mesh the params live on."""
    forward = sharding.with_mesh(jax.jit(lambda p, x: comps.model.apply({"params": p}, x)), steps.mesh, steps.rules)
    return np.asarray(forward(params, IDS))


def main():
    mode, run_dir, overrides = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
    mesh = ["mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2"] if mode == "write" else \
        ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
    cfg = config_lib.load_config(str(ROOT / "experiments" / "default.py"), [*overrides, *mesh])
    comps = pretrain.build(cfg, echo=lambda _: None)
    report = {"devices": jax.device_count()}
    if mode == "write":
        out = loop.fit(comps, echo=lambda _: None)
        params = out["state"].params
        report["qkv_spec"] = str(params["h_0"]["attn"]["qkv_kernel"].sharding.spec)
        np.savez(run_dir / "expected.npz", logits=sharded_logits(comps, out["steps"], params),
                 **flat_params(params))
    else:
        steps = loop.make_steps(comps, echo=lambda _: None)
        manager = ckpt.make_manager(run_dir, read_only=True)
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                              steps.abstract_state, steps.state_sharding)
        state = ckpt.restore_state(manager, manager.latest_step(), target)
        expected = np.load(run_dir / "expected.npz")
        got = flat_params(state.params)
        report["qkv_spec"] = str(state.params["h_0"]["attn"]["qkv_kernel"].sharding.spec)
        report["identical"] = sorted(got) == sorted(k for k in expected if k != "logits") and all(
            np.array_equal(v, expected[k]) for k, v in got.items())
        report["logits_max_diff"] = float(np.max(np.abs(sharded_logits(comps, steps, state.params) -
                                                        expected["logits"])))
        m = api.load(run_dir)
        report["load_mesh"] = m.summary().split("mesh ")[1].split(";")[0]
        report["load_logits_max_diff"] = float(np.max(np.abs(np.asarray(m.logits(IDS[0])) - expected["logits"])))
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    main()
