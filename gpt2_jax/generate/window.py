"""How a prompt and its continuation fit the model's context.

`truncate` chooses: `slide` (the default) decodes past the context by sliding a window over the
text, as nanoGPT's sampler does: once the cache is full, the last `context - slide_step(context)`
tokens are prefilled again into a fresh cache and decoding goes on; `error` requires prompt +
max_new_tokens to fit one context; `left` keeps the end of a prompt too long for that.
"""

from __future__ import annotations

from typing import Sequence

TRUNCATE = ("slide", "error", "left")


def slide_step(context: int) -> int:
    """New tokens per window after the first: a quarter of the context, so each re-prefill keeps the
    last three quarters of the text as context (one prefill per `context // 4` tokens)."""
    return max(1, context // 4)


def first_window(prompts: Sequence[Sequence[int]], max_new_tokens: int, context: int) -> int:
    """New tokens decoded in the first window: all max_new_tokens when they fit beside the longest prompt."""
    return min(max_new_tokens, context - max(len(p) for p in prompts))


def next_prompts(sequences: Sequence[Sequence[int]], context: int) -> list[list[int]]:
    """The prompt of the next window for each row: its last `context - slide_step(context)` tokens."""
    keep = context - slide_step(context)
    return [list(s[-keep:]) for s in sequences]


def check_lengths(prompts: Sequence[Sequence[int]], max_new_tokens: int, context: int,
                  truncate: str = "slide", can_slide: bool = True) -> list[list[int]]:
    """Validated prompts (cut on the left when truncate='left'); one-line ValueErrors otherwise.
    can_slide=False (beam search) checks 'slide' as 'error': everything must fit one context."""
    if truncate not in TRUNCATE:
        raise ValueError(f"truncate={truncate!r} is not one of {', '.join(TRUNCATE)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if truncate == "slide" and can_slide:
        for i, p in enumerate(prompts):
            if len(p) >= context:
                raise ValueError(f"prompt {i} is {len(p)} tokens; the model's {context}-token context holds at "
                                 f"most {context - 1} with one new token; shorten it, or pass truncate='left' "
                                 f"(--truncate left) with max_new_tokens below {context}")
        return [list(p) for p in prompts]
    if max_new_tokens >= context:
        where = "" if can_slide else " (beam search decodes within one context)"
        hint = ", or pass truncate='slide' (--truncate slide) to decode past the context" if can_slide else ""
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
                         f"{context}-token context{where}; ask for at most {context - 1}{hint}")
    out = []
    for i, p in enumerate(prompts):
        room = context - max_new_tokens
        if len(p) > room:
            if truncate != "left":
                raise ValueError(f"prompt {i} is {len(p)} tokens; with max_new_tokens={max_new_tokens} the "
                                 f"{context}-token context leaves room for {room}; shorten it, lower "
                                 "max_new_tokens, or pass truncate='left' (--truncate left)")
            p = p[len(p) - room:]
        out.append(list(p))
    return out
