"""Reward tuning as a task of the one train step and loop (train/tasks.py's members plus `prepare`,
`rollout`, `inner_epochs` and `uses_reference`).

Each step: `rollout` samples G completions of each of the step's B prompts with the jitted KV-cache
sampler (generate/decode.sample_arrays) from the current params, with a key folded from (seed,
step) so a resumed run samples the same; the reward scores them on the host; the update (jitted
once, the reference params a frozen, non-donated argument) takes the policy gradient with group
advantages, the optional PPO clip over inner epochs, and kl_weight x KL(policy || reference).
The policy's distribution in the loss is softmax(logits / temperature); top-k/top-p only shape
sampling. Evaluations score held-out bits per byte (what tuning costs the language model) and
rewards, KL and samples on fixed evaluation prompts, beside the reference's (computed once).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gpt2_jax.evaluate import scoring as evaluate_lib
from gpt2_jax.generate import decode
from gpt2_jax.generate import processors
from gpt2_jax.model import lora as lora_lib
from gpt2_jax.parallel import distributed, sharding
from gpt2_jax.reward import objective, report, rewards
from gpt2_jax.reward.logits import completion_logits
from gpt2_jax.reward.prompts import EVAL_SEED, Prompts, read_jsonl
from gpt2_jax.train import resume, tasks
from gpt2_jax.train import steps as step_lib


@dataclasses.dataclass(frozen=True)
class Settings:
    """The reward section's numbers the task uses (config/reward.py documents each)."""

    group_size: int = 4
    prompt_tokens: int = 32
    completion_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    kl_weight: float = 0.1
    kl_estimator: str = "k3"
    clip: float = 0.2
    inner_epochs: int = 1
    eval_prompts: int = 32
    samples_shown: int = 4

    @classmethod
    def from_config(cls, r) -> "Settings":
        """The fields of cfg.reward."""
        return cls(**{f.name: r[f.name] for f in dataclasses.fields(cls)})


class RewardTask:
    """Policy-gradient fine-tuning against a reward (see the module docstring)."""

    kind = "reward"
    uses_reference = True
    train_ndims = {"tokens": 3, "logp_old": 3, "mask": 3, "rewards": 2}  # (B, G, ...) per micro-batch
    eval_ndims = {"tokens": 2, "weights": 2}  # held-out text, as language modeling

    def __init__(self, settings: Settings, reward_fn: Callable, tokenizer, prompts: Prompts, seed: int = 0,
                 run_dir: str | None = None, lora: lora_lib.LoraSpec | None = None, reward_name: str = ""):
        self.s, self.reward_fn, self.tokenizer, self.prompts = settings, reward_fn, tokenizer, prompts
        self.seed, self.lora, self.reward_name = seed, lora, reward_name
        self.run_dir = pathlib.Path(run_dir).expanduser() if run_dir else None
        self.inner_epochs = settings.inner_epochs
        self.model = self.reference = self._fns = None
        self.done = 0  # the last step trained (names the evaluation in the samples table)
        self._reference_scores: dict[str, dict] = {}

    # ---------------------------------------------------------------- the members every task has
    def init_params(self, cfg, rng, seq_len=None):
        """GPT-2 params (+ adapters)."""
        return tasks.init_with_adapters(cfg, rng, seq_len, self.lora)[0]

    def model_params(self, params):
        """Adapters merged."""
        return tasks.body_params(params, self.lora)

    def loss(self, params, model, batch, rng, reference):
        """The clipped policy-gradient loss + kl_weight x KL to the reference, and the rollout's metrics."""
        s = self.s
        b, g, _ = batch["tokens"].shape
        prompts, targets = batch["tokens"][:, 0, :s.prompt_tokens], batch["tokens"][:, :, s.prompt_tokens:]
        targets, mask = targets.reshape(b * g, -1), batch["mask"].reshape(b * g, -1)
        logits = completion_logits(model, self.model_params(params), prompts, targets)
        logp, logp_all = objective.token_logprobs(logits, targets, s.temperature)
        ref_logits = completion_logits(model, jax.lax.stop_gradient(reference), prompts, targets)
        ref_logp, ref_all = objective.token_logprobs(ref_logits, targets, s.temperature)
        # One update per rollout: the sampling policy is these params, so ratio = 1 with no second forward.
        logp_old = (jax.lax.stop_gradient(logp) if self.inner_epochs == 1
                    else batch["logp_old"].reshape(b * g, -1))
        kl = objective.kl_per_token(logp, ref_logp, logp_all, ref_all, s.kl_estimator)
        advantages = objective.group_advantages(batch["rewards"]).reshape(-1)
        loss, metrics = objective.policy_loss(logp, logp_old, advantages, mask, kl, s.kl_weight, s.clip)
        r, tokens_held = batch["rewards"], jnp.maximum(jnp.sum(mask), 1.0)
        entropy = jnp.sum(objective.entropy_per_token(logp_all) * mask) / tokens_held
        return loss, {**metrics, "reward_mean": jnp.mean(r), "reward_min": jnp.min(r), "reward_max": jnp.max(r),
                      "entropy": entropy, "completion_length": jnp.sum(mask) / (b * g)}

    def eval_step(self, params, model, batch):
        """(summed NLL, scored tokens) of held-out text windows."""
        return step_lib.make_eval_step(model)(self.model_params(params), batch["tokens"], batch["weights"])

    def step_shape(self, cfg) -> tuple[int, int]:
        """(sequences, tokens each) a step trains on: G completions of each prompt, prompt + completion
        (the loop's tokens/s counts them)."""
        return cfg.data.batch_size * self.s.group_size, self.s.prompt_tokens + self.s.completion_tokens

    def train_batch(self, split, seed, step, batch_size, seq_len, rows=None):
        """The prompts of `step` (the rollout turns them into the update's batch)."""
        return {"prompts": self.prompts.train(split, seed, step, batch_size, rows)}

    def evaluate(self, eval_fn, params, split, batch_size, seq_len, max_batches=None, batch_sharding=None,
                 progress=False, desc="eval"):
        """Held-out loss/ppl/bits per byte, and reward, KL, entropy and length on the evaluation prompts,
        with the reference's reward (reward_reference) and samples of both."""
        fn = lambda p, tokens, weights: eval_fn(p, {"tokens": tokens, "weights": weights})
        out = evaluate_lib.evaluate_split(fn, params, split, batch_size, seq_len, max_batches, progress, desc,
                                          batch_sharding=None if batch_sharding is None else batch_sharding["tokens"])
        prompts = self.prompts.evaluation(split, self.s.eval_prompts)
        policy = self._score(self._fns["body"](params), prompts)
        key = str(split.path)
        if key not in self._reference_scores:  # the reference never changes: score it once per split
            self._reference_scores[key] = self._score(self.reference, prompts)
        ref = self._reference_scores[key]
        if distributed.is_primary() and self.run_dir is not None:
            title = f"step {self.done}, {split.header.get('split')} prompts"
            report.append_samples(self.run_dir / "samples.md", title, policy["samples"], ref["samples"])
        out.update(policy)
        out.update({"reward_reference": ref["reward"], "samples_reference": ref["samples"]})
        return out

    def describe(self) -> dict:
        """Checkpoint meta."""
        return {"kind": self.kind, "lora": self.lora.to_dict() if self.lora else None, "reward": self.reward_name,
                "group_size": self.s.group_size, "kl_weight": self.s.kl_weight, "kl_estimator": self.s.kl_estimator}

    def report(self, run_dir, results) -> list:
        """The reward and KL curves (reward_curves.png) beside samples.md."""
        return report.plot_curves(pathlib.Path(run_dir))

    # ---------------------------------------------------------------- the members of a rollout task
    def prepare(self, c, steps, echo=print) -> tuple:
        """Load the frozen reference (checkpoint.init_from's GPT-2 params, else the seeded init), jit the
        rollouts; returns (reference,) for the train step."""
        self.model = c.model
        source = c.cfg.checkpoint.init_from
        state = resume.init_from(c, steps, source, lambda *_: None) if source else steps.init()
        self.reference = jax.device_put(self.model_params(state.params), steps.reference_sharding)
        del state
        echo(f"reward: reference = {source or 'the seeded initialization'} (frozen); {self.reward_name}; "
             f"G={self.s.group_size}, {self.s.prompt_tokens}+{self.s.completion_tokens} tokens, "
             f"kl_weight {self.s.kl_weight} ({self.s.kl_estimator})")
        mesh, rules = steps.mesh, steps.rules
        jit = lambda fn, **kw: sharding.with_mesh(jax.jit(fn, **kw), mesh, rules)
        rollout_sh = {k: steps.train_batch_sharding[k] for k in ("tokens", "mask", "logp_old")}
        repl = sharding.replicated(mesh)
        self._fns = {
            "prompts_sharding": sharding.batch_sharding(mesh, rules, 3, 1),
            "rollout": jit(self._rollout_arrays, in_shardings=(steps.state_sharding.params,
                                                               sharding.batch_sharding(mesh, rules, 3, 1), None),
                           out_shardings=rollout_sh),
            "body": jit(self.model_params, in_shardings=(steps.state_sharding.params,),
                        out_shardings=steps.reference_sharding),
            "score": jit(self._eval_arrays, in_shardings=(steps.reference_sharding, steps.reference_sharding, repl,
                                                           None), out_shardings=repl),
        }
        return (self.reference,)

    def _sample(self, body, prompts, key):
        """(tokens (N, P + C), completions (N, C), mask (N, C)) of G samples per prompt row."""
        s = self.s
        arrays = processors.Settings.checked(s.temperature, s.top_k, s.top_p).arrays()
        out, mask = decode.sample_arrays(self.model, body, prompts, key, arrays, s.group_size, s.completion_tokens,
                                         self.tokenizer.eos_id)
        tokens = jnp.concatenate([jnp.repeat(prompts, s.group_size, axis=0), out], axis=1)
        return tokens, out, mask

    def _rollout_arrays(self, params, prompts, key):
        a, b, p = prompts.shape
        body = self.model_params(params)
        prompts = prompts.reshape(a * b, p)
        tokens, out, mask = self._sample(body, prompts, key)
        if self.inner_epochs == 1:  # the loss takes the sampling policy's log-probs from its own forward
            logp_old = jnp.zeros(out.shape, jnp.float32)
        else:
            logp_old, _ = objective.token_logprobs(completion_logits(self.model, body, prompts, out), out,
                                                   self.s.temperature)
        shape = lambda x: x.reshape(a, b, self.s.group_size, x.shape[-1])
        return {"tokens": shape(tokens), "mask": shape(mask), "logp_old": shape(logp_old)}

    def _eval_arrays(self, body, reference, prompts, key):
        tokens, out, mask = self._sample(body, prompts, key)
        logp, logp_all = objective.token_logprobs(completion_logits(self.model, body, prompts, out), out,
                                                  self.s.temperature)
        ref_logp, ref_all = objective.token_logprobs(completion_logits(self.model, reference, prompts, out), out,
                                                     self.s.temperature)
        kl = objective.kl_per_token(logp, ref_logp, logp_all, ref_all, "exact")
        entropy = objective.entropy_per_token(logp_all)
        return {"tokens": tokens, "mask": mask, "kl": jnp.sum(kl * mask, 1), "entropy": jnp.sum(entropy * mask, 1)}

    def texts(self, tokens: np.ndarray, mask: np.ndarray) -> tuple[list[str], list[str]]:
        """(prompt texts, completion texts) of host rows tokens (N, P + C), mask (N, C); EOS left out."""
        p, eos = self.s.prompt_tokens, self.tokenizer.eos_id
        prompts = [self.tokenizer.decode([t for t in row[:p] if t != eos]) for row in tokens.tolist()]
        completions = [self.tokenizer.decode([t for t, m in zip(row[p:], keep) if m and t != eos])
                       for row, keep in zip(tokens.tolist(), mask.tolist())]
        return prompts, completions

    def rollout(self, steps, state, batch, step):
        """The update's batch of `step`: samples of the current params, their log-probs and rewards."""
        prompts = batch["prompts"]
        a, b, _ = prompts.shape
        placed = tasks.global_batch({"prompts": self._fns["prompts_sharding"]}, b,
                                    lambda rows: {"prompts": prompts[:, rows]}, batch_dim=1)
        key = jax.random.fold_in(jax.random.key(self.seed), step)
        arrays = self._fns["rollout"](state.params, placed["prompts"], key)
        host = distributed.to_host({k: arrays[k] for k in ("tokens", "mask")})
        g, t = host["tokens"].shape[2:]
        texts = self.texts(host["tokens"].reshape(-1, t), host["mask"].reshape(a * b * g, -1))
        rewards = self.reward_fn(*texts).reshape(a, b, g)
        placed = tasks.global_batch({"rewards": steps.train_batch_sharding["rewards"]}, b,
                                    lambda rows: {"rewards": rewards[:, rows]}, batch_dim=1)
        self.done = step + 1
        return {**arrays, "rewards": placed["rewards"]}

    def _score(self, body, prompts: np.ndarray) -> dict:
        """Rewards, KL, entropy, length and samples of G completions of each evaluation prompt."""
        out = distributed.to_host(self._fns["score"](body, self.reference, prompts, jax.random.key(EVAL_SEED)))
        prompt_texts, completions = self.texts(out["tokens"], out["mask"])
        rewards = self.reward_fn(prompt_texts, completions)
        lengths = out["mask"].sum(1)
        g = self.s.group_size
        shown = [{"prompt": prompt_texts[i * g], "completion": completions[i * g], "reward": float(rewards[i * g])}
                 for i in range(min(self.s.samples_shown, len(prompts)))]
        return {"reward": float(rewards.mean()), "reward_min": float(rewards.min()),
                "reward_max": float(rewards.max()), "kl": float(out["kl"].mean()),
                "entropy": float(out["entropy"].sum() / max(lengths.sum(), 1)),
                "completion_length": float(lengths.mean()), "samples": shown}


def from_config(cfg, tokenizer, load_classifier: Callable | None = None) -> RewardTask:
    """The reward task of a validated config (task.kind=reward): its reward, prompts and settings;
    load_classifier(path) (api.load) opens a classifier run for reward.kind=classifier."""
    r = cfg.reward
    fixed = None
    if r.prompts:
        fixed = read_jsonl(r.prompts, r.prompt_field, tokenizer.encode, r.prompt_tokens, tokenizer.eos_id)
    name = {"lexical": f"lexical reward ({r.words})", "callable": f"reward {r.callable}",
            "classifier": f"P({r.label}) of {r.classifier}"}[r.kind]
    lora = lora_lib.LoraSpec(cfg.finetune.lora.rank, cfg.finetune.lora.alpha,
                             lora_lib.parse_targets(cfg.finetune.lora.targets)) if cfg.finetune.lora.rank else None
    return RewardTask(Settings.from_config(r), rewards.from_config(r, load_classifier), tokenizer,
                      Prompts(r.prompt_tokens, fixed), cfg.train.seed, cfg.train.run_dir, lora, name)
