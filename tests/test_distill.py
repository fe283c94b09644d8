"""Distillation through the one train step: the KD loss against references, the frozen teacher,
layer init, meshes, and the one-line errors for teachers a student cannot learn from."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt2_jax import config as config_lib
from gpt2_jax.checkpoint import export as export_lib
from gpt2_jax.cli import app as cli
from gpt2_jax.data import tokenizers
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.optim import optimizers
from gpt2_jax.parallel import sharding
from gpt2_jax.posttrain import build, distill
from gpt2_jax.posttrain import teacher as teacher_lib
from gpt2_jax.train import steps as step_lib
from gpt2_jax.weights import huggingface

ROOT = pathlib.Path(__file__).resolve().parents[1]
T = 16
# Student and teacher pad their tables to different multiples (64 and 72 rows for 61 ids).
STUDENT = model_lib.config_from_preset("nano", vocab_size=61, n_positions=32, vocab_multiple=16)
TEACHER = model_lib.config_from_preset("nano", vocab_size=61, n_positions=32, n_layer=4, vocab_multiple=8)


def _params(cfg, seed):
    return step_lib.strip_boxes(model_lib.init_params(cfg, jax.random.key(seed), T))


def _reader(params):
    return lambda target: jax.tree.map(lambda x, t: jax.device_put(x.astype(t.dtype), t.sharding), params, target)


def _task(teacher_params, teacher_cfg=TEACHER, **kw):
    return distill.DistillTask(loss_chunk=kw.pop("loss_chunk", 5), teacher_cfg=teacher_cfg,
                               read_teacher=_reader(teacher_params), **kw)


def _tokens(seed=0, rows=3):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 61, (rows, T + 1)).astype(np.int32))


def test_alpha_zero_gives_the_plain_steps_loss_and_gradients(chunk=5):  # 5 does not divide T=16: a padded tail
    model = model_lib.GPT2(STUDENT)
    params, teacher = _params(STUDENT, 0), _params(TEACHER, 1)
    batch = _tokens()
    plain = jax.jit(jax.value_and_grad(step_lib.lm_loss), static_argnums=(1, 4, 5))(params, model, batch, None, 0.0,
                                                                                   chunk)
    task = _task(teacher, alpha=0.0, loss_chunk=chunk)
    (loss, aux), grads = jax.jit(jax.value_and_grad(lambda p, b, t: task.loss(p, model, {"tokens": b}, None, t),
                                                    has_aux=True))(params, batch, teacher)
    assert float(aux["kl"]) > 1e-3  # the teacher is there and disagrees; alpha 0 weighs it out
    np.testing.assert_allclose(float(loss), float(plain[0]), rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, plain[1])


def test_a_student_equal_to_its_teacher_has_zero_kl_and_zero_distillation_gradient():
    cfg = STUDENT
    model, params = model_lib.GPT2(cfg), _params(cfg, 3)
    task = _task(params, teacher_cfg=cfg, alpha=1.0, temperature=2.0)
    (loss, aux), grads = jax.jit(jax.value_and_grad(lambda p, t: task.loss(p, model, {"tokens": _tokens()}, None, t),
                                                    has_aux=True))(params, params)
    assert abs(float(aux["kl"])) < 1e-7 and abs(float(loss)) < 1e-6
    assert float(aux["ce"]) == pytest.approx(float(aux["teacher_ce"]), rel=1e-6)
    ce_grads = jax.grad(step_lib.lm_loss)(params, model, _tokens(), None, 0.0, 0)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) < 1e-6
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(ce_grads)) > 1e-2  # what "zero" is compared with


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_chunked_kd_loss_equals_an_unchunked_numpy_reference():
    student, teacher = model_lib.GPT2(STUDENT), model_lib.GPT2(TEACHER)
    sp, tp = _params(STUDENT, 0), _params(TEACHER, 1)
    rng = np.random.default_rng(2)
    # scaled so the logits spread over a few nats (the init's embeddings are N(0, 0.02))
    hs, ht = (scale * rng.normal(size=(3, T, 64)).astype(np.float32) for scale in (10, 20))
    targets = rng.integers(0, 61, (3, T)).astype(np.int32)
    weights = np.ones((3, T), np.float32)
    weights[1, 9:] = 0
    temp = 1.7
    sums = jax.jit(lambda *a: distill.kd_sums(student, sp, a[0], teacher, tp, a[1], a[2], a[3], temp, chunk=5))(
        hs, ht, targets, weights)
    # numpy: the tied head on the real 61 rows of each table, whole sequence at once, float64
    s = hs.astype(np.float64) @ np.asarray(sp["wte"]["embedding"], np.float64)[:61].T
    t = ht.astype(np.float64) @ np.asarray(tp["wte"]["embedding"], np.float64)[:61].T
    pick = lambda logp: -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    log_ps, log_pt = _log_softmax(s / temp), _log_softmax(t / temp)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(-1)
    ref = {"ce": (pick(_log_softmax(s)) * weights).sum(), "teacher_ce": (pick(_log_softmax(t)) * weights).sum(),
           "kl": (kl * weights).sum(), "count": weights.sum()}
    for key, value in ref.items():
        assert float(sums[key]) == pytest.approx(value, rel=2e-5), key
    assert ref["kl"] > 1.0  # two different models: a KL worth checking


def _steps(task, trainable=None):
    opt = optimizers.make_optimizer(lr=1e-2, weight_decay=0.0, grad_clip=0.0)
    mesh = sharding.make_mesh(sharding.MeshSpec())
    return step_lib.make_steps(model_lib.GPT2(STUDENT), opt, lambda s: 1e-2, mesh, sharding.logical_rules("fsdp+tp"),
                               0, T, task=task, trainable=trainable)


def test_layer_init_copies_exactly_the_named_blocks_and_the_teacher_stays_frozen():
    teacher = jax.device_get(_params(TEACHER, 1))
    steps = _steps(_task(teacher, layers=(1, 3)))
    state = steps.init()
    p = jax.device_get(state.params)
    for i, j in ((0, 1), (1, 3)):
        jax.tree.map(np.testing.assert_array_equal, p[f"h_{i}"], teacher[f"h_{j}"])
    for key in ("wpe", "ln_f"):
        jax.tree.map(np.testing.assert_array_equal, p[key], teacher[key])
    np.testing.assert_array_equal(p["wte"]["embedding"][:61], teacher["wte"]["embedding"][:61])
    assert not np.array_equal(p["h_0"]["attn"]["qkv_kernel"], teacher["h_0"]["attn"]["qkv_kernel"])
    random = jax.device_get(_steps(_task(teacher)).init().params)  # student_init=random copies nothing
    assert not np.array_equal(random["h_0"]["attn"]["qkv_kernel"], teacher["h_1"]["attn"]["qkv_kernel"])
    # A step: the teacher is an argument, not donated, not in the optimizer state, unchanged.
    state, metrics = steps.train(state, {"tokens": np.asarray(_tokens(rows=4))[None]})
    assert set(metrics) >= {"loss", "ce", "kl", "teacher_ce"} and np.isfinite(float(metrics["loss"]))
    assert not any(x.is_deleted() for x in jax.tree.leaves(steps.frozen))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(steps.frozen), teacher)
    moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
    assert moments == 2 * model_lib.count_params(state.params)


def test_hidden_loss_is_zero_for_the_teachers_own_blocks():
    teacher = _params(TEACHER, 1)
    cfg = model_lib.config_from_preset("nano", vocab_size=61, n_positions=32, n_layer=4, vocab_multiple=8)
    task = _task(teacher, teacher_cfg=cfg, alpha=0.5, hidden_weight=1.0, hidden_pairs=((0, 0), (3, 3)))
    loss, aux = task.loss(teacher, model_lib.GPT2(cfg), {"tokens": _tokens()}, None, teacher)
    assert abs(float(aux["hidden"])) < 1e-6
    far = _task(teacher, teacher_cfg=cfg, hidden_weight=1.0, hidden_pairs=((0, 3),))
    assert float(far.loss(teacher, model_lib.GPT2(cfg), {"tokens": _tokens()}, None, teacher)[1]["hidden"]) > 1e-3


@pytest.mark.slow  # two compiles over 4 virtual devices: 60-100 s on the shared 2 cores
def test_four_devices_give_the_same_distillation_step_as_one():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "distill_probe.py")], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("REPORT ", 1)[1])
    assert report["devices"] == 4
    one, mesh = report["meshes"]["(1, 1, 1)"], report["meshes"]["(1, 2, 2)"]
    np.testing.assert_allclose(mesh["losses"], one["losses"], rtol=1e-5)
    np.testing.assert_allclose(mesh["kl"], one["kl"], rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(mesh["qkv"], one["qkv"], rtol=1e-4, atol=1e-6)
    assert mesh["teacher_spec"] == mesh["student_spec"] == "P('fsdp', None, 'tensor', None)"


# --------------------------------------------------------------------------- one-line errors


def _hf_teacher(tmp_path, cfg, name="teacher", tokenizer=None):
    path = tmp_path / name
    huggingface.save_hf_directory(path, cfg, jax.device_get(_params(cfg, 1)), tokenizer or tokenizers.ByteTokenizer())
    return path


def _cfg(teacher, *overrides):
    cfg = config_lib.base_config()
    for o in ("model.preset=nano", "model.n_positions=32", "data.seq_len=16", "task.kind='distill'",
              f"distill.teacher={str(teacher)!r}", *overrides):
        config_lib.apply_override(cfg, o)
    config_lib.validate(cfg)
    return cfg


def _distill_task(cfg):
    tok = tokenizers.make_tokenizer(cfg.data.tokenizer)
    return build.distill_task(cfg, config_lib.model_config(cfg, tok.vocab_size), tok)


def test_bad_teachers_and_layer_maps_are_one_line_errors(tmp_path):
    byte_teacher = model_lib.config_from_preset("nano", vocab_size=257, n_positions=32, n_layer=4)
    good = _hf_teacher(tmp_path, byte_teacher)
    task = _distill_task(_cfg(good, "distill.student_init='layers:1,3'"))
    assert task.layers == (1, 3) and task.teacher_cfg.n_layer == 4 and task.teacher_meta["kind"] == "hf"
    cases = [
        (_cfg(tmp_path / "nowhere"), r"distill.teacher: .*nowhere does not exist; point it at a run directory"),
        (_cfg(good, "data.tokenizer='gpt2'", "model.n_positions=32"),
         r"trained with tokenizer byte \(257 ids\), the student uses data.tokenizer=gpt2 \(50257 ids\)"),
        (_cfg(good, "model.n_positions=64"), r"has context 32, the student model.n_positions=64"),
        (_cfg(good, "distill.student_init='layers:1,7'"), r"teacher block 7 does not exist \(the teacher has 4"),
        (_cfg(good, "distill.student_init='layers:0,1'", "model.n_embd=32"),
         r"the student \(32 wide, 2 heads\) is narrower than the teacher \(64 wide, 2 heads\)"),
        (_cfg(good, "distill.hidden_weight=1.0", "model.n_embd=32"), r"distill.hidden_weight: the student is 32 wide"),
    ]
    for cfg, message in cases:
        with pytest.raises(config_lib.ConfigError, match=message) as e:
            _distill_task(cfg)
        assert "\n" not in str(e.value)
    checks = [("distill.student_init='layers:0'", r"names 1 teacher blocks but the student has model.n_layer=2"),
              ("distill.student_init='every other'", r"is not 'random' or 'layers:I,J,...'"),
              ("distill.alpha=1.5", r"distill.alpha: must be in \[0, 1\]")]
    for override, message in checks:
        with pytest.raises(config_lib.ConfigError, match=message):
            _cfg(good, override)
    with pytest.raises(config_lib.ConfigError, match=r"distill.teacher: is set but task.kind='lm'"):
        _cfg(good, "task.kind='lm'")


def test_a_missing_teacher_stops_the_train_command_in_one_line_before_any_data(tmp_path, capsys):
    code = cli.main(["train", "--config", str(ROOT / "experiments" / "distill_half.py"), "--quiet",
                     f"--config.distill.teacher={tmp_path}/none", f"--config.data.data_dir={tmp_path}/data",
                     f"--config.train.run_dir={tmp_path}/run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "none does not exist" in err, err
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


def test_distill_section_defaults_and_layer_spread():
    d = config_lib.base_config().distill
    assert (d.teacher, d.alpha, d.temperature, d.hidden_weight, d.student_init) == ("", 0.5, 2.0, 0.0, "random")
    assert teacher_lib.spread_layers(3, 6) == (1, 3, 5) and teacher_lib.spread_layers(2, 2) == (0, 1)


def test_plan_counts_the_teachers_bytes(tmp_path):
    from gpt2_jax.jobs import plan

    teacher_cfg = model_lib.config_from_preset("nano", vocab_size=257, n_positions=32, n_layer=4)
    cfg = _cfg(_hf_teacher(tmp_path, teacher_cfg), "data.batch_size=2")
    row = plan.plan_memory(cfg)
    assert row["teacher_bytes"] == 4 * model_lib.count_params(model_lib.param_shapes(teacher_cfg))
    assert row["total_bytes"] == 2 * row["param_bytes"] + row["optimizer_bytes"] + row["activation_bytes"] \
        + row["teacher_bytes"]
    assert "+ teacher 0.00 |" in plan.format_plan([row], 80)


@pytest.mark.slow  # three short CLI runs: ~2 min on the shared 2 cores
def test_a_distill_run_resumes_exactly_and_logs_its_terms(tmp_path):
    verse = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.\n"
    for split, n in (("train", 60), ("validation", 4), ("test", 4)):
        (tmp_path / "corpus" / split).mkdir(parents=True)
        (tmp_path / "corpus" / split / "a.txt").write_text(verse * n)
    teacher = _hf_teacher(tmp_path, model_lib.config_from_preset("nano", vocab_size=257, n_positions=32, n_layer=4))

    def train(run, steps):
        return cli.main(["train", "--config", str(ROOT / "experiments" / "distill_half.py"), "--quiet",
                         f"--config.distill.teacher={teacher}",
                         f"--config.data.source=text:{tmp_path}/corpus/{{split}}/*.txt",
                         f"--config.data.data_dir={tmp_path}/data", f"--config.train.run_dir={tmp_path}/{run}",
                         "--config.model.preset=nano", "--config.model.n_layer=2", "--config.model.n_positions=32",
                         "--config.data.seq_len=16", "--config.data.batch_size=4", "--config.optim.warmup_steps=2",
                         "--config.optim.schedule=constant",  # one schedule for the 4-step and the 8-step runs
                         f"--config.train.steps={steps}", "--config.train.eval_every=4", "--config.checkpoint.every=4",
                         "--config.train.log_every=2", "--config.train.sample_tokens=0",
                         "--config.train.tensorboard=false",
                         "--config.distill.student_init=layers:1,3", "--config.distill.hidden_weight=0.5"])

    assert train("straight", 8) == 0
    assert train("resumed", 4) == 0 and train("resumed", 8) == 0
    a, b = (json.loads((tmp_path / run / "results.json").read_text()) for run in ("straight", "resumed"))
    assert a["test_loss"] == b["test_loss"] and a["step"] == b["step"] == 8
    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    logged = next(r for r in rows if "kl" in r)
    assert {"ce", "kl", "teacher_ce", "hidden", "loss"} <= set(logged)
    task = export_lib.open_source(tmp_path / "straight").task
    assert task["kind"] == "distill" and task["student_init"] == [1, 3] and task["teacher"]["kind"] == "hf"
