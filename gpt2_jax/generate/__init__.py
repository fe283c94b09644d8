"""Decoding with a KV cache: prefill + while_loop sampling, beam search, streaming, buckets
(`decode`), how text longer than the context is handled (`window`), and transformers-compatible
logits processors (`processors`).

May import model/, data/, parallel/, optim/."""
