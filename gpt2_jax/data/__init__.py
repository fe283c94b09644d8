"""Data: text sources as TFDS data sources (`sources`, `shakespeare`, `local_files`), tokenizers
(`tokenizers`, `spm`), token splits prepared once (`tokens`) and stateless batch sampling (`loader`).

Imports nothing else of gpt2_jax; TFDS is imported only when a TFDS-backed source is read.
"""

from gpt2_jax.data.loader import Prefetcher, epochs_seen, eval_batches, num_eval_batches, train_batch
from gpt2_jax.data.sources import canonical_source, open_documents, read_documents, split_source
from gpt2_jax.data.spm import SentencePieceTokenizer, train_sentencepiece
from gpt2_jax.data.tokenizers import (
                                      ByteTokenizer,
                                      GPT2BPETokenizer,
                                      Tokenizer,
                                      from_spec,
                                      make_tokenizer,
                                      split_name,
                                      tokenizer_throughput,
)
from gpt2_jax.data.tokens import ShardedTokens, TokenSplit, load_split, prepare_split

__all__ = [
    "ByteTokenizer", "GPT2BPETokenizer", "Prefetcher", "SentencePieceTokenizer", "ShardedTokens", "TokenSplit",
    "Tokenizer", "split_name", "tokenizer_throughput", "train_sentencepiece",
    "canonical_source", "epochs_seen", "eval_batches", "from_spec", "load_split",
    "make_tokenizer", "num_eval_batches", "open_documents", "prepare_split", "read_documents",
    "split_source", "train_batch",
]
