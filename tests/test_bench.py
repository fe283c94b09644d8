"""`gpt2-jax bench train`: FLOP accounting, the report with a PyTorch peer, profiling, the sweep, GPU flags."""

from __future__ import annotations

import json
import pathlib
import types

import jax
import jax.numpy as jnp
import pytest

from gpt2_jax.bench import sweep as bench_sweep
from gpt2_jax.bench import train as bench_train
from gpt2_jax.cli import app as cli
from gpt2_jax.cli import bench as cli_bench
from gpt2_jax.cli import common as cli_common
from gpt2_jax.model import flops
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.parallel import profiling
from gpt2_jax.train import loop


def test_flops_per_token_of_gpt2_at_1024_is_the_closed_form():
    cfg = model_lib.config_from_preset("gpt2")
    L, d, V, T = 12, 768, 50257, 1024
    # per block: qkv 3d^2+3d, out d^2+d, fc 4d^2+4d, proj 4d^2+d, two LayerNorms 4d; then ln_f and the tied wte
    n = L * (12 * d * d + 13 * d) + 2 * d + V * d
    assert n == 124_439_808 - 1024 * d  # every parameter but the position embedding
    assert model_lib.flops_per_token(cfg, T) == 6 * n + 12 * L * T * d == 855_166_464
    # padding the vocabulary for speed adds no model FLOPs, so it cannot raise MFU
    assert model_lib.flops_per_token(model_lib.config_from_preset("gpt2", vocab_multiple=128), T) == 855_166_464


def test_peak_flops_by_device_kind():
    kind = lambda name: types.SimpleNamespace(device_kind=name)
    assert flops.device_peak_flops(kind("NVIDIA H100 80GB HBM3")) == 989e12
    assert flops.device_peak_flops(kind("NVIDIA H100 PCIe")) == 756e12
    assert flops.device_peak_flops(kind("NVIDIA H200")) == 989e12
    assert flops.device_peak_flops(kind("NVIDIA A100-SXM4-80GB")) == 312e12
    assert flops.device_peak_flops(jax.devices()[0]) is None  # the CPU: no MFU
    assert flops.total_peak_flops([kind("NVIDIA H100 80GB HBM3")] * 8) == 8 * 989e12
    assert flops.mfu(494.5e12, 989e12) == pytest.approx(0.5) and flops.mfu(1e12, None) is None


def test_bench_train_cli_reports_the_peer_ratio_memory_and_a_profile(tmp_path, capsys):
    report_path, trace = tmp_path / "bench.json", tmp_path / "trace"
    assert cli.main(["bench", "train", "--preset", "nano", "--batch-size", "2", "--seq-len", "16", "--steps", "2",
                     "--warmup", "1", "--loss-chunk", "8", "--peer", "hf-torch", "--peer-compile", "off",
                     "--profile-steps", "1:2", "--profile-dir", str(trace), "--json", str(report_path)]) == 0
    out = capsys.readouterr().out
    assert "ratio gpt2_jax / hf-torch tokens/s" in out and flops.FORMULA in out and "no MFU" in out
    r = json.loads(report_path.read_text())
    cfg = model_lib.config_from_preset("nano", vocab_size=257)
    assert r["flops_per_token"] == model_lib.flops_per_token(cfg, 16)
    assert r["loss_chunk"] == 8 and r["peer_info"]["hf-torch"]["compiled"] is False
    for impl in ("gpt2_jax", "hf-torch"):
        row = r["results"][impl]
        assert row["tokens_per_s"] > 0 and row["step_ms_min"] <= row["step_ms_median"] and row["mfu"] is None
    assert r["results"]["gpt2_jax"]["peak_memory_bytes"] > 0  # XLA's plan on the CPU
    assert r["ratio_vs_hf_torch"] == pytest.approx(
        r["results"]["gpt2_jax"]["tokens_per_s"] / r["results"]["hf-torch"]["tokens_per_s"])
    assert list(trace.rglob("*.xplane.pb")), "no jax.profiler trace written"


@pytest.mark.parametrize("argv,message", [
    (["--dtype", "fp8"], "--dtype 'fp8' is not one of"),
    (["--peer", "nanogpt"], "give the nanoGPT checkout"),
    (["--peer", "nanogpt", "/nonexistent"], "no model.py there"),
    (["--profile-steps", "5:2"], "is not A:B"),
    (["--mesh", "1,2"], "needs three sizes"),
])
def test_bad_bench_flags_are_one_line_errors(argv, message, capsys):
    assert cli.main(["bench", "train", "--preset", "nano", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_gpu_xla_flags_only_for_a_gpu_backend_and_never_over_the_users():
    env = {"JAX_PLATFORMS": "cuda", "XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=false --x=1"}
    assert cli_common.add_gpu_xla_flags(env) == [f for f in cli_common.GPU_XLA_FLAGS if "latency_hiding" not in f]
    assert "--xla_gpu_enable_latency_hiding_scheduler=false" in env["XLA_FLAGS"]
    env = {"JAX_PLATFORMS": "cuda"}
    assert cli_common.add_gpu_xla_flags(env) == list(cli_common.GPU_XLA_FLAGS) and env["XLA_FLAGS"] == " ".join(cli_common.GPU_XLA_FLAGS)
    for env in ({"JAX_PLATFORMS": "cpu"}, {"JAX_PLATFORMS": "cuda", "GPT2_JAX_GPU_FLAGS": "0"}):
        assert cli_common.add_gpu_xla_flags(env) == [] and "XLA_FLAGS" not in env


def test_train_log_reports_mfu_with_the_bench_accounting():
    written = []
    writer = types.SimpleNamespace(write=lambda step, m: written.append((step, m)))
    log = loop._TrainLog(writer, tokens_per_step=1000, flops_per_step=2e12, log_every=1, manager=None,
                               peak_flops=989e12)
    for step in (1, 2, 3):
        log.push(step, {"loss": jnp.float32(2.0), "grad_norm": jnp.float32(1.0)})
    log.flush()
    timed = [m for _, m in written if "tflops" in m]  # the back-to-back flush has no time window
    assert timed
    m = timed[-1]
    assert m["mfu"] == pytest.approx(m["tflops"] * 1e12 / 989e12)
    assert m["tflops"] == pytest.approx(m["tokens_per_s"] * 2e12 / 1000 / 1e12)
    written.clear()
    cpu_log = loop._TrainLog(writer, 1000, 2e12, 1, None, flops.total_peak_flops())
    for step in (1, 2):
        cpu_log.push(step, {"loss": jnp.float32(2.0), "grad_norm": jnp.float32(1.0)})
    assert "tflops" in written[0][1] and "mfu" not in written[0][1]


def test_profile_steps_parse():
    assert profiling.parse_steps("") is None and profiling.parse_steps("3:5") == (3, 5)
    for bad in ("3", "5:3", "a:b", "-1:2"):
        with pytest.raises(ValueError, match="A:B"):
            profiling.parse_steps(bad)


def test_sweep_writes_json_and_markdown_and_resumes(tmp_path):
    lines = []
    rows = bench_sweep.run_sweep("smoke", str(tmp_path), echo=lines.append)
    assert [r["status"] for r in rows] == ["ok"] and len(lines) == 3 and lines[2].startswith("| row | impl |")
    assert "| nano, chunked cross-entropy | gpt2_jax | nano | 2 x 32 |" in (tmp_path / "sweep.md").read_text()
    assert json.loads((tmp_path / "sweep.json").read_text())[0]["report"]["loss_chunk"] == 8
    lines.clear()
    assert bench_sweep.run_sweep("smoke", str(tmp_path), echo=lines.append) == rows and lines == []


def test_sweep_runs_only_what_fits_its_budget_and_the_dry_run_shows_the_order(tmp_path):
    lines = []
    rows = bench_sweep.run_sweep("smoke", str(tmp_path), echo=lines.append, budget_s=60)  # the row's budget: 300 s
    assert [r["status"] for r in rows] == ["waiting"] and lines == [] and not list(tmp_path.glob("row*.json"))
    assert "run again" in json.loads((tmp_path / "sweep.json").read_text())[0]["error"]
    plan = bench_sweep.plan_lines("gpu", budget_s=660)
    assert [line.split("  ")[-1].split(":")[0] for line in plan[:5]] == [
        "headline", "headline", "headline", "headline", "headline"]
    assert "decode batch 1 " in plan[2] and "decode batch 32 " in plan[3] and "bench eval" in plan[4]
    assert not any("next call" in line for line in plan[:5]) and all("next call" in line for line in plan[5:])


def test_gpu_bench_script_is_one_command_that_refuses_a_cpu(tmp_path):
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "..", "launch", "gpu_bench.sh")
    assert os.access(script, os.X_OK)
    r = subprocess.run([script], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu"})
    assert r.returncode != 0 and "no GPU: cpu" in r.stderr and not (tmp_path / "bench_gpu").exists()
    dry = subprocess.run([script, "--dry-run", "--budget", "300"], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu"})
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("[ 1]  120 s  total   2.0 min  headline: gpt2 T=1024")
    assert "(after --budget: next call)" in dry.stdout.splitlines()[2]  # 120 + 200 > 300
    assert not (tmp_path / "bench_gpu").exists()


def test_train_profiles_steps_and_logs_throughput_with_a_chunked_loss(tmp_path):
    import pathlib

    corpus = tmp_path / "corpus"
    for split in ("train", "validation", "test"):
        (corpus / split).mkdir(parents=True)
        (corpus / split / "a.txt").write_text("To be, or not to be, that is the question. " * 60)
    run = tmp_path / "run"
    default = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "default.py"
    assert cli.main(["train", "--config", str(default), "--quiet", "--profile-steps", "1:3",
                     f"--config.data.source=text:{corpus}/{{split}}/*.txt", f"--config.data.data_dir={tmp_path}/data",
                     f"--config.train.run_dir={run}", "--config.train.steps=4", "--config.model.preset=nano",
                     "--config.data.seq_len=32", "--config.data.batch_size=4", "--config.train.loss_chunk=8",
                     "--config.optim.warmup_steps=1", "--config.train.log_every=1", "--config.train.eval_every=4",
                     "--config.train.sample_tokens=0", "--config.train.tensorboard=false"]) == 0
    assert list((run / "profile").rglob("*.xplane.pb")), "no trace of steps 1..2"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "tokens_per_s" in r]
    assert timed and all(r["tflops"] > 0 and "mfu" not in r for r in timed)  # a CPU has no peak: no MFU


def test_every_row_of_the_gpu_plan_is_a_valid_bench_command(tmp_path):
    (tmp_path / "model.py").write_text("")  # stands in for a nanoGPT checkout; only its presence is checked
    rows = bench_sweep.PLANS["gpu"](str(tmp_path))
    names = [r["name"] for r in rows]
    assert len(set(names)) == len(names)  # names are the resume keys
    parse = cli.make_parser().parse_args
    train = [r for r in rows if r.get("kind", "train") == "train"]
    for row in train:
        spec = cli_bench.train_bench_spec(parse(["bench", "train", *row["args"]]))
        bench_train.check(spec)
        if row["name"].startswith(("+ chunked", "headline")):
            assert (spec.dtype, spec.attention, spec.vocab_multiple, spec.loss_chunk) == ("bfloat16", "cudnn", 128, 128)
    assert {r["kind"] for r in rows if r not in train} == {"decode", "eval"}
    for row in rows:
        assert parse(["bench", row.get("kind", "train"), *row["args"]]).preset.startswith("gpt2")
        assert 0 < row["budget_s"] <= 300
    peers = cli_bench.train_bench_spec(parse(["bench", "train", *rows[1]["args"]])).peers
    assert peers == (("hf-torch", None), ("nanogpt", str(tmp_path)))
    gpt2 = [cli_bench.train_bench_spec(parse(["bench", "train", *r["args"]])) for r in train[:7]]
    assert all((s.preset, s.seq_len, s.vocab_size) == ("gpt2", 1024, 50257) for s in gpt2)
    assert sum(r["budget_s"] for r in rows[:5]) <= 660  # the headline rows fit one ration with start-up


def test_bench_reward_report_shows_the_reward_curve_by_quarters_the_ratio_and_a_plot(tmp_path, capsys):
    from gpt2_jax.bench import reward as bench_reward
    rows = [bench_reward._summary(name, rewards, [0.1] * 8, [9.0] + [s] * 7, 32)
            for name, rewards, s in (("ours", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], 0.5),
                                     ("peer", [0.0] * 4 + [1.0] * 4, 1.0))]
    assert rows[0]["completions_per_s"] == pytest.approx(64.0)  # the first (compiling) step is left out
    report = {"config": "x.py", "steps": 8, "completions_per_step": 32, "completion_tokens": 48, "rows": rows}
    text = bench_reward.format_report(report)
    assert "| mean training reward, steps | 1-2 | 3-4 | 5-6 | 7-8 |" in text
    assert "| ours | 0.050 | 0.250 | 0.450 | 0.650 |" in text and "| peer | 0.000 | 0.000 | 1.000 | 1.000 |" in text
    assert text.endswith("ours / peer: 2.00x completions per second")
    assert bench_reward.curve_windows(10, 4) == [(0, 2), (2, 5), (5, 8), (8, 10)]
    png = bench_reward.plot_curves(report, str(tmp_path / "curves.png"))
    assert pathlib.Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["bench", "train", "--preset", "nano", "--config.train.seed=1"]) == 2  # overrides: reward only
    assert "bench train takes no --config overrides" in capsys.readouterr().err
