"""`gpt2-jax bench reward [--peer trl]`: reward tuning's completions scored per second and reward
curve, ours beside TRL's GRPOTrainer on the same weights (a Hugging Face export of the same
checkpoint), prompts, reward function, group size, completion length, KL weight and optimizer.

TRL is not a dependency of the project: install it apart (`pip install trl==1.16.0 accelerate
datasets`, e.g. with `--target DIR` on PYTHONPATH). The byte-level tokenizer reaches TRL as a
small `transformers.PreTrainedTokenizer` (`_byte_tokenizer`).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Callable

import jax
import numpy as np

from gpt2_jax import api
from gpt2_jax import config as config_lib
from gpt2_jax.train import loop, resume
from gpt2_jax.weights import huggingface

QUIET = lambda *a, **k: None  # noqa: E731


def _summary(name: str, rewards: list[float], kls: list[float], seconds: list[float], per_step: int) -> dict:
    """One row: completions scored per second over the timed steps (the first, compiling one left out)."""
    timed = seconds[1:]
    return {"implementation": name, "steps": len(rewards), "completions_per_s": per_step * len(timed) / sum(timed),
            "step_ms": 1e3 * statistics.median(timed), "reward_first5": float(np.mean(rewards[:5])),
            "reward_last5": float(np.mean(rewards[-5:])), "kl_last5": float(np.mean(kls[-5:])), "rewards": rewards}


def bench_ours(cfg, steps: int, build: Callable):
    """Our rollout + update, `steps` times, from cfg.checkpoint.init_from; (row, components, prompt texts).
    build(cfg, echo) makes the run's components (jobs.pretrain.build, handed down by the command)."""
    c = build(cfg, QUIET)
    s = loop.make_steps(c, echo=QUIET)
    state = resume.init_from(c, s, cfg.checkpoint.init_from, QUIET)
    frozen = c.task.prepare(c, s, QUIET)
    rewards, kls, seconds, prompts = [], [], [], []
    for step in range(steps):
        host = loop.train_batch(c, step)
        prompts += [c.tokenizer.decode([t for t in row if t != c.tokenizer.eos_id])
                    for row in host["prompts"].reshape(-1, host["prompts"].shape[-1]).tolist()]
        t0 = time.perf_counter()
        state, m = s.train(state, c.task.rollout(s, state, host, step), *frozen)
        m = jax.device_get(m)
        seconds.append(time.perf_counter() - t0)
        rewards.append(float(m["reward_mean"]))
        kls.append(float(m["kl"]))
    per_step = cfg.data.batch_size * cfg.reward.group_size
    return _summary("gpt2_jax (JAX)", rewards, kls, seconds, per_step), c, prompts


def _byte_tokenizer():
    """The byte tokenizer (ids 0..255, EOS 256) as a transformers tokenizer, for TRL."""
    from transformers import PreTrainedTokenizer

    class ByteTokenizer(PreTrainedTokenizer):
        model_input_names = ["input_ids", "attention_mask"]

        def __init__(self, **kw):
            super().__init__(eos_token="<|endoftext|>", pad_token="<|endoftext|>", **kw)

        @property
        def vocab_size(self):
            return 256

        def get_vocab(self):
            return {**{chr(i): i for i in range(256)}, "<|endoftext|>": 256}

        def _tokenize(self, text, **kw):
            return [chr(b) for b in text.encode("utf-8")]

        def _convert_token_to_id(self, token):
            return 256 if token == "<|endoftext|>" else ord(token)

        def _convert_id_to_token(self, i):
            return "<|endoftext|>" if i == 256 else chr(i)

        def convert_tokens_to_string(self, tokens):
            return bytes(ord(t) for t in tokens if len(t) == 1).decode("utf-8", "replace")

    return ByteTokenizer()


def bench_trl(cfg, c, prompts: list[str], steps: int, reward_fn: Callable) -> dict:
    """TRL's GRPOTrainer with the run's settings on the same prompts, in the same order."""
    try:
        import torch
        from datasets import Dataset
        from transformers import GPT2LMHeadModel, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as e:
        raise ValueError(f"--peer trl needs trl, accelerate and datasets ({e}); pip install trl==1.16.0 accelerate "
                         "datasets (a separate --target DIR on PYTHONPATH keeps the project's pins)") from None
    if c.tokenizer.spec().get("kind") != "byte":
        raise ValueError("bench reward --peer trl handles the byte tokenizer only")
    r = cfg.reward
    torch.manual_seed(cfg.train.seed)
    with tempfile.TemporaryDirectory() as tmp:
        w = api.load_weights(cfg.checkpoint.init_from)
        huggingface.save_hf_directory(f"{tmp}/hf", w.config, jax.device_get(w.params))
        model = GPT2LMHeadModel.from_pretrained(f"{tmp}/hf", torch_dtype=torch.float32)
        times: list[float] = []

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                times.append(time.perf_counter())

            def on_step_end(self, args, state, control, **kw):
                times[-1] = time.perf_counter() - times[-1]

        args = GRPOConfig(
            output_dir=f"{tmp}/out", max_steps=steps, per_device_train_batch_size=cfg.data.batch_size * r.group_size,
            num_generations=r.group_size, steps_per_generation=1, max_completion_length=r.completion_tokens,
            temperature=r.temperature, top_p=r.top_p, beta=r.kl_weight,
            top_k=r.top_k,  # 0 = off, as ours; None would let transformers apply its default top-k 50
            epsilon=r.clip or 0.2, num_iterations=r.inner_epochs, loss_type="dr_grpo", scale_rewards="group",
            learning_rate=cfg.optim.lr, lr_scheduler_type="constant_with_warmup", warmup_steps=cfg.optim.warmup_steps,
            adam_beta1=cfg.optim.b1, adam_beta2=cfg.optim.b2, weight_decay=cfg.optim.weight_decay,
            max_grad_norm=cfg.optim.grad_clip, shuffle_dataset=False, logging_steps=1, report_to="none",
            save_strategy="no", use_cpu=True, seed=cfg.train.seed, disable_dropout=True,
            bf16=False,  # TRL's default (bf16 unless fp16) is emulated on CPUs without bf16 units: ~20x slower
            gradient_checkpointing=False)  # TRL defaults it on, which decodes without a KV cache; ours keeps none

        def reward(prompts, completions, **kw):
            return [float(x) for x in reward_fn(prompts, completions)]

        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args,
                              train_dataset=Dataset.from_dict({"prompt": prompts}),
                              processing_class=_byte_tokenizer(), callbacks=[Clock()])
        trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    return _summary(f"TRL {__import__('trl').__version__} GRPOTrainer (PyTorch)", [h["reward"] for h in logs],
                    [h.get("kl", float("nan")) * r.completion_tokens for h in logs], times,
                    cfg.data.batch_size * r.group_size)


def bench_reward(config: str, steps: int, build: Callable, peer: str = "none", overrides: list[str] = ()) -> dict:
    """Both implementations on the experiment file `config` with `--config.*` overrides (its reward,
    prompts, seed and settings); build(cfg, echo) -> train.loop.Components (jobs.pretrain.build)."""
    if steps < 2:
        raise ValueError(f"bench reward --steps {steps}: need >= 2 (the first step compiles and is not timed)")
    cfg = config_lib.load_config(config, [*overrides, f"train.run_dir={tempfile.mkdtemp()}"])
    if not cfg.checkpoint.init_from:
        raise ValueError(f"{config} has no checkpoint.init_from: the peer needs the same starting weights")
    ours, c, prompts = bench_ours(cfg, steps, build)
    rows = [ours]
    if peer == "trl":
        rows.append(bench_trl(cfg, c, prompts, steps, c.task.reward_fn))
    elif peer != "none":
        raise ValueError(f"bench reward --peer {peer}: the peer is trl (or none)")
    return {"config": " ".join([config, *overrides]), "steps": steps, "completions_per_step": cfg.data.batch_size * cfg.reward.group_size,
            "completion_tokens": cfg.reward.completion_tokens, "rows": rows}


def curve_windows(steps: int, parts: int = 4) -> list[tuple[int, int]]:
    """The reward curve's windows: `parts` consecutive (start, end) step ranges covering 0..steps."""
    edges = [round(i * steps / parts) for i in range(parts + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def format_report(report: dict) -> str:
    """Two markdown tables (speed; the reward curve as means over quarters of the run), and ours over
    the peer's completions per second."""
    lines = [f"{report['config']}: {report['steps']} steps of {report['completions_per_step']} completions x "
             f"{report['completion_tokens']} tokens (the first step, compiling, untimed)", "",
             "| implementation | completions/s | step (median) | reward, steps 1-5 | reward, last 5 | KL, last 5 |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['implementation']} | {r['completions_per_s']:.1f} | {r['step_ms']:.0f} ms | "
                     f"{r['reward_first5']:.3f} | {r['reward_last5']:.3f} | {r['kl_last5']:.3f} |")
    windows = curve_windows(report["steps"])
    lines += ["", "| mean training reward, steps | " + " | ".join(f"{a + 1}-{b}" for a, b in windows) + " |",
              "|---|" + "---:|" * len(windows)]
    for r in report["rows"]:
        lines.append(f"| {r['implementation']} | " + " | ".join(
            f"{np.mean(r['rewards'][a:b]):.3f}" for a, b in windows) + " |")
    if len(report["rows"]) > 1:
        a, b = report["rows"][0], report["rows"][1]
        lines.append(f"\nours / peer: {a['completions_per_s'] / b['completions_per_s']:.2f}x completions per second")
    return "\n".join(lines)


def plot_curves(report: dict, path: str) -> str:
    """Each implementation's training reward per step (and its 5-step running mean) as a PNG at path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in report["rows"]:
        x = np.arange(1, len(r["rewards"]) + 1)
        line, = ax.plot(x, r["rewards"], alpha=0.3)
        k = min(5, len(x))
        ax.plot(x[k - 1:], np.convolve(r["rewards"], np.ones(k) / k, "valid"), color=line.get_color(),
                label=f"{r['implementation']} ({r['completions_per_s']:.1f} completions/s)")
    ax.set(xlabel="step", ylabel="mean reward of the step's completions", title=report["config"])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
