"""SentencePiece tokenizers: load a lossless `.model`, or train one on a source.

Only models whose encoding is reversible byte for byte are accepted: identity normalization,
no dummy prefix, no whitespace squeezing, byte fallback for characters outside the vocabulary.
`train_sentencepiece` writes such models (BPE or unigram), reproducibly for a given seed and
thread count. The one character SentencePiece cannot keep is its whitespace marker U+2581
itself (it decodes as a space), so `encode` spells a literal U+2581 with byte-fallback pieces.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import pathlib
import re
import time
from typing import Callable, Iterable, Iterator

import sentencepiece
from sentencepiece import sentencepiece_model_pb2

from gpt2_jax.data.tokenizers import Tokenizer, existing_file, file_entry

MODEL_TYPES = ("bpe", "unigram")
WHITESPACE_MARK = "\u2581"  # SentencePiece's spelling of a space inside pieces
CHUNK_CHARS = 2048  # training sentences are runs of whole lines up to this length
# A space after a non-space: a BPE piece spanning it would hold the mark after other characters.
_WORD_START = re.compile(r"(?<=[^ ]) ")
UNK_ID, EOS_ID = 0, 1  # then the 256 byte pieces, then learned pieces
LOSSLESS_HINT = ("retrain it with `gpt2-jax tokenizer train` (identity normalization, no dummy prefix, "
                 "byte fallback)")


class SentencePieceTokenizer(Tokenizer):
    """A lossless SentencePiece model: `decode_bytes(encode(text)) == text.encode()` for any text."""

    name = "sentencepiece"

    def __init__(self, path: os.PathLike | str):
        """Loads the `.model` file at `path`; raises ValueError if it is not lossless or has no EOS."""
        self._file = file_entry("model", existing_file(path))
        data = pathlib.Path(self._file["path"]).read_bytes()
        proto = parse_model(data, path)
        check_lossless(proto, path)
        self._processor = sentencepiece.SentencePieceProcessor(model_proto=data)
        self.vocab_size = self._processor.get_piece_size()
        self.eos_id = self._processor.eos_id()
        if self.eos_id < 0:
            raise ValueError(f"{path} defines no end-of-sequence piece; {LOSSLESS_HINT}")
        self._piece_bytes = [_piece_bytes(self._processor, i) for i in range(self.vocab_size)]
        self._mark_ids = [self._processor.piece_to_id(f"<0x{b:02X}>") for b in WHITESPACE_MARK.encode()]
        self._split_at_words = _pieces_stay_within_words(proto)

    @property
    def path(self) -> pathlib.Path:
        """Returns the resolved path of the `.model` file."""
        return pathlib.Path(self._file["path"])

    def encode(self, text: str) -> list[int]:
        """Returns the piece ids of `text`; special-piece text such as `</s>` is encoded as plain text."""
        if WHITESPACE_MARK not in text:
            return self._encode_unmarked(text)
        ids = []
        for n, part in enumerate(text.split(WHITESPACE_MARK)):
            if n:
                ids.extend(self._mark_ids)
            ids.extend(self._encode_unmarked(part))
        return ids

    def _encode_unmarked(self, text: str) -> list[int]:
        if not self._split_at_words or len(text) <= CHUNK_CHARS:
            return self._processor.encode(text)
        # SentencePiece's BPE slows down on long inputs; where no piece spans a word start, encoding
        # the text in pieces cut at word starts gives the same ids (BPE never merges across them).
        ids, start = [], 0
        while start < len(text):
            cut = _WORD_START.search(text, start + CHUNK_CHARS) if start + CHUNK_CHARS < len(text) else None
            end = cut.start() if cut else len(text)
            ids.extend(self._processor.encode(text[start:end]))
            start = end
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Returns the text of `ids`, dropping EOS and ids outside the vocabulary; never raises."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Returns the UTF-8 bytes of `ids` (byte pieces may end inside a character)."""
        table, n = self._piece_bytes, self.vocab_size
        return b"".join(table[i] for i in map(int, ids) if 0 <= i < n)

    def spec(self) -> dict:
        """Returns kind, vocab size, EOS id and the model file's path and sha256."""
        return {"kind": "sentencepiece", "vocab_size": self.vocab_size, "eos_id": self.eos_id,
                "files": [dict(self._file)]}


def parse_model(data: bytes, path: os.PathLike | str) -> sentencepiece_model_pb2.ModelProto:
    """Returns the parsed ModelProto of a `.model` file's bytes; ValueError if it is not one."""
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception:  # protobuf's DecodeError; its module path differs between implementations
        proto.Clear()
    if not proto.pieces:
        raise ValueError(f"{path} is not a SentencePiece model; pass a .model file or train one with "
                         "`gpt2-jax tokenizer train`")
    return proto


def check_lossless(proto: sentencepiece_model_pb2.ModelProto, path: os.PathLike | str) -> None:
    """Raises ValueError naming every setting of the model that would change text on a round trip."""
    norm = proto.normalizer_spec
    problems = []
    if norm.precompiled_charsmap or norm.name not in ("identity", ""):
        problems.append(f"normalization {norm.name!r}")
    if norm.add_dummy_prefix:
        problems.append("a dummy-prefix space")
    if norm.remove_extra_whitespaces:
        problems.append("whitespace squeezing")
    if not proto.trainer_spec.byte_fallback:
        problems.append("no byte fallback")
    if problems:
        raise ValueError(f"{path} is a lossy SentencePiece model ({', '.join(problems)}); {LOSSLESS_HINT}")


def _pieces_stay_within_words(proto: sentencepiece_model_pb2.ModelProto) -> bool:
    """True for a BPE model none of whose pieces holds the whitespace mark after another character."""
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
        return False
    if proto.normalizer_spec.escape_whitespaces is False or proto.trainer_spec.treat_whitespace_as_suffix:
        return False
    return not any(WHITESPACE_MARK in p.piece.lstrip(WHITESPACE_MARK) for p in proto.pieces)


def _piece_bytes(processor: sentencepiece.SentencePieceProcessor, i: int) -> bytes:
    if processor.is_byte(i):
        return bytes([int(processor.id_to_piece(i)[3:5], 16)])  # '<0xAB>'
    if processor.is_control(i) or processor.is_unknown(i) or processor.is_unused(i):
        return b""
    return processor.id_to_piece(i).replace(WHITESPACE_MARK, " ").encode("utf-8")


def training_chunks(texts: Iterable[str], max_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """Yields the texts cut into runs of whole lines of at most `max_chars` (longer lines are cut).

    SentencePiece learns pieces within one input sentence; whole lines keep line ends (and so
    pieces such as '.\\n') learnable while bounding the sentence length it must hold.
    """
    for text in texts:
        chunk = ""
        for line in text.splitlines(keepends=True):
            if chunk and len(chunk) + len(line) > max_chars:
                yield chunk
                chunk = ""
            while len(line) > max_chars:
                yield line[:max_chars]
                line = line[max_chars:]
            chunk += line
        if chunk:
            yield chunk


def train_sentencepiece(texts: Iterable[str] | str, out_path: os.PathLike | str, vocab_size: int,
                        model_type: str = "bpe", *, split: str = "train",
                        data_dir: os.PathLike | str = "~/tensorflow_datasets", seed: int = 0,
                        num_threads: int = 1, character_coverage: float = 0.9995,
                        max_sentences: int = 1_000_000, overwrite: bool = False,
                        echo: Callable[[str], None] | None = None) -> SentencePieceTokenizer:
    """Trains a lossless SentencePiece model on `texts` and writes it to `out_path`; returns it loaded.

    `texts` is an iterable of documents, or a source name (`shakespeare/plays`, `text:GLOB`, ...)
    whose `split` is read from `data_dir`. The model has `vocab_size` pieces: `<unk>` (id 0,
    never produced), `</s>` (id 1, the EOS), the 256 byte-fallback pieces, then learned ones.
    The same texts, `seed` and `num_threads` give the same file (the thread count changes unigram
    models). At most `max_sentences` chunks of <= 2048 characters are sampled (seeded).
    An existing different file at `out_path` is replaced only with `overwrite`.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model type {model_type!r} is not one of {', '.join(MODEL_TYPES)}")
    out = pathlib.Path(out_path).expanduser()
    say = echo or (lambda _: None)
    what = "the texts"
    if isinstance(texts, str):
        from gpt2_jax.data import sources  # pylint: disable=import-outside-toplevel
        what = f"{sources.canonical_source(texts)}:{split}"
        texts = sources.read_documents(texts, split, data_dir)
    counter = _Counter(texts, say)
    chunks = training_chunks(counter)
    first = next(chunks, None)
    if first is None:
        raise ValueError(f"{what} holds no text to train on; pass a source whose split has documents")
    say(f"training a {model_type} SentencePiece model of {vocab_size} pieces on {what}")
    start = time.perf_counter()
    data = _train(itertools.chain([first], chunks), vocab_size, model_type, seed=seed,
                  num_threads=num_threads, character_coverage=character_coverage,
                  max_sentences=max_sentences)
    _write_model(out, data, overwrite)
    tok = SentencePieceTokenizer(out)
    say(f"read {counter.documents} documents ({counter.chars / 1e6:.2f} M characters); wrote {out} "
        f"({tok.vocab_size} pieces, EOS id {tok.eos_id}) in {time.perf_counter() - start:.1f} s")
    return tok


class _Counter:
    """Passes texts through, counting documents and characters; says so every `every` characters."""

    def __init__(self, texts: Iterable[str], say: Callable[[str], None], every: int = 100_000_000):
        self._texts, self._say, self._every = texts, say, every
        self.documents = self.chars = 0

    def __iter__(self) -> Iterator[str]:
        for text in self._texts:
            self.documents += 1
            self.chars += len(text)
            if self.chars // self._every > (self.chars - len(text)) // self._every:
                self._say(f"read {self.documents} documents ({self.chars / 1e6:.0f} M characters)")
            yield text


def _train(chunks: Iterator[str], vocab_size: int, model_type: str, *, seed: int, num_threads: int,
           character_coverage: float, max_sentences: int) -> bytes:
    model = io.BytesIO()
    sentencepiece.set_random_generator_seed(seed)
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=chunks, model_writer=model, vocab_size=vocab_size, model_type=model_type,
            byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=False,
            remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, split_digits=False,
            character_coverage=character_coverage, num_threads=num_threads,
            input_sentence_size=max_sentences, shuffle_input_sentence=True,
            max_sentence_length=4 * CHUNK_CHARS, unk_id=UNK_ID, eos_id=EOS_ID, bos_id=-1, pad_id=-1,
            minloglevel=2)
    except RuntimeError as e:
        raise ValueError(_training_error(str(e), vocab_size)) from None
    return model.getvalue()


def _training_error(message: str, vocab_size: int) -> str:
    too_small = re.search(r"smaller than required_chars\. \d+ vs (\d+)", message)
    if too_small:
        return (f"vocab size {vocab_size} is too small: the byte pieces, special pieces and the text's "
                f"characters need {too_small.group(1)}; raise the vocab size to at least {too_small.group(1)}")
    too_large = re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", message)
    if too_large:
        return (f"vocab size {vocab_size} is too large for this text (at most {too_large.group(1)} pieces "
                f"can be learned); lower it to {too_large.group(1)} or less, or train on more text")
    return "SentencePiece training failed: " + " ".join(message.split())[-300:]


def _write_model(out: pathlib.Path, data: bytes, overwrite: bool) -> None:
    if out.is_file() and not overwrite and out.read_bytes() != data:
        old = hashlib.sha256(out.read_bytes()).hexdigest()[:12]
        raise ValueError(f"{out} already holds a different model (sha256 {old}…; checkpoints that use it "
                         "would no longer load); choose another output path or pass overwrite/--force")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, out)  # readers never see a half-written model
