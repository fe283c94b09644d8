"""Data: text sources, tokenizers, and token splits prepared once and sampled statelessly.

TFDS is imported only when a TFDS-backed source (e.g. `shakespeare`) is read.
"""

from gpt2_jax.data.sources import canonical_source, count_documents, read_documents
from gpt2_jax.data.tokenizers import (ByteTokenizer, GPT2BPETokenizer, Tokenizer, from_spec,
                                      make_tokenizer)
from gpt2_jax.data.tokens import (TokenSplit, eval_batches, load_split, num_eval_batches,
                                  prepare_split, train_batch)

__all__ = [
    "ByteTokenizer", "GPT2BPETokenizer", "TokenSplit", "Tokenizer", "canonical_source",
    "count_documents", "eval_batches", "from_spec", "load_split", "make_tokenizer",
    "num_eval_batches", "prepare_split", "read_documents", "train_batch",
]
