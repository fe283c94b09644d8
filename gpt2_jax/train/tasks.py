"""What a task is: a batch builder + a loss + metrics, plugged into the one train step
(`steps.make_steps(..., task=)`) and the one loop (`loop.fit`, through `Components.task`).

Pre-training needs no task object (task None is the language-model path, unchanged). Any other
workflow (posttrain/: classification, prompt->completion, distillation; later reward tuning)
is an object with these members:

* `kind`: a short name ('lm', 'classify', 'sft', ...), saved in checkpoint meta with `describe()`.
* `train_ndims` / `eval_ndims`: {name: ndim} of the arrays of one (B, ...) batch dict; the train
  step gets them with a leading accumulation axis. Every array is split over the batch axes.
* `init_params(cfg, rng, seq_len)`: the boxed (logically partitioned) params: the GPT-2 tree,
  plus any extra top-level entries (a head, adapters) that `model_params` folds away.
* `model_params(params)`: the GPT-2 params the model applies (adapters merged, head dropped).
* `loss(params, model, batch, rng)`: (mean loss, {metric: scalar}); rng is None without dropout.
* `eval_step(params, model, batch)`: arrays (replicated to every process) that `evaluate` reads.
* `train_batch(split, seed, step, batch_size, seq_len, rows)`: numpy rows `rows` of the batch of
  micro-step `step`, a pure function of (seed, step) so resume is exact.
* `evaluate(eval_fn, params, split, batch_size, seq_len, max_batches, batch_sharding, progress,
  desc)`: {metric: value} over a split; 'loss' is required (floats are logged, the rest only
  lands in results.json).
* `describe()`: JSON for checkpoint meta; `report(run_dir, results)`: files written after the
  final evaluation (a list of paths, maybe empty).

Optional members for reward tuning (reward/task.py has them):

* `prepare(components, steps, echo)`: called once after the state is restored; returns the frozen
  arrays every train step gets after the batch (with `uses_reference = True`: the reference params,
  laid out by `steps.reference_sharding`, passed to `loss(params, model, batch, rng, reference)`).
* `rollout(steps, state, batch, step)`: called before each update with the host batch that
  `train_batch` built; returns the global batch dict the update reads, made with the current
  params, its randomness a pure function of (seed, step) so resume is exact.
* `inner_epochs`: updates taken on each batch (default 1).
* `step_shape(cfg)`: (sequences, tokens each) a step trains on, when they are not `data.batch_size`
  windows of `data.seq_len` (the loop's tokens/s and TFLOP/s count them).

Optional, for a task that needs frozen inputs in its step (distillation's teacher):
* `frozen_shapes()`: their boxed (logically partitioned) abstract tree; `steps.make_steps` places
  them on the mesh by the same rules as the params and calls `load_frozen(target)` (the tree of
  ShapeDtypeStructs with shardings) for the values. They are a third, non-donated argument of the
  jitted train step (never in the optimizer), and `loss(params, model, batch, rng, frozen)` gets them.
* `start_params(params, frozen)`: the fresh params seeded from them (e.g. copied teacher blocks).

`LMTask` below is the language-model task in this form (used when LoRA adapts a language model).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import jax
import numpy as np
from tqdm.auto import tqdm

from gpt2_jax.data import loader
from gpt2_jax.evaluate import scoring as evaluate
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.model import lora as lora_lib
from gpt2_jax.parallel import sharding
from gpt2_jax.train import steps as step_lib

LORA_KEY = lora_lib.KEY


def body_params(params: dict, lora: lora_lib.LoraSpec | None, extra: tuple[str, ...] = ()) -> dict:
    """The GPT-2 params of a task's tree: `extra` top-level entries and the adapters removed, the
    adapters merged into the kernels they adapt."""
    body = {k: v for k, v in params.items() if k not in (LORA_KEY, *extra)}
    return lora_lib.merge(body, params[LORA_KEY], lora) if lora is not None else body


def init_with_adapters(cfg: model_lib.GPT2Config, rng: jax.Array, seq_len: int | None,
                       lora: lora_lib.LoraSpec | None) -> tuple[dict, jax.Array]:
    """Boxed GPT-2 params (+ adapters under 'lora' when given) and an unused rng for a head."""
    body_rng, lora_rng, rest = jax.random.split(rng, 3)
    params = dict(model_lib.init_params(cfg, body_rng, seq_len))
    if lora is not None:
        params[LORA_KEY] = lora_lib.init_adapters(cfg, lora, lora_rng)
    return params, rest


def global_batch(shardings: dict, batch_size: int, make_rows: Callable[[slice], dict], batch_dim: int = 0) -> dict:
    """A dict of global arrays from the rows this process holds (make_rows(slice) -> dict of numpy)."""
    first = next(iter(shardings.values()))
    shape = [1] * len(first.spec)  # only the batch dim is split, so only its size matters
    shape[batch_dim] = batch_size
    local = make_rows(sharding.local_rows(first, shape, batch_dim))

    def one(key):
        x = local[key]
        full = (*x.shape[:batch_dim], batch_size, *x.shape[batch_dim + 1:])
        return jax.make_array_from_process_local_data(shardings[key], x, full)

    return {key: one(key) for key in shardings}


def example_batches(eval_fn: Callable, params, make_rows: Callable[[np.ndarray], dict], num_examples: int,
                    batch_size: int, batch_sharding: dict | None, max_batches: int | None = None,
                    progress: bool = False, desc: str = "eval") -> Iterator[tuple[np.ndarray, Any]]:
    """(example indices of the batch, -1 for padding rows; eval_fn's outputs on the host) for every
    example once, batch_size at a time, the last batch padded. The examples come in one fixed
    shuffled order, so the first max_batches batches are a sample of the whole split."""
    total = -(-num_examples // batch_size)
    if max_batches is not None:
        total = min(total, max_batches)
    padding = np.full(max(total * batch_size - num_examples, 0), -1)
    order = np.concatenate([np.random.default_rng(0).permutation(num_examples), padding])
    pending = []
    for b in tqdm(range(total), desc=desc, disable=not progress, leave=False):
        idx = order[b * batch_size:(b + 1) * batch_size]
        if batch_sharding is None:
            batch = make_rows(idx)
        else:
            batch = global_batch(batch_sharding, batch_size, lambda rows: make_rows(idx[rows]))
        pending.append((idx, eval_fn(params, batch)))
        if len(pending) > 2:  # fetch late so the device keeps working while the host waits
            i, out = pending.pop(0)
            yield i, jax.device_get(out)
    for i, out in pending:
        yield i, jax.device_get(out)


@dataclasses.dataclass(frozen=True)
class LMTask:
    """Next-token language modeling as a task, for fine-tuning a language model with LoRA adapters."""

    lora: lora_lib.LoraSpec | None = None
    label_smoothing: float = 0.0
    loss_chunk: int = 0
    kind: str = "lm"
    train_ndims = {"tokens": 2}
    eval_ndims = {"tokens": 2, "weights": 2}

    def init_params(self, cfg, rng, seq_len=None):
        """GPT-2 params, plus adapters."""
        return init_with_adapters(cfg, rng, seq_len, self.lora)[0]

    def model_params(self, params):
        """Adapters merged into the kernels."""
        return body_params(params, self.lora)

    def loss(self, params, model, batch, rng):
        """Mean next-token cross-entropy, as pre-training's."""
        return step_lib.lm_loss(self.model_params(params), model, batch["tokens"], rng, self.label_smoothing,
                                self.loss_chunk), {}

    def eval_step(self, params, model, batch):
        """(summed NLL, scored tokens) of a (B, T+1) window batch."""
        return step_lib.make_eval_step(model, self.loss_chunk)(self.model_params(params), batch["tokens"],
                                                               batch["weights"])

    def train_batch(self, split, seed, step, batch_size, seq_len, rows=None):
        """Windows of seq_len + 1 tokens, as pre-training samples them."""
        return {"tokens": loader.train_batch(split.tokens, seed, step, batch_size, seq_len, rows)}

    def evaluate(self, eval_fn, params, split, batch_size, seq_len, max_batches=None, batch_sharding=None,
                 progress=False, desc="eval"):
        """Perplexity metrics of evaluate_split."""
        fn = lambda p, tokens, weights: eval_fn(p, {"tokens": tokens, "weights": weights})
        return evaluate.evaluate_split(fn, params, split, batch_size, seq_len, max_batches, progress, desc,
                                       batch_sharding=None if batch_sharding is None else batch_sharding["tokens"])

    def describe(self) -> dict:
        """Checkpoint meta."""
        return {"kind": self.kind, "lora": self.lora.to_dict() if self.lora else None}

    def report(self, run_dir, results) -> list:
        """Nothing beyond the loss curve."""
        return []
