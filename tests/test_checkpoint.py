"""Checkpoints end to end through `gpt2-jax train`: exact resume after SIGKILL and SIGTERM, damage
drills, --resume-from, changed settings, export / --init-from."""

import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from gpt2_jax import api
from gpt2_jax.checkpoint import layout
from gpt2_jax.checkpoint.manager import CheckpointError
from gpt2_jax.cli import app as cli
from gpt2_jax.train import metrics as metrics_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT = str(ROOT / "experiments" / "default.py")
TEXT = ("Now is the winter of our discontent made glorious summer by this sun of York; "
        "and all the clouds that lour'd upon our house in the deep bosom of the ocean buried.\n")
STEPS = 40


def _corpus(root: pathlib.Path) -> str:
    for split, n in (("train", 30), ("validation", 3), ("test", 3)):
        d = root / "corpus" / split
        d.mkdir(parents=True, exist_ok=True)
        (d / "doc.txt").write_text(TEXT * n)
    return f"text:{root}/corpus/{{split}}/*.txt"


def _args(root: pathlib.Path, run: str, steps: int = STEPS, *extra: str) -> list[str]:
    return ["train", "--config", DEFAULT, "--quiet", f"--config.data.source={_corpus(root)}",
            f"--config.data.data_dir={root}/data", f"--config.train.run_dir={root / run}",
            f"--config.train.steps={steps}", "--config.model.preset=nano", "--config.data.seq_len=32",
            "--config.data.batch_size=8", "--config.optim.warmup_steps=5", "--config.optim.lr=3e-3",
            "--config.model.resid_dropout=0.1",  # the rng in the state must resume too
            "--config.train.eval_every=10", "--config.checkpoint.every=10", "--config.train.log_every=1",
            "--config.eval.max_batches=2", "--config.train.sample_tokens=0", "--config.train.tensorboard=false",
            *extra]


def _losses(run_dir: pathlib.Path) -> dict[int, tuple[float, float]]:
    rows = [r for r in metrics_lib.read_metrics(run_dir) if "loss" in r]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), "a step was logged twice"
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in rows}


def _digest(root: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _spawn(root: pathlib.Path, run: str, steps: int = STEPS) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gpt2_jax.cli", *_args(root, run, steps)], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def _in_flight(ckpts: pathlib.Path, after: int = 0) -> list[int]:
    """Steps (> after) whose async save is being written: Orbax's temporary directories."""
    names = [p.name.split(".")[0] for p in ckpts.iterdir() if ".orbax-checkpoint-tmp" in p.name] if ckpts.is_dir() else []
    return [int(n) for n in names if n.isdigit() and int(n) > after]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """A run of STEPS steps that was never interrupted: its per-step losses and its directory."""
    root = tmp_path_factory.mktemp("ckpt")
    assert cli.main(_args(root, "straight")) == 0
    return root, _losses(root / "straight")


def test_sigkill_during_an_async_save_then_resume_is_bitwise_exact(straight, capsys):
    root, expected = straight
    proc = _spawn(root, "killed")
    ckpts = root / "killed" / "checkpoints"
    _wait_for(lambda: _in_flight(ckpts, after=10), proc)  # step 10 is finalized, a later one is being written
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert cli.main(_args(root, "killed")) == 0
    out = capsys.readouterr().out
    resumed_at = int(out.split("resumed from step ")[1].split()[0])
    assert resumed_at >= 10 and not _in_flight(ckpts)  # the unfinished save was never read, and is gone
    got = _losses(root / "killed")
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == expected  # bitwise: the same floats, every step, data order and dropout included
    results = json.loads((root / "killed" / "results.json").read_text())
    assert results == json.loads((root / "straight" / "results.json").read_text())


def test_sigterm_during_an_async_save_checkpoints_exits_0_and_resumes_exactly(straight, capsys):
    root, expected = straight
    proc = _spawn(root, "term")
    ckpts = root / "term" / "checkpoints"
    _wait_for(lambda: _in_flight(ckpts), proc)
    writing = _in_flight(ckpts)[0]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped by SIGTERM at step" in out and "run the same command again to resume" in out
    stopped_at = int(out.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert writing <= stopped_at < STEPS
    for step in {writing, stopped_at}:  # the save in flight completed, and the stop saved its own step
        assert (ckpts / str(step) / "files.json").exists()  # finalized and sealed
    assert cli.main(_args(root, "term")) == 0
    assert f"resumed from step {stopped_at}" in capsys.readouterr().out
    assert _losses(root / "term") == expected


def _largest_state_file(step_dir: pathlib.Path) -> pathlib.Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _cut_short(step_dir: pathlib.Path) -> str:
    f = _largest_state_file(step_dir)
    with f.open("r+b") as fh:
        fh.truncate(f.stat().st_size // 2)
    return f"{f.relative_to(step_dir)} is cut short"


def _drop_array(step_dir: pathlib.Path) -> str:
    path = step_dir / "state" / "_METADATA"
    md = json.loads(path.read_text())
    key = next(k for k in md["tree_metadata"] if "qkv_kernel" in k and "h_layers" in k and "params" in k)
    del md["tree_metadata"][key]
    path.write_text(json.dumps(md))
    return "state/_METADATA lacks 1 array(s): params/h_layers/attn/qkv_kernel"


def _garbage_json(step_dir: pathlib.Path) -> str:
    (step_dir / "meta" / "metadata").write_text('{"tokenizer": {"kind": "byte"}, garb')
    return "meta/metadata is not valid JSON"


def _missing_file(step_dir: pathlib.Path) -> str:
    f = _largest_state_file(step_dir)
    f.unlink()
    return f"{f.relative_to(step_dir)} is missing"


def _flip_bytes(step_dir: pathlib.Path) -> str:
    f = _largest_state_file(step_dir)
    data = bytearray(f.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):  # same size, bytes flipped in place
        data[i] ^= 0xFF
    f.write_bytes(bytes(data))
    return f"{f.relative_to(step_dir)} has changed bytes (CRC-32 "


def _flip_bytes_of_an_unsealed_step(step_dir: pathlib.Path) -> str:
    (step_dir / "files.json").unlink()  # as an older run's step: only Orbax's decoding can tell
    f = step_dir / "state" / "manifest.ocdbt"
    data = bytearray(f.read_bytes())
    for i in range(8, len(data), 7):
        data[i] ^= 0xFF
    f.write_bytes(bytes(data))
    return "state/manifest.ocdbt does not decode ("


@pytest.mark.parametrize("damage", [_cut_short, _drop_array, _garbage_json, _missing_file, _flip_bytes,
                                    _flip_bytes_of_an_unsealed_step])
def test_damaged_latest_checkpoint_names_step_and_file_and_resume_falls_back(straight, tmp_path, capsys, damage):
    root, _ = straight
    run = tmp_path / "run"
    shutil.copytree(root / "straight", run)
    ckpts = run / "checkpoints"
    latest = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    problem = damage(ckpts / str(latest))
    (ckpts / f"{latest + 10}.orbax-checkpoint-tmp-1732").mkdir()  # a save that a kill cut off
    damaged, others = _digest(ckpts / str(latest)), {s: _digest(ckpts / s) for s in os.listdir(ckpts)
                                                    if s.isdigit() and int(s) != latest}
    with pytest.raises(CheckpointError) as e:  # load() names it too, and moves nothing
        api.load(run)
    assert str(e.value).startswith(f"checkpoint step {latest} in {ckpts} is damaged: {problem}")
    assert (ckpts / str(latest)).is_dir()

    previous = max(int(s) for s in others)
    args = _args(root, "unused", previous)
    args[args.index(f"--config.train.run_dir={root / 'unused'}")] = f"--config.train.run_dir={run}"
    assert cli.main(args) == 0  # train.steps = the previous step: resume, evaluate, and save nothing new
    out, err = capsys.readouterr()
    assert "Traceback" not in err  # e.g. no 'Event loop is closed' from tensorstore's callbacks
    warning = next(l for l in out.splitlines() if l.startswith("warning:"))
    assert f"checkpoint step {latest} in {ckpts} is damaged: {problem}" in warning
    assert f"moved it to {run / 'damaged' / str(latest)}" in warning
    assert f"resumed from step {previous}" in out
    assert _digest(run / "damaged" / str(latest)) == damaged  # kept as it was, for the user to look at
    assert {s: _digest(ckpts / s) for s in others} == others  # no other checkpoint touched
    assert sorted(os.listdir(ckpts)) == sorted(others)  # the unfinished save is cleaned up


def test_not_a_checkpoint_and_unknown_steps_are_one_line_errors(straight, tmp_path, capsys):
    root, _ = straight
    (tmp_path / "junk").mkdir()
    for path, step, message in [(tmp_path / "junk", "latest", "is neither a run directory"),
                                (tmp_path / "nowhere", "latest", "does not exist"),
                                (root / "straight", 7, "step 7 is not in"),
                                (root / "straight", "newest", "is not 'latest', 'best' or a step number")]:
        with pytest.raises(CheckpointError, match=message):
            api.load(path, step)
    assert cli.main(_args(root, "straight", STEPS, "--resume-from", "7")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpt2-jax: error: step 7 is not in") and "available steps" in err and "\n" not in err


def test_resume_from_an_earlier_step_sets_later_ones_aside_and_notices_changes(straight, tmp_path, capsys):
    root, expected = straight
    run = tmp_path / "run"
    shutil.copytree(root / "straight", run)
    args = _args(root, "unused", STEPS, "--resume-from", "30", "--config.train.eval_every=5")
    args[args.index(f"--config.train.run_dir={root / 'unused'}")] = f"--config.train.run_dir={run}"
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "notice: resuming step 30 with changed settings: train.eval_every: 10 -> 5" in out
    assert f"notice: step 40 is after the resumed step 30; moved it to {run / 'superseded' / '40'}" in out
    assert (run / "superseded" / "40" / "state").is_dir()
    assert _losses(run) == expected  # rows after 30 were moved aside and logged again, identically
    assert len((run / "metrics_replaced.jsonl").read_text().splitlines()) >= 10


def test_export_load_and_init_from(straight, tmp_path, capsys):
    root, _ = straight
    run = root / "straight"
    for dtype in ("float32", "bfloat16"):
        assert cli.main(["export", "--run", str(run), "--step", "latest", "--out", str(tmp_path / dtype),
                         "--dtype", dtype]) == 0
    assert "exported step 40" in capsys.readouterr().out
    assert not list((tmp_path / "float32").rglob("*opt_state*"))
    ids = np.arange(1, 30)[None]
    ref = np.asarray(api.load(run).logits(ids))
    np.testing.assert_array_equal(np.asarray(api.load(tmp_path / "float32").logits(ids)), ref)
    half = api.load(tmp_path / "bfloat16")
    assert half.model.cfg.param_dtype == "bfloat16" and "step 40" in half.summary()
    np.testing.assert_allclose(np.asarray(half.logits(ids), np.float32), ref, atol=0.15)
    assert cli.main(["export", "--run", str(run), "--out", str(tmp_path / "float32")]) == 2  # never overwrites
    assert "is not empty" in capsys.readouterr().err

    assert cli.main(_args(root, "tuned", 5, "--init-from", str(tmp_path / "bfloat16"))) == 0
    assert f"initialized params from export {tmp_path / 'bfloat16'} (step 40)" in capsys.readouterr().out
    first = _losses(root / "tuned")[1][0]
    assert first < _losses(run)[1][0] - 1.0  # starts from the trained weights, not from scratch
    assert cli.main(_args(root, "other", 5, "--init-from", str(tmp_path / "float32"),
                          "--config.model.n_embd=32")) == 2
    err = capsys.readouterr().err.strip()
    assert "holds a different model (model.n_embd: 64 -> 32)" in err and "\n" not in err


def _probe(mode: str, root: pathlib.Path, run: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "checkpoint_probe.py"), mode, str(root / run),
                           *_args(root, run, 10)[4:]], capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("REPORT "))[len("REPORT "):])


@pytest.mark.slow  # 24-38 s: 8-device probes write and restore, then this process restores on 1 device
def test_a_checkpoint_of_8_devices_restores_on_1_device_and_on_2x2x2(straight):
    root, _ = straight
    written = _probe("write", root, "layout")
    assert written["devices"] == 8 and written["qkv_spec"] == "P('fsdp', None, 'tensor', None)"
    moved = _probe("restore", root, "layout")
    assert moved["devices"] == 8 and moved["qkv_spec"] == "P('fsdp', None, 'tensor', None)"
    assert moved["identical"] and moved["logits_max_diff"] <= 1e-5
    assert moved["load_mesh"].startswith("data=1 fsdp=8 tensor=1 over 8 cpu devices")
    assert moved["load_logits_max_diff"] <= 1e-5

    from gpt2_jax import config as config_lib
    from gpt2_jax.checkpoint import manager as ckpt
    from gpt2_jax.jobs import pretrain  # this process: 1 device
    from gpt2_jax.train import loop
    expected = np.load(root / "layout" / "expected.npz")
    cfg = config_lib.load_config(DEFAULT, _args(root, "layout", 10)[4:])
    steps = loop.make_steps(pretrain.build(cfg, echo=lambda _: None), echo=lambda _: None)
    assert steps.mesh.devices.size == 1
    manager = ckpt.make_manager(root / "layout", read_only=True)
    target = ckpt.abstract_like(steps.abstract_state)
    state = ckpt.restore_state(manager, 10, target)
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
    for path, value in leaves:
        np.testing.assert_array_equal(value, expected["/".join(str(k.key) for k in path)])
    m = api.load(root / "layout")
    assert m.mesh is None and "step 10" in m.summary()
    logits = m.logits(np.arange(3, 35, dtype=np.int32))  # the ids the 8-device run scored
    np.testing.assert_allclose(np.asarray(logits), expected["logits"], atol=1e-5, rtol=1e-5)


def test_bench_ckpt_reports_blocking_and_overhead(tmp_path, capsys):
    report_path = tmp_path / "bench.json"
    assert cli.main(["bench", "ckpt", "--preset", "nano", "--batch-size", "2", "--seq-len", "16", "--steps", "4",
                     "--save-every", "2", "--rounds", "1", "--save-preset", "nano", "--json", str(report_path)]) == 0
    out = capsys.readouterr().out
    assert "save of the nano train state" in out and "saving every 2 steps" in out
    r = json.loads(report_path.read_text())
    save = r["blocking_save"]
    assert 0 <= save["state_bytes"] - 3 * 4 * save["params"] < 100  # fp32 params, two Adam moments, scalars
    assert all(0 < b <= t for b, t in zip(save["blocking_s"], save["total_s"]))
    assert save["disk_bytes"] > 0 and all(t > 0 for t in save["checksum_s"] + save["check_s"])
    assert "its CRC-32 seal" in out
    o = r["overhead"]
    assert o["no_save_step_s"] > 0 and set(o["layouts"]) == {"stacked", "tree"}
    assert all(a["step_s"] > 0 and a["save_cpu_s"] > 0 and len(a["held_s"]) == 2 for a in o["layouts"].values())
    assert o["arrays"]["stacked"] < o["arrays"]["tree"]  # nano's two blocks: one array where there were two
    assert "stacked layout" in out and "tree layout" in out


def test_the_best_step_is_kept_and_found_after_a_restart(tmp_path):
    from gpt2_jax.checkpoint import manager as ckpt

    state = {"x": np.ones(3, np.float32)}
    manager = ckpt.make_manager(tmp_path, max_to_keep=1, keep_best=1)
    for step, val_loss in ((10, 1.0), (20, 0.5), (30, 2.0)):
        ckpt.save(manager, step, state, {}, {}, metrics={"val_loss": val_loss})
    ckpt.finish(manager)
    manager.close()
    manager = ckpt.make_manager(tmp_path, max_to_keep=1, keep_best=1)  # a resumed run
    assert manager.best_step() == 20 and ckpt.resolve_step(manager, "best") == 20
    ckpt.save(manager, 40, state, {}, {}, metrics={"val_loss": 3.0})
    ckpt.finish(manager)
    assert manager.all_steps() == [20, 40]  # the latest and the best, which the restart did not forget
    manager.close()
    no_eval = ckpt.make_manager(tmp_path / "no_eval", keep_best=0)  # a run without an eval split
    for step in (10, 20):
        ckpt.save(no_eval, step, state, {}, {})
    ckpt.finish(no_eval)
    assert ckpt.resolve_step(ckpt.make_manager(tmp_path / "no_eval", read_only=True), "best") == 20


def test_a_learning_rate_that_overflows_mid_run_stops_naming_the_last_good_step_which_is_finite(straight, tmp_path,
                                                                                                  capsys):
    root, _ = straight
    run = tmp_path / "run"
    shutil.copytree(root / "straight", run)
    # Continued from step 40 with lr 1e39 (inf in float32): step 41's update makes every weight inf/NaN.
    args = _args(root, "unused", 60, "--config.optim.lr=1e39", "--config.checkpoint.every=1")
    args[args.index(f"--config.train.run_dir={root / 'unused'}")] = f"--config.train.run_dir={run}"
    assert cli.main(args) == 1
    assert capsys.readouterr().err.strip() == (
        f"gpt2-jax: error: the update of step 41 made the parameters NaN/inf; not saved; stopped (last good "
        f"checkpoint: step 40 in {run / 'checkpoints'}); lower optim.lr or raise optim.warmup_steps")
    assert not (run / "checkpoints" / "41").exists()
    m = api.load(run)
    assert m.step == 40 and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(m.params))


def _find(tree, key):
    """The first subtree under `key` in a nested dict/list (an Orbax restore without a target)."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        children = tree.values()
    elif isinstance(tree, (list, tuple)):
        children = tree
    else:
        return None
    return next((hit for child in children if (hit := _find(child, key)) is not None), None)


def test_a_schedule_free_run_is_evaluated_and_loaded_at_its_average(tmp_path, capsys):
    import orbax.checkpoint as ocp

    assert cli.main(_args(tmp_path, "sf", 10, "--config.optim.name=schedule_free_adamw",
                          "--config.optim.schedule=constant")) == 0
    step = tmp_path / "sf" / "checkpoints" / "10"
    assert (step / "average").is_dir()
    saved = ocp.PyTreeCheckpointer().restore(step / "state")  # numpy arrays, as written (blocks stacked)
    y, z, b1 = saved["params"], _find(saved["opt_state"], "z"), float(_find(saved["opt_state"], "b1"))
    x = jax.tree.map(lambda yi, zi: (yi - (1 - b1) * zi) / b1, y, z)
    loaded = layout.to_saved(api.load(tmp_path / "sf").params)  # stacked as the checkpoint holds them
    for path, want in jax.tree_util.tree_flatten_with_path(x)[0]:
        np.testing.assert_allclose(np.asarray(_get(loaded, path)), want, rtol=1e-5, atol=1e-6)
    # not the params it trained at
    assert not all(np.allclose(np.asarray(_get(loaded, p)), v) for p, v in jax.tree_util.tree_flatten_with_path(y)[0])


def _get(tree, path):
    for k in path:
        tree = tree[getattr(k, "key", getattr(k, "idx", None))]
    return tree
