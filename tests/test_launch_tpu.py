"""launch/tpu_vm.sh: dry runs, missing arguments, and a run on fake workers through a fake gcloud
(the helpers and the fake python are tests/test_launch.py's)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_launch import LAUNCH, OVERRIDES, TPU, clean_env, run, tool_path, write_exe



def tpu_env(tmp_path, **extra):
    return clean_env(PATH=tool_path(tmp_path, "dirname", "basename"), **extra)  # no gcloud on this PATH


def test_tpu_dry_run(tmp_path):
    r = run(TPU, "--dry-run", "--tpu", "my-tpu", "--zone", "us-central2-b", "experiments/default.py", *OVERRIDES,
            cwd=tmp_path, env=tpu_env(tmp_path))
    assert r.returncode == 0, r.stderr
    [line] = r.stdout.splitlines()
    assert line.startswith("gcloud compute tpus tpu-vm ssh my-tpu --zone us-central2-b --worker=all --command ")
    argv = shlex.split(line)
    cmd = argv[argv.index("--command") + 1]
    assert cmd.startswith("set -o pipefail; cd gpt2_jax && . .venv/bin/activate && mkdir -p logs && ")
    assert cmd.endswith(" 2>&1 | tee logs/$(hostname).log")  # $(hostname) is left to the worker's shell
    train = cmd.split(" && ")[-1].split(" 2>&1 ")[0]
    assert shlex.split(train) == ["gpt2-jax", "train", "--config", "experiments/default.py", *OVERRIDES]


def test_tpu_dry_run_setup_and_collect(tmp_path):
    repo = LAUNCH.parent
    r = run(TPU, "--dry-run", "--tpu", "t1", "--zone", "z1", "--project", "p1", "--setup", "--collect-logs",
            repo / "experiments" / "default.py", cwd=tmp_path, env=tpu_env(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"tar -C {repo} ") and "--exclude=.git" in lines[0] and "--exclude=.venv" in lines[0]
    assert lines[1].startswith("gcloud compute tpus tpu-vm scp ") and lines[1].endswith(
        "t1:gpt2_jax_src.tar.gz --zone z1 --project p1 --worker=all")
    setup = shlex.split(lines[2])
    assert setup[:10] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t1", "--zone", "z1", "--project", "p1"]
    assert "python3 -m venv .venv" in setup[-1] and "pip install -q -e . 'jax[tpu]'" in setup[-1]
    # a config given by its absolute local path is passed relative to the repo root
    assert "gpt2-jax train --config experiments/default.py 2>&1" in shlex.split(lines[3])[-1]
    assert lines[4] == "mkdir -p ./launch_logs/t1"
    assert lines[5].startswith("gcloud compute tpus tpu-vm describe t1 --zone z1 --project p1 ")
    assert lines[6].startswith("gcloud compute tpus tpu-vm scp 't1:gpt2_jax/logs/*.log' ./launch_logs/t1/ ")
    assert len(lines) == 7


@pytest.mark.parametrize("drop", ["--tpu", "--zone", "CONFIG"])
def test_tpu_missing_arguments(tmp_path, drop):
    args = {"--tpu": ["--tpu", "t1"], "--zone": ["--zone", "z1"], "CONFIG": []}
    argv = ["--dry-run"] + [a for k, v in args.items() if k != drop for a in v]
    if drop != "CONFIG":
        argv.append("cfg.py")
    r = run(TPU, *argv, cwd=tmp_path, env=tpu_env(tmp_path))
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("tpu_vm.sh: error: missing ")
    assert (drop if drop != "CONFIG" else "CONFIG") in r.stderr


FAKE_GCLOUD = f"""#!{sys.executable}
# Stands in for gcloud: logs argv, runs `ssh --command` in $FAKE_HOME (the workers' home), copies
# for scp, answers `describe` with 2 workers.
import glob, json, os, shutil, subprocess, sys
args = sys.argv[1:]
home = os.environ["FAKE_HOME"]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
verb = args[3]
if verb == "ssh":
    sys.exit(subprocess.call(["bash", "-c", args[args.index("--command") + 1]], cwd=home))
if verb == "describe":
    print(2)
if verb == "scp":
    src, dst = [a for a in args[4:] if not a.startswith("-") and a not in ("z1", "p1")][:2]
    for path in glob.glob(os.path.join(home, src.split(":", 1)[1])):
        shutil.copy(path, dst)
"""


def test_tpu_runs_train_and_collects_logs(tmp_path):
    """The real path, with a fake gcloud: exit code of the training, remote $(hostname) log, collection."""
    bin_dir = Path(tool_path(tmp_path, "dirname", "basename", "mkdir", "tee", "hostname"))
    write_exe(bin_dir / "gcloud", FAKE_GCLOUD)
    home = tmp_path / "home"
    venv_bin = home / "gpt2_jax" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "activate").write_text(f'PATH="{venv_bin}:$PATH"\n')
    write_exe(venv_bin / "gpt2-jax", '#!/bin/bash\necho "train args: $*"\nexit 4\n')
    log = tmp_path / "gcloud.jsonl"
    r = run(TPU, "--tpu", "t1", "--zone", "z1", "--collect-logs", "--log-dir", tmp_path / "logs", "cfg.py",
            "--config.train.sample_prompt=HAMLET: To be", cwd=tmp_path,
            env=clean_env(PATH=str(bin_dir), FAKE_HOME=str(home), FAKE_GCLOUD_LOG=str(log)))
    assert r.returncode == 4, r.stderr  # the training's exit code, through `| tee`
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    collected = (tmp_path / "logs" / f"{host}.log").read_text()
    assert collected == "train args: train --config cfg.py --config.train.sample_prompt=HAMLET: To be\n"
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c[3] for c in calls] == ["ssh", "describe", "scp", "scp"]
    assert calls[2][-1] == "--worker=0" and calls[3][-1] == "--worker=1"
