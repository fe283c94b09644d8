"""Real multi-process training: launch/local.sh runs 2 processes x 2 CPU devices on 127.0.0.1, and
its run equals a 1-process x 4-device run of the same config; its checkpoint loads in one process."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from gpt2_jax import api

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT = str(ROOT / "experiments" / "default.py")
TEXT = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.\n"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(tmp_path, run):
    return [f"--config.data.source=text:{tmp_path}/corpus/{{split}}/*.txt", f"--config.data.data_dir={tmp_path}/data",
            f"--config.train.run_dir={tmp_path}/{run}", "--config.model.preset=nano", "--config.data.seq_len=32",
            "--config.data.batch_size=8", "--config.eval.batch_size=8", "--config.train.steps=6",
            "--config.train.log_every=1", "--config.train.eval_every=3", "--config.checkpoint.every=3",
            "--config.optim.warmup_steps=2", "--config.train.sample_tokens=8", "--config.train.tensorboard=false",
            "--config.train.progress=false"]


def _losses(run_dir):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r], [r["val_loss"] for r in rows if "val_loss" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("mp")
    for split, n in (("train", 60), ("validation", 6), ("test", 6)):
        (tmp_path / "corpus" / split).mkdir(parents=True)
        (tmp_path / "corpus" / split / "a.txt").write_text(TEXT * n)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    # Prepare the token shards once, so both runs below only train.
    one = subprocess.run([sys.executable, "-m", "gpt2_jax.cli", "train", "--config", DEFAULT,
                          *_overrides(tmp_path, "one")],
                         env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(["bash", str(ROOT / "launch" / "local.sh"), "--port", str(_free_port()),
                          "--log-dir", str(tmp_path / "logs"), "2", DEFAULT, *_overrides(tmp_path, "two")],
                         env={**env, "PYTHON": sys.executable}, capture_output=True, text=True, cwd=tmp_path,
                         timeout=600)
    logs = "".join(p.read_text()[-1500:] for p in sorted((tmp_path / "logs").glob("*.log")))
    assert two.returncode == 0, two.stderr[-2000:] + logs
    return tmp_path, one.stdout, two.stdout, logs


@pytest.mark.slow  # the fixture trains a 4-device run and a 2-process run: 37-52 s on 2 cores
def test_two_processes_train_like_one(runs):
    tmp_path, _, out, logs = runs
    assert "mesh: data=4 fsdp=1 tensor=1 over 4 cpu devices in 2 process(es)" in out
    assert "cluster: 2 processes (flags), 4 devices, 2 per process" in out
    train_one, val_one = _losses(tmp_path / "one")
    train_two, val_two = _losses(tmp_path / "two")
    assert len(train_one) == 6 and len(val_one) == 2
    np.testing.assert_allclose(train_two, train_one, rtol=1e-5)
    np.testing.assert_allclose(val_two, val_one, rtol=1e-5)
    r1 = json.loads((tmp_path / "one" / "results.json").read_text())
    r2 = json.loads((tmp_path / "two" / "results.json").read_text())
    assert r2["test_loss"] == pytest.approx(r1["test_loss"], rel=1e-5)


@pytest.mark.slow
def test_only_process_zero_writes(runs):
    tmp_path, _, out, logs = runs
    assert out.count("validation: loss") == 1 and "sample:" in out
    process_1 = (tmp_path / "logs" / "process_1.log").read_text()
    assert "validation: loss" not in process_1 and "config (" not in process_1
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 6 + 2


@pytest.mark.slow
def test_multi_process_checkpoint_loads_in_one_process(runs):
    tmp_path = runs[0]
    two, one = api.load(tmp_path / "two"), api.load(tmp_path / "one")
    assert two.step == one.step == 6
    a, b = np.concatenate([np.ravel(x) for x in jax_leaves(two.params)]), \
        np.concatenate([np.ravel(x) for x in jax_leaves(one.params)])
    assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b)
    assert two.perplexity(TEXT)["ppl"] == pytest.approx(one.perplexity(TEXT)["ppl"], rel=1e-4)


def jax_leaves(tree):
    import jax
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_unreachable_coordinator_is_one_line(tmp_path):
    port = _free_port()
    proc = subprocess.run([sys.executable, "-m", "gpt2_jax.cli", "train", "--config", DEFAULT,
                           "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "1",
                           "--coordinator-timeout", "2"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpt2-jax: error: process 1 of 2 could not reach the coordinator "
                                                   f"127.0.0.1:{port}"), proc.stderr


def test_mesh_that_does_not_fit_fails_before_compiling(tmp_path):
    (tmp_path / "corpus" / "train").mkdir(parents=True)
    (tmp_path / "corpus" / "train" / "a.txt").write_text(TEXT * 20)
    proc = subprocess.run([sys.executable, "-m", "gpt2_jax.cli", "train", "--config", DEFAULT, "--quiet",
                           f"--config.data.source=text:{tmp_path}/corpus/{{split}}/*.txt",
                           f"--config.data.data_dir={tmp_path}/data", "--config.data.eval_split=",
                           "--config.data.test_split=", "--config.mesh.data=3"],
                          env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("gpt2-jax: error: mesh (data=3, fsdp=1, tensor=1) x dcn (data=1, fsdp=1, "
                                   "tensor=1) needs 3 devices but 2 are available; set mesh sizes whose product "
                                   "is 2 (or -1 for one of them)")
