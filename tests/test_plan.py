"""gpt2-jax plan: per-device memory from an ahead-of-time compile, and the closed-form activation count."""

import json
import pathlib
import subprocess
import sys

from gpt2_jax.jobs import plan
from gpt2_jax.model import gpt2 as model_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_closed_form_matches_the_published_count():
    cfg = model_lib.config_from_preset("gpt2", dtype="bfloat16", attention="xla")
    s, b, h, a = 1024, 8, 768, 12
    per_layer = s * b * h * (34 + 5 * a * s / h)  # Korthikanti et al. 2022, eq. 1 (16-bit)
    logits = b * s * 50257 * (2 + 8)
    assert plan.activation_bytes(cfg, b, s) == int(12 * per_layer + logits)
    remat = model_lib.config_from_preset("gpt2", dtype="bfloat16", attention="xla", remat="full")
    # full remat: each layer keeps its 16-bit input; one layer's full set is rebuilt at a time
    assert plan.activation_bytes(remat, b, s) == int(12 * 2 * s * b * h + per_layer + logits)
    flash = model_lib.config_from_preset("gpt2", dtype="bfloat16", attention="cudnn")
    assert plan.activation_bytes(flash, b, s) == int(12 * s * b * h * 34 + logits)
    # tensor parallelism divides everything but the 10*s*b*h of LayerNorm inputs and dropout-free residuals
    assert plan.activation_bytes(cfg, b, s, tensor=4) < plan.activation_bytes(cfg, b, s) / 2.5


def test_plan_fsdp_holds_an_eighth_of_the_state(tmp_path):
    out = tmp_path / "plan.json"
    proc = subprocess.run([sys.executable, "-m", "gpt2_jax.cli", "plan", "--config", str(ROOT / "experiments" /
                           "default.py"), "--devices", "8", "--mesh", "8,1,1", "--mesh", "1,8,1",
                           "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| tiny | 3M | (8, 1, 1) | none | 16 x 128 |" in proc.stdout
    dp, fsdp = json.loads(out.read_text())
    assert dp["params"] == fsdp["params"] == 2_743_488  # as README states for the default run
    assert fsdp["param_bytes"] <= dp["param_bytes"] / 6 and fsdp["optimizer_bytes"] <= dp["optimizer_bytes"] / 6
    assert dp["xla_cpu_temp_bytes"] > 0 and dp["activation_bytes"] > 0
