"""Tests of data sources (TFDS catalog folders, text and JSONL builders) and sharded, parallel prepare."""

import json
import time

import numpy as np
import pytest
from test_data import _text_corpus as _corpus
from test_data import make_fake_sdist

from gpt2_jax.data import shakespeare, sources, tokenizers, tokens

BYTE = tokenizers.ByteTokenizer()


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory):
    """A TFDS data_dir holding a prepared dataset (the shakespeare builder, from a fake sdist)."""
    root = tmp_path_factory.mktemp("catalog")
    sdist = make_fake_sdist(root / "fake.tar.gz")
    for config in ("plays", "milton"):
        shakespeare.Shakespeare(config=config, data_dir=str(root / "tfds"), sdist_path=sdist).download_and_prepare(
            file_format="array_record")
    return root / "tfds"


def test_split_source_parsing():
    assert sources.split_source("shakespeare/plays:test") == ("shakespeare/plays", "test")
    assert sources.split_source("shakespeare") == ("shakespeare/plays", None)
    assert sources.split_source("tfds:lm1b") == ("tfds:lm1b", None)
    assert sources.split_source("tfds:lm1b:test") == ("tfds:lm1b", "test")
    assert sources.split_source("tfds:wiki40b/en:validation") == ("tfds:wiki40b/en", "validation")
    assert sources.split_source("tfds:huggingface:wikitext/wikitext-103-raw-v1") == (
        "tfds:huggingface:wikitext/wikitext-103-raw-v1", None)
    assert sources.split_source("tfds:huggingface:wikitext/wikitext-2-raw-v1:test") == (
        "tfds:huggingface:wikitext/wikitext-2-raw-v1", "test")
    assert sources.split_source("text:a/b:c/*.txt") == ("text:a/b:c/*.txt", None)
    assert sources.split_source("jsonl:data/*.jsonl:body") == ("jsonl:data/*.jsonl:body", None)
    with pytest.raises(ValueError, match="unknown data source 'wikitext'"):
        sources.split_source("wikitext")


def test_catalog_source_reads_a_prepared_data_dir(catalog_dir):
    docs = sources.open_documents("tfds:shakespeare/plays", "test", catalog_dir)
    local = sources.open_documents("shakespeare/plays", "test", catalog_dir)
    assert list(docs) == list(local) and len(docs) == 2 and docs[0].startswith("HAMLET")
    assert docs.fingerprint["kind"] == "tfds" and docs.fingerprint["num_examples"] == 2
    with pytest.raises(ValueError, match=r"has configs \['milton', 'plays'\].*tfds:shakespeare/milton"):
        sources.open_documents("tfds:shakespeare", "test", catalog_dir)
    with pytest.raises(ValueError, match=r"has no split 'dev'; choose one of \['train', 'validation', 'test'\]"):
        sources.open_documents("tfds:shakespeare/plays", "dev", catalog_dir)
    with pytest.raises(ValueError, match="has no feature 'body'.*set data.text_field"):
        sources.open_documents("tfds:shakespeare/plays", "test", catalog_dir, text_field="body")


def test_unprepared_catalog_dataset_fails_at_once(tmp_path):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as e:
        sources.open_documents("tfds:huggingface:wikitext/wikitext-103-raw-v1", "test", tmp_path)
    assert time.perf_counter() - start < 2.0  # never a download retry
    msg = str(e.value)
    assert "\n" not in msg and "is not prepared in" in msg and "download_and_prepare" in msg
    assert "copy DIR/wikitext" in msg


def test_text_and_jsonl_sources_are_tfds_builders(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"body": "one", "id": 1}\n\n{"body": "two\\nlines"}\n', encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"body": "three"}\n', encoding="utf-8")
    docs = sources.open_documents(f"jsonl:{tmp_path}/*.jsonl:body", "train", tmp_path / "tfds")
    assert list(docs) == ["one", "two\nlines", "three"] and docs[1] == "two\nlines"
    assert docs.fingerprint["kind"] == "local_files"
    assert list((tmp_path / "tfds" / "local_files").iterdir())  # an array_record dataset in data_dir
    (tmp_path / "b.jsonl").write_text('{"body": "four"}\n', encoding="utf-8")  # edits give a new dataset
    assert list(sources.read_documents(f"jsonl:{tmp_path}/*.jsonl:body", "train", tmp_path / "tfds"))[-1] == "four"
    with pytest.raises(ValueError, match=r"a.jsonl:1 has no string field 'text' \(has \['body', 'id'\]\)"):
        sources.open_documents(f"jsonl:{tmp_path}/a.jsonl:text", "train", tmp_path / "tfds")
    (tmp_path / "c.jsonl").write_text('{"body": "x"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match="c.jsonl:2 is not valid JSON"):
        sources.open_documents(f"jsonl:{tmp_path}/c.jsonl:body", "train", tmp_path / "tfds")
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.txt is empty; remove it or narrow the glob"):
        sources.open_documents(f"text:{tmp_path}/*.txt", "train", tmp_path / "tfds")


def test_parallel_prepare_equals_serial_and_shards_by_size(tmp_path):
    rng = np.random.default_rng(0)
    docs = ["".join(rng.choice(list("abc de\n"), size=int(n))) for n in rng.integers(50, 400, size=40)]
    source = _corpus(tmp_path, docs)
    serial = tokens.prepare_split(source, "train", BYTE, tmp_path / "one", show_progress=False, shard_bytes=2000)
    parallel = tokens.prepare_split(source, "train", BYTE, tmp_path / "two", show_progress=False, shard_bytes=2000,
                                    workers=2)
    a, b = tokens.load_split(serial), tokens.load_split(parallel)
    assert a.header["shards"] == b.header["shards"] and len(a.header["shards"]) > 3
    assert np.array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    expected = [256 if i == -1 else i for i in
                sum(([-1] * bool(k) + list(d.encode()) for k, d in enumerate(docs)), [])]
    assert np.asarray(a.tokens).tolist() == expected
    assert a.header["num_documents"] == 40 and a.header["tokenizer_hash"] == tokens.tokenizer_hash(BYTE)


def test_shard_size_limit_and_a_document_longer_than_any_shard(tmp_path):
    source = _corpus(tmp_path, ["a" * 30, "b" * 30, "c" * 30])
    split = tokens.load_split(tokens.prepare_split(source, "train", BYTE, tmp_path, show_progress=False,
                                                   max_shard_tokens=64))
    assert [s["num_tokens"] for s in split.header["shards"]] == [61, 31]  # whole documents per shard
    assert np.asarray(split.tokens[58:64]).tolist() == [98, 98, 98, 256, 99, 99]  # a slice across shards
    assert split.tokens[61] == 256 and split.tokens[-1] == 99 and len(split.tokens) == 92
    with pytest.raises(ValueError, match=r"document 0 of the split \(file .*/00.txt\) has 30 tokens, more "
                                         r"than a shard holds \(20\); split it into smaller documents"):
        tokens.prepare_split(source, "train", BYTE, tmp_path, show_progress=False, max_shard_tokens=20)


def test_header_made_with_another_tokenizer_is_refused(tmp_path):
    source = _corpus(tmp_path, ["Hello world!"])
    path = tokens.prepare_split(source, "train", BYTE, tmp_path, show_progress=False)
    gpt2 = tokenizers.make_tokenizer("gpt2")
    with pytest.raises(ValueError, match=r"header.json was made with tokenizer byte .* the config names gpt2"):
        tokens.load_split(path, gpt2)
    assert tokens.load_split(path, BYTE).num_tokens == 12


def test_damaged_prepared_split_is_rebuilt(tmp_path):
    source = _corpus(tmp_path, ["some text", "more"])
    path = tokens.prepare_split(source, "train", BYTE, tmp_path, show_progress=False)
    shard = path / tokens.load_split(path).header["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-3])  # cut short, as by a full disk
    with pytest.raises(ValueError, match="has 25 bytes, header says 14 uint16 tokens"):
        tokens.load_split(path)
    assert tokens.prepare_split(source, "train", BYTE, tmp_path, show_progress=False) == path
    assert tokens.load_split(path).num_tokens == 14


def test_empty_split_is_one_line(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="e.jsonl has no records"):
        tokens.prepare_split(f"jsonl:{tmp_path}/e.jsonl:text", "train", BYTE, tmp_path, show_progress=False)


def test_header_records_the_source_and_counts(tmp_path):
    source = _corpus(tmp_path, ["naïve café", "x y"])
    header = json.loads((tokens.prepare_split(source, "train", BYTE, tmp_path, show_progress=False)
                         / "header.json").read_text())
    assert header["num_chars"] == 13 and header["num_bytes"] == 15 and header["num_words"] == 4
    assert header["source"] == source and header["eos_placement"] == "between documents"


def test_split_after_at_works_for_every_source():
    assert sources.split_source("text:a:b/*.txt@validation") == ("text:a:b/*.txt", "validation")
    assert sources.split_source("shakespeare/milton@test") == ("shakespeare/milton", "test")
    assert sources.split_source("tfds:wiki40b/en@train[:10%]") == ("tfds:wiki40b/en", "train[:10%]")


def _held_out_parts(source, data_dir, fraction=0.05):
    return {part: sources.open_documents(source, f"{part}~holdout{fraction:g}", data_dir)
            for part in ("train", "validation", "test")}


def test_a_glob_without_split_gets_held_out_parts_of_whole_documents(tmp_path):
    (tmp_path / "docs").mkdir()
    texts = [f"document {i}: " + "word " * (i % 7 + 3) for i in range(60)]
    for i, text in enumerate(texts):
        (tmp_path / "docs" / f"{i:03d}.txt").write_text(text)
    source = f"text:{tmp_path}/docs/*.txt"
    assert not sources.has_own_splits(source) and sources.has_own_splits(f"text:{tmp_path}/{{split}}/*.txt")
    parts = _held_out_parts(source, tmp_path / "data")
    got = {part: list(docs) for part, docs in parts.items()}
    assert [len(got[p]) for p in ("train", "validation", "test")] == [54, 3, 3]  # round(0.05 * 60) each
    assert sorted(got["train"] + got["validation"] + got["test"]) == sorted(texts)  # a partition, whole documents
    assert not set(got["test"]) & set(got["train"]) and not set(got["validation"]) & set(got["train"])
    assert got == {part: list(docs) for part, docs in _held_out_parts(source, tmp_path / "data").items()}
    assert all(got[p] == [t for t in texts if t in got[p]] for p in got)  # each part keeps document order
    cut = parts["test"].fingerprint["holdout"]
    assert cut == {"part": "test", "fraction": 0.05, "of_documents": 60, "by": "documents", "documents": 3}


def test_a_single_file_is_cut_by_characters_and_tokenized_apart(tmp_path):
    text = "".join(f"line {i} of the only file\n" for i in range(400))
    (tmp_path / "one.txt").write_text(text)
    source = f"text:{tmp_path}/one.txt"
    parts = _held_out_parts(source, tmp_path / "data", 0.1)
    train, validation, test = (parts[p][0] for p in ("train", "validation", "test"))
    assert train + validation + test == text and len(test) == len(validation) == round(0.1 * len(text))
    assert text.endswith(test) and text.startswith(train)
    path = tokens.prepare_split(source, "test~holdout0.1", BYTE, tmp_path / "data", show_progress=False)
    split = tokens.load_split(path, BYTE)
    assert BYTE.decode(np.asarray(split.tokens).tolist()) == test
    assert split.header["source_fingerprint"]["holdout"]["by"] == "characters"
    assert sources.split_source(f"{source}@test~holdout0.1") == (source, "test~holdout0.1")
    with pytest.raises(ValueError, match=r"is a held-out part, which only a text:/jsonl: source without \{split\}"):
        sources.open_documents(f"text:{tmp_path}/{{split}}.txt", "test~holdout0.1", tmp_path / "data")
    with pytest.raises(ValueError, match=r"held-out fraction must be in \(0, 0.5\), got 0.7"):
        sources.open_documents(source, "test~holdout0.7", tmp_path / "data")
