"""Fault drills: a lost process, a full disk, signals and kills during an async save, NaN mid-run.

Each drill runs the real `gpt2-jax train` (or `launch/local.sh`) on a tiny model and corpus the
test writes, breaks something on purpose, and checks what the user sees (one line), what is kept
on disk, and that starting again resumes exactly.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from test_checkpoint import _wait_for

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _watchdog_child(tmp_path, body: str) -> subprocess.CompletedProcess:
    """Run `body` after linking a Watchdog (this side: process 0 of 2) to a socket `peer` (process 1)."""
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent('''
        import socket, sys, time
        from gpt2_jax.parallel import watchdog
        mine, peer = socket.socketpair()
        dog = watchdog.start({1: mine}, 0, 2, timeout_s=float(sys.argv[1]))
    ''') + textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script), "2"], capture_output=True, text=True, timeout=60)


def test_watchdog_names_a_closed_or_silent_process_and_ignores_a_goodbye(tmp_path):
    closed = _watchdog_child(tmp_path, "peer.close()\ntime.sleep(10)\nprint('not stopped')\n")
    assert closed.returncode == 2 and "not stopped" not in closed.stdout
    assert closed.stderr.strip() == (
        "gpt2-jax: error: lost process 1 of 2: its connection closed (it exited, crashed or was killed; its log "
        "says which); process 0 stops too. Checkpoints are intact (a save in flight is never read); start all "
        "processes again with the same command to resume from the last one")
    t0 = time.monotonic()
    silent = _watchdog_child(tmp_path, "time.sleep(10)\nprint('not stopped')\n")  # a frozen peer sends nothing
    assert silent.returncode == 2 and 2 <= time.monotonic() - t0 < 9
    assert silent.stderr.startswith("gpt2-jax: error: lost process 1 of 2: no heartbeat for 2 s")
    bye = _watchdog_child(tmp_path, "peer.sendall(b'B'); peer.close()\ntime.sleep(3)\nprint('finished')\n")
    assert bye.returncode == 0 and bye.stdout.strip() == "finished" and not bye.stderr


DEFAULT = str(ROOT / "experiments" / "default.py")
TEXT = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.\n"


def _corpus(root: pathlib.Path) -> str:
    for split, n in (("train", 60), ("validation", 6), ("test", 6)):
        (root / "corpus" / split).mkdir(parents=True, exist_ok=True)
        (root / "corpus" / split / "a.txt").write_text(TEXT * n)
    return f"text:{root}/corpus/{{split}}/*.txt"


def _overrides(root: pathlib.Path, run: str, steps: int, *extra: str) -> list[str]:
    return [f"--config.data.source={_corpus(root)}", f"--config.data.data_dir={root}/data",
            f"--config.train.run_dir={root / run}", "--config.model.preset=nano", "--config.data.seq_len=32",
            "--config.data.batch_size=8", "--config.eval.batch_size=8", f"--config.train.steps={steps}",
            "--config.train.log_every=1", "--config.train.eval_every=1000", "--config.checkpoint.every=10",
            "--config.optim.warmup_steps=2", "--config.train.sample_tokens=0", "--config.train.tensorboard=false",
            "--config.train.progress=false", "--config.model.resid_dropout=0.1", *extra]


def _rows(path: pathlib.Path) -> dict[int, tuple[float, float]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in rows if "loss" in r}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids(*needles: str) -> list[int]:
    """Processes whose command line holds every needle."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and all(n in cmdline for n in needles):
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (pathlib.Path("/proc") / str(pid) / "stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _launch(root: pathlib.Path, run: str, steps: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu", "LAUNCH_KILL_GRACE": "20"}
    return subprocess.Popen(["bash", str(ROOT / "launch" / "local.sh"), "--port", str(_free_port()), "--log-dir",
                             str(root / f"logs-{run}"), "2", DEFAULT, *_overrides(root, run, steps), *extra],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_killed_process_stops_the_other_in_one_line_and_a_relaunch_resumes_bitwise(tmp_path):
    run = tmp_path / "run"
    launch = _launch(tmp_path, "run", 400, "--heartbeat-timeout", "10")
    _wait_for(lambda: (run / "checkpoints" / "20").is_dir() and len(_rows(run / "metrics.jsonl")) >= 25, launch)
    [victim] = _pids(f"--config.train.run_dir={run} ", "--process-id 1 ")
    [survivor] = _pids(f"--config.train.run_dir={run} ", "--process-id 0 ")
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    while _alive(survivor) and time.monotonic() - t0 < 60:
        time.sleep(0.05)
    detected = time.monotonic() - t0
    _, err = launch.communicate(timeout=120)
    print(f"survivor exited {detected:.2f} s after the kill")
    assert detected < 10  # noticed at once (the link closes), long before JAX's 100 s heartbeat
    assert launch.returncode == 137 and "process 1 of 2 exited with code 137" in err
    log0 = (tmp_path / "logs-run" / "process_0.log").read_text().strip().splitlines()
    assert log0[-1].startswith("gpt2-jax: error: lost process 1 of 2: its connection closed (it exited, crashed "
                               "or was killed; its log says which); process 0 stops too.")
    assert not [line for line in log0 if line.startswith("Traceback")]
    before = _rows(run / "metrics.jsonl")

    relaunch = _launch(tmp_path, "run", 400, "--heartbeat-timeout", "10")
    out, err = relaunch.communicate(timeout=600)
    assert relaunch.returncode == 0, err[-3000:]
    resumed = int(out.split("resumed from step ")[1].split()[0])
    assert 20 <= resumed < max(before)
    after = _rows(run / "metrics.jsonl")
    assert sorted(after) == list(range(1, 401))
    redone = _rows(run / "metrics_replaced.jsonl")  # the killed run's rows after the resumed step
    assert redone and all(after[s] == redone[s] for s in redone)  # the same floats, bitwise
    assert all(after[s] == before[s] for s in before if s <= resumed)


@pytest.mark.slow
def test_a_frozen_coordinator_is_given_up_after_the_heartbeat_timeout(tmp_path):
    run = tmp_path / "run"
    launch = _launch(tmp_path, "run", 400, "--heartbeat-timeout", "5")
    _wait_for(lambda: (run / "checkpoints" / "10").is_dir(), launch)
    [victim] = _pids(f"--config.train.run_dir={run} ", "--process-id 0 ")
    [survivor] = _pids(f"--config.train.run_dir={run} ", "--process-id 1 ")
    os.kill(victim, signal.SIGSTOP)  # a hung host: no byte, no closed connection
    t0 = time.monotonic()
    while _alive(survivor) and time.monotonic() - t0 < 60:
        time.sleep(0.05)
    detected = time.monotonic() - t0
    os.kill(victim, signal.SIGKILL)
    launch.communicate(timeout=120)
    print(f"survivor exited {detected:.2f} s after the coordinator froze")
    assert 3 <= detected < 10  # the 5 s timeout, counted from the last heartbeat (one per second)
    log1 = (tmp_path / "logs-run" / "process_1.log").read_text().strip().splitlines()
    assert log1[-1].startswith("gpt2-jax: error: lost process 0 of 2: no heartbeat for 5 s (frozen, or its host "
                               "or network is down); process 1 stops too.")


def _step_bytes(step_dir: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in step_dir.rglob("*") if p.is_file())


@pytest.mark.slow  # 19-38 s: a probe run sizes a small tmpfs, then a run fills it
def test_disk_full_during_an_async_save_stops_in_one_line_and_keeps_earlier_steps(tmp_path):
    from gpt2_jax import api
    from gpt2_jax.cli import app as cli

    probe = tmp_path / "probe"  # one save's size on this stack, to size the small disk
    assert cli.main(["train", "--config", DEFAULT, *_overrides(tmp_path, "probe", 10)]) == 0
    size = _step_bytes(probe / "checkpoints" / "10")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size * 3 // 2 + (256 << 10)}", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        run = disk / "run"
        args = [sys.executable, "-m", "gpt2_jax.cli", "train", "--config", DEFAULT,
                *_overrides(tmp_path, "unused", 40), f"--config.train.run_dir={run}"]
        proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert proc.stderr.strip() == (
            f"gpt2-jax: error: checkpoint step 20 could not be written to {run / 'checkpoints'}: no space left on "
            f"device ({proc.stderr.split('device (')[1].split(' MiB')[0]} MiB free); the unfinished step is never "
            "read and earlier steps are intact (latest: step 10); free space or move train.run_dir to a larger "
            "disk, then run the same command again to resume"), proc.stderr[-3000:]
        steps = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert steps[0] == "10" and all(".orbax-checkpoint-tmp" in name for name in steps[1:])
        m = api.load(run)  # checks every file of step 10 against its seal (sizes and CRC-32s)
        assert m.step == 10
        again = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert again.returncode == 2 and "resumed from step 10" in again.stdout  # the leftover was cleaned up
        assert again.stderr.strip().startswith(f"gpt2-jax: error: checkpoint step 20 could not be written")
    finally:
        subprocess.run(["umount", str(disk)], check=False)
