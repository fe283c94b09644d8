"""`gpt2-jax eval/table --generate N`: greedy continuations of N held-out passages of a dataset,
scored against their true continuations by BLEU and chrF (evaluate/continuations.py)."""

from __future__ import annotations

from typing import Sequence

from gpt2_jax import api
from gpt2_jax.evaluate import continuations
from gpt2_jax.evaluate import scoring
from gpt2_jax.generate import decode
from gpt2_jax.model import gpt2 as model_lib


def score_continuations(weights: api.Weights, texts: Sequence[str], n: int, *, prompt_tokens: int = 64,
                        new_tokens: int = 32, detokenizer: str = "none", batch_size: int = 8) -> dict:
    """bleu, chrf, their sacrebleu signatures, the number generated, three examples and the protocol
    line, for n passages of the texts: greedy decoding of new_tokens after each prompt_tokens prompt."""
    model = model_lib.GPT2(weights.config)
    context = weights.config.n_positions
    if prompt_tokens + new_tokens > context:
        raise ValueError(f"--generate-prompt {prompt_tokens} + --generate-tokens {new_tokens} exceed the model's "
                         f"{context}-token context; lower them")
    tok = weights.tokenizer
    documents = scoring.encode_documents(texts, tok, detokenizer, prepend_eos=False)
    picked = continuations.passages(documents, n, prompt_tokens, new_tokens)
    hypotheses = []
    for first in range(0, len(picked), batch_size):
        chunk = [p.prompt for p in picked[first:first + batch_size]]
        out = decode.generate(model, weights.params, chunk, new_tokens, temperature=0.0, eos_id=tok.eos_id)
        hypotheses += [tok.decode(t) for t in out.tokens]
    references = [tok.decode(p.reference) for p in picked]
    scores = continuations.overlap_scores(hypotheses, references)
    scores["examples"] = [{"prompt": tok.decode(p.prompt), "reference": r, "generated": h}
                          for p, r, h in list(zip(picked, references, hypotheses))[:3]]
    scores["generate_protocol"] = (
        f"BLEU/chrF: {n} greedy continuations of {new_tokens} tokens after {prompt_tokens}-token prompts at evenly "
        f"spaced places of the set, against the true next {new_tokens} tokens (sacrebleu {scores['bleu_signature']}; "
        f"{scores['chrf_signature']})")
    return scores
