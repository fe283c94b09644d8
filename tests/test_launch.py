"""The launch scripts in launch/: dry runs, usage errors, and failure handling with fake programs.

Nothing here needs the network, SLURM or gcloud: the fakes (a python that exits with a chosen code,
an srun that runs the task command once per task, a gcloud that runs the remote command in a
directory standing in for the workers' home) are small scripts written into tmp_path.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "launch"
LOCAL, SLURM, TPU = LAUNCH / "local.sh", LAUNCH / "slurm.sbatch", LAUNCH / "tpu_vm.sh"
BASH = shutil.which("bash")
OVERRIDES = ["--config.train.steps=5", "--config.train.sample_prompt=HAMLET: To be", "--config.train.run_dir=it's here"]


def run(script, *args, env=None, cwd=None, timeout=20):
    return subprocess.run([BASH, str(script), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def write_exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def tool_path(tmp_path: Path, *tools: str) -> str:
    """A PATH holding only `tools` (symlinked), so e.g. scontrol and gcloud are surely absent."""
    bin_dir = tmp_path / "toolbin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("bash", *tools):
        link = bin_dir / tool
        if not link.exists():
            link.symlink_to(shutil.which(tool))
    return str(bin_dir)


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in ("PYTHON", "TASKS_PER")}
    env.update(extra)
    return env


# A fake interpreter: records its argv as JSON in $FAKE_OUT/argv_<process id>.json and, for
# `--process-id 1`, exits with $FAKE_FAIL_CODE (default 3). It is called as
# `PYTHON -m gpt2_jax.cli train ... --process-id I ...`.
FAKE_PYTHON = f"""#!{sys.executable}
import json, os, sys, time
args = sys.argv[1:]
pid = args[args.index("--process-id") + 1]
out = os.environ.get("FAKE_OUT")
if out:
    with open(os.path.join(out, f"argv_{{pid}}.json"), "w") as f:
        json.dump({{"argv": args, "env": {{k: os.environ.get(k) for k in ("JAX_PLATFORMS", "XLA_FLAGS", "CUDA_VISIBLE_DEVICES")}}}}, f)
    with open(os.path.join(out, f"pid_{{pid}}"), "w") as f:
        f.write(str(os.getpid()))
print(f"fake process {{pid}} starts", flush=True)
if os.environ.get("FAKE_LOST"):  # 1 is killed; 0 notices at once and stops, as the watchdog does
    if pid == "1":
        time.sleep(0.5)
        os.kill(os.getpid(), 9)
    while not os.path.exists(os.path.join(out, "pid_1")):
        time.sleep(0.01)
    victim = int(open(os.path.join(out, "pid_1")).read())
    def gone(p):
        try:
            return open(f"/proc/{{p}}/stat").read().split()[2] in "ZX"
        except OSError:
            return True
    while not gone(victim):
        time.sleep(0.01)
    print("gpt2-jax: error: lost process 1 of 2: its connection closed", file=sys.stderr, flush=True)
    sys.exit(2)
if pid == "1":
    print(f"fake process {{pid}} fails", file=sys.stderr, flush=True)
    sys.exit(int(os.environ.get("FAKE_FAIL_CODE", "3")))
if os.environ.get("FAKE_HANG"):
    time.sleep(60)
print(f"fake process {{pid}} done", flush=True)
"""


@pytest.mark.parametrize("script", [LOCAL, SLURM, TPU], ids=lambda p: p.name)
def test_scripts_parse(script):
    r = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_scripts_executable():
    for script in (LOCAL, TPU):
        assert os.access(script, os.X_OK), f"chmod +x {script}"


# ---------------------------------------------------------------- local.sh


def test_local_dry_run_cpu(tmp_path):
    (tmp_path / "cfg.py").write_text("")
    r = run(LOCAL, "--dry-run", "--devices-per-process", 3, 2, "cfg.py", *OVERRIDES, cwd=tmp_path, env=clean_env())
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2
    ports = set()
    for i, line in enumerate(lines):
        argv = shlex.split(line)
        coordinator = argv[argv.index("--coordinator") + 1]
        host, port = coordinator.split(":")
        assert host == "127.0.0.1" and 0 < int(port) < 65536
        ports.add(port)
        assert argv == ["JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_force_host_platform_device_count=3",
                        "python3", "-m", "gpt2_jax.cli", "train", "--config", "cfg.py", "--coordinator", coordinator,
                        "--num-processes", "2", "--process-id", str(i), *OVERRIDES]
    assert len(ports) == 1
    assert not (tmp_path / "launch_logs").exists()  # a dry run starts nothing


def test_local_dry_run_gpu_and_port(tmp_path):
    (tmp_path / "cfg.py").write_text("")
    r = run(LOCAL, "--dry-run", "--platform", "gpu", "--port", 23456, 3, "cfg.py", cwd=tmp_path,
            env=clean_env(PYTHON="/opt/venv/bin/python"))
    assert r.returncode == 0, r.stderr
    argvs = [shlex.split(line) for line in r.stdout.splitlines()]
    assert [a[0] for a in argvs] == ["CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1", "CUDA_VISIBLE_DEVICES=2"]
    assert all(a[1] == "/opt/venv/bin/python" and "127.0.0.1:23456" in a for a in argvs)


@pytest.mark.parametrize("args", [["0", "cfg.py"], ["x", "cfg.py"], ["2", "missing.py"], ["2"],
                                  ["--bogus", "2", "cfg.py"], ["--platform", "tpu", "2", "cfg.py"]],
                         ids=["n0", "n-not-int", "config-missing", "no-config", "unknown-option", "bad-platform"])
def test_local_usage_errors(tmp_path, args):
    (tmp_path / "cfg.py").write_text("")
    r = run(LOCAL, *args, cwd=tmp_path, env=clean_env())
    assert r.returncode == 2
    assert r.stderr.splitlines() == error_lines(r.stderr) and len(error_lines(r.stderr)) == 1, r.stderr
    assert r.stderr.startswith("local.sh: error: ")
    assert not (tmp_path / "launch_logs").exists()


def test_local_help():
    r = run(LOCAL, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout and "--dry-run" in r.stdout


def test_local_all_succeed(tmp_path):
    (tmp_path / "cfg.py").write_text("")
    fake = write_exe(tmp_path / "fake_python", FAKE_PYTHON)
    out = tmp_path / "out"
    out.mkdir()
    r = run(LOCAL, "--log-dir", "my logs", 2, "cfg.py", "--config.train.sample_prompt=HAMLET: To be", cwd=tmp_path,
            env=clean_env(PYTHON=str(fake), FAKE_OUT=str(out), FAKE_FAIL_CODE="0"))
    assert r.returncode == 0, r.stderr
    for i in (0, 1):
        rec = json.loads((out / f"argv_{i}.json").read_text())
        assert rec["argv"][-3:] == ["--process-id", str(i), "--config.train.sample_prompt=HAMLET: To be"]
        assert rec["env"]["JAX_PLATFORMS"] == "cpu"
        assert rec["env"]["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
        assert f"fake process {i} starts" in (tmp_path / "my logs" / f"process_{i}.log").read_text()
    assert "fake process 0 done" in r.stdout  # process 0's log is shown on the terminal


def test_local_failure_reports_process_and_log(tmp_path):
    (tmp_path / "cfg.py").write_text("")
    fake = write_exe(tmp_path / "fake_python", FAKE_PYTHON)
    r = run(LOCAL, 2, "cfg.py", cwd=tmp_path, env=clean_env(PYTHON=str(fake)))
    assert r.returncode == 3, r.stderr
    errors = error_lines(r.stderr)
    assert len(errors) == 1, r.stderr
    assert "process 1 " in errors[0] and "code 3" in errors[0] and "launch_logs/process_1.log" in errors[0]
    assert "fake process 1 fails" in r.stderr  # the end of the failed log is shown
    for i in (0, 1):
        assert (tmp_path / "launch_logs" / f"process_{i}.log").exists()


def test_local_failure_stops_the_others(tmp_path):
    (tmp_path / "cfg.py").write_text("")
    fake = write_exe(tmp_path / "fake_python", FAKE_PYTHON)
    out = tmp_path / "out"
    out.mkdir()
    t0 = time.monotonic()
    r = run(LOCAL, 3, "cfg.py", cwd=tmp_path, env=clean_env(PYTHON=str(fake), FAKE_OUT=str(out), FAKE_HANG="1",
                                                           FAKE_FAIL_CODE="5"))
    assert r.returncode == 5, r.stderr
    assert time.monotonic() - t0 < 10  # the hanging processes 0 and 2 got SIGTERM, not a 60 s wait
    for i in (0, 2):
        pid = int((out / f"pid_{i}").read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_local_reports_the_killed_process_not_the_one_that_stopped_because_it_lost_it(tmp_path):
    (tmp_path / "cfg.py").write_text("")
    fake = write_exe(tmp_path / "fake_python", FAKE_PYTHON)
    out = tmp_path / "out"
    out.mkdir()
    r = run(LOCAL, 2, "cfg.py", cwd=tmp_path, env=clean_env(PYTHON=str(fake), FAKE_OUT=str(out), FAKE_LOST="1"))
    assert r.returncode == 137, r.stderr  # both are gone within one poll; the cause is process 1
    assert "process 1 of 2 exited with code 137" in error_lines(r.stderr)[0]


# ---------------------------------------------------------------- slurm.sbatch


def slurm_env(tmp_path, nodelist, **extra):
    return clean_env(PATH=tool_path(tmp_path), SLURM_JOB_NODELIST=nodelist, SLURM_NTASKS="16",
                     SLURM_JOB_ID="4242", **extra)


def srun_inner(stdout: str) -> tuple[list[str], str]:
    """The srun line of a dry run, and the per-task script given to `bash -c`."""
    [line] = [line for line in stdout.splitlines() if line.startswith("srun ")]
    argv = shlex.split(line)
    assert argv[:2] == ["srun", "--kill-on-bad-exit=1"]
    assert argv[-3:-1] == ["bash", "-c"]
    return argv, argv[-1]


@pytest.mark.parametrize("nodelist", ["node[01-02]", "node01,node02", "node[01-02,07]-ib", "node01"])
@pytest.mark.parametrize("mode", ["gpu", "node"])
def test_slurm_dry_run(tmp_path, nodelist, mode):
    (tmp_path / "cfg.py").write_text("")
    r = run(SLURM, "--dry-run", "cfg.py", *OVERRIDES, cwd=tmp_path, env=slurm_env(tmp_path, nodelist, TASKS_PER=mode))
    assert r.returncode == 0, r.stderr
    first = "node01-ib" if nodelist.endswith("-ib") else "node01"
    assert f"coordinator: {first}:12355" in r.stdout
    assert "tasks: 16" in r.stdout and f"TASKS_PER={mode}" in r.stdout
    _, inner = srun_inner(r.stdout)
    assert f"--coordinator {first}:12355 --num-processes 16 --process-id \"$SLURM_PROCID\"" in inner
    assert ("--local-device-ids \"$SLURM_LOCALID\"" in inner) == (mode == "gpu")
    assert "--local-device-ids" in inner or mode == "node"


def test_slurm_task_command_expands_per_task(tmp_path):
    """Run the printed per-task script as srun would, for task 11 (local id 3): argv is exact."""
    (tmp_path / "cfg.py").write_text("")
    fake = write_exe(tmp_path / "fake_python", FAKE_PYTHON)
    r = run(SLURM, "--dry-run", "cfg.py", *OVERRIDES, cwd=tmp_path,
            env=slurm_env(tmp_path, "gpu[3-4]", COORDINATOR_PORT="23456", PYTHON=str(fake)))
    assert r.returncode == 0, r.stderr
    _, inner = srun_inner(r.stdout)
    out = tmp_path / "out"
    out.mkdir()
    task = subprocess.run([BASH, "-c", inner], env=clean_env(SLURM_PROCID="11", SLURM_LOCALID="3", FAKE_OUT=str(out)),
                          cwd=tmp_path, capture_output=True, text=True, timeout=20)
    assert task.returncode == 0, task.stderr
    argv = json.loads((out / "argv_11.json").read_text())["argv"]
    assert argv == ["-m", "gpt2_jax.cli", "train", "--config", "cfg.py", "--coordinator", "gpu3:23456",
                    "--num-processes", "16", "--process-id", "11", "--local-device-ids", "3", *OVERRIDES]


def test_slurm_runs_srun_inside_allocation(tmp_path):
    """Inside a (fake) allocation the script execs srun; a fake srun runs the task script per task."""
    (tmp_path / "cfg.py").write_text("")
    fake = write_exe(tmp_path / "fake_python", FAKE_PYTHON)
    bin_dir = Path(tool_path(tmp_path))
    write_exe(bin_dir / "srun", f"""#!{sys.executable}
import os, subprocess, sys
args = sys.argv[1:]
while args[0].startswith("-"):
    args.pop(0)
codes = [subprocess.call(args, env={{**os.environ, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i % 8)}})
         for i in range(int(os.environ["SLURM_NTASKS"]))]
sys.exit(max(codes))
""")
    out = tmp_path / "out"
    out.mkdir()
    env = slurm_env(tmp_path, "node[07-08]", PYTHON=str(fake), FAKE_OUT=str(out), FAKE_FAIL_CODE="0")
    env["SLURM_NTASKS"] = "2"
    r = run(SLURM, "cfg.py", "--config.train.steps=5", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    for i in (0, 1):
        argv = json.loads((out / f"argv_{i}.json").read_text())["argv"]
        assert argv[argv.index("--process-id") + 1] == str(i)
        assert argv[argv.index("--local-device-ids") + 1] == str(i)
        assert argv[argv.index("--coordinator") + 1] == "node07:12355"
        assert argv[-1] == "--config.train.steps=5"


def test_slurm_dry_run_without_slurm_env_prints_placeholders(tmp_path):
    (tmp_path / "cfg.py").write_text("")
    r = run(SLURM, "--dry-run", "cfg.py", cwd=tmp_path, env=clean_env(PATH=tool_path(tmp_path)))
    assert r.returncode == 0, r.stderr
    _, inner = srun_inner(r.stdout)
    assert "<first-node>:12355" in inner and "<SLURM_NTASKS>" in inner


def test_slurm_outside_allocation_is_an_error(tmp_path):
    (tmp_path / "cfg.py").write_text("")
    r = run(SLURM, "cfg.py", cwd=tmp_path, env=clean_env(PATH=tool_path(tmp_path)))
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1 and "error:" in r.stderr and "submit with sbatch" in r.stderr
    assert r.stdout == ""


def test_slurm_header_defaults():
    header = [line for line in SLURM.read_text().splitlines() if line.startswith("#SBATCH")]
    for opt in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=8", "--output=slurm-%j.out"):
        assert f"#SBATCH {opt}" in header
    assert any(line.startswith("#SBATCH --time=") for line in header)
