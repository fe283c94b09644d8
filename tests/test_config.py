"""Experiment configs: overrides with type checks, unknown keys with suggestions, impossible values."""

import json
import pathlib
import subprocess
import sys

import pytest

from gpt2_jax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT = str(ROOT / "experiments" / "default.py")


def test_every_experiment_file_loads_and_validates():
    files = sorted((ROOT / "experiments").glob("*.py"))
    assert files
    for f in files:
        cfg = config_lib.load_config(str(f))
        assert set(cfg.keys()) == set(config_lib.SECTIONS)


def test_override_types_are_checked_and_applied():
    cfg = config_lib.load_config(DEFAULT, ["--config.optim.lr=3e-4", "config.train.steps=7",
                                           "--config.data.tokenizer=gpt2", "--config.model.n_layer=3",
                                           "--config.train.progress=false", "--config.optim.warmup_steps=2"])
    assert cfg.optim.lr == 3e-4 and cfg.train.steps == 7 and cfg.data.tokenizer == "gpt2"
    assert cfg.model.n_layer == 3 and cfg.train.progress is False
    cfg = config_lib.load_config(DEFAULT, ["--config.optim.lr=1"])  # an int is a valid float
    assert isinstance(cfg.optim.lr, float)
    with pytest.raises(config_lib.ConfigError, match=r"optim\.lr wants float"):
        config_lib.load_config(DEFAULT, ["--config.optim.lr=fast"])
    with pytest.raises(config_lib.ConfigError, match=r"train\.steps wants int"):
        config_lib.load_config(DEFAULT, ["--config.train.steps=1.5"])
    with pytest.raises(config_lib.ConfigError, match=r"train\.progress wants true/false"):
        config_lib.load_config(DEFAULT, ["--config.train.progress=3"])


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(config_lib.ConfigError, match=r"unknown config key optim\.lrr; did you mean optim\.lr\?"):
        config_lib.load_config(DEFAULT, ["--config.optim.lrr=1e-3"])
    with pytest.raises(config_lib.ConfigError, match=r"did you mean model\.n_embd\?"):
        config_lib.load_config(DEFAULT, ["--config.modle.n_embd=64"])


def test_typo_inside_an_experiment_file(tmp_path):
    f = tmp_path / "typo.py"
    f.write_text("from gpt2_jax.config import base_config\n"
                 "def get_config():\n    c = base_config()\n    c.train.eval_evry = 5\n    return c\n")
    with pytest.raises(config_lib.ConfigError, match=r"train\.eval_evry; did you mean train\.eval_every\?"):
        config_lib.load_config(str(f))
    f.write_text("from gpt2_jax.config import base_config\n"
                 "def get_config():\n    c = base_config()\n    c.optim.lr = 'big'\n    return c\n")
    with pytest.raises(config_lib.ConfigError, match="optim|lr|float"):
        config_lib.load_config(str(f))
    with pytest.raises(config_lib.ConfigError, match="not found"):
        config_lib.load_config(str(tmp_path / "missing.py"))


@pytest.mark.parametrize("override, pattern", [
    ("model.n_embd=100", r"model\.n_embd: 100 is not divisible by model\.n_head=6"),
    ("train.steps=-1", r"train\.steps: must be >= 0"),
    ("data.seq_len=4096", r"data\.seq_len: 4096 exceeds the model's context"),
    ("model.dtype=float64", r"model\.dtype: 'float64' is not one of"),
    ("optim.schedule=cosin", r"did you mean 'cosine'"),
    ("model.resid_dropout=1.5", r"model\.resid_dropout: must be in \[0, 1\)"),
    ("model.preset=gpt3", r"model\.preset"),
    ("mesh.data=0", r"mesh\.data"),
    ("train.row_groups=-1", r"train\.row_groups: must be >= 0"),
    ("train.row_groups=5", r"train\.row_groups: 5 does not divide data\.batch_size"),
])
def test_impossible_values_are_one_line_errors(override, pattern):
    with pytest.raises(config_lib.ConfigError, match=pattern) as e:
        config_lib.load_config(DEFAULT, [override])
    assert "\n" not in str(e.value)


def test_saved_json_round_trips():
    cfg = config_lib.load_config(DEFAULT, ["--config.optim.lr=2e-4", "--config.model.n_head=4"])
    back = config_lib.from_dict(json.loads(config_lib.to_json(cfg)))
    assert back.to_dict() == cfg.to_dict()


def test_model_config_from_preset_and_tokenizer():
    cfg = config_lib.load_config(DEFAULT, ["--config.model.n_layer=3"])
    mc = config_lib.model_config(cfg, vocab_size=257)
    assert (mc.n_layer, mc.n_embd, mc.vocab_size) == (3, 192, 257)
    cfg = config_lib.load_config(DEFAULT, ["--config.model.preset=gpt2", "--config.model.vocab_size=50257",
                                           "--config.model.vocab_multiple=128"])
    mc = config_lib.model_config(cfg, vocab_size=257)
    assert (mc.n_layer, mc.n_embd, mc.vocab_size, mc.padded_vocab_size) == (12, 768, 50257, 50304)


def test_cli_reports_config_errors_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "gpt2_jax.cli", "train", "--config", DEFAULT,
                           "--config.optim.lrr=1e-3"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "gpt2-jax: error: unknown config key optim.lrr; did you mean optim.lr?"


# ----------------------------------------------------------------------------- fuzzed overrides

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

KEYS = sorted(config_lib.flatten(config_lib.base_config()))
ODD_VALUES = ["true", "false", "none", "null", "", "[]", "{}", "()", "1e999", "-1e999", "nan", "inf", "-inf", "0",
              "-1", "1e-300", "1e300", "None", "'", '"', "[1, 2]", "{'a': 1}", "--", "=", "lambda: 0",
              "__import__('os')", "\x00", "1_000", "0x10", "2**40", str(2 ** 63), str(-2 ** 63), "9" * 5000,
              "gpt2", "text:", "jsonl:x", "tfds:", "shakespeare/", "fsdp+tp", "batch=data", "1:0", "latest"]


def _typo(key: str, data) -> str:
    i = data.draw(st.integers(0, len(key) - 1))
    kind = data.draw(st.sampled_from(["drop", "double", "swap", "case", "section"]))
    if kind == "drop":
        return key[:i] + key[i + 1:]
    if kind == "double":
        return key[:i] + key[i] + key[i:]
    if kind == "swap" and i + 1 < len(key):
        return key[:i] + key[i + 1] + key[i] + key[i + 2:]
    if kind == "case":
        return key.upper()
    return key.split(".")[-1]  # the section left out


@st.composite
def overrides(draw):
    argv = []
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(KEYS))
        kind = draw(st.sampled_from(["valid"] * 6 + ["typo"] * 3 + ["random"]))  # mostly real keys
        if kind == "typo":
            key = _typo(key, draw(st.data()))
        elif kind == "random":
            key = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz._", max_size=20))
        value = draw(st.one_of(st.sampled_from(ODD_VALUES), st.integers(-2 ** 70, 2 ** 70).map(str),
                               st.sampled_from([-2 ** 63, -2 ** 31 - 1, -1, 0, 1, 2, 7, 2 ** 31, 2 ** 63]).map(str),
                               st.floats().map(repr), st.text(max_size=20)))
        argv.append(f"--config.{key}={value}")
    return argv


def _run_start(cfg) -> None:
    """What `gpt2-jax train` builds from a config before it reads data or touches devices."""
    from gpt2_jax.optim import optimizers
    from gpt2_jax.parallel import profiling, sharding

    config_lib.model_config(cfg)
    sharding.MeshSpec.from_config(cfg.mesh)
    sharding.logical_rules(cfg.mesh.rules)
    profiling.parse_steps(cfg.train.profile_steps)
    schedule, _ = optimizers.optimizer_from_config(cfg)
    for step in (0, cfg.train.steps):
        assert float(schedule(step)) >= 0


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=overrides())
def test_fuzzed_overrides_give_one_line_or_a_valid_start(argv, capsys, monkeypatch):
    from gpt2_jax.cli import app as cli
    from gpt2_jax.jobs import pretrain

    started = []
    monkeypatch.setattr(pretrain, "run", lambda cfg, say: started.append(cfg))  # stop at the start of training
    code = cli.main(["train", "--config", DEFAULT, "--quiet", *argv])
    err = capsys.readouterr().err
    if code == 0:
        assert len(started) == 1 and not err
        _run_start(started[0])
    else:
        assert code == 2 and err.count("\n") == 1 and err.startswith("gpt2-jax: error: "), (argv, err)
        assert "Traceback" not in err
