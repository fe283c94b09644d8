"""Tests of gpt2_jax.data.tokenizers and .spm: byte, GPT-2 BPE and SentencePiece tokenizers.

GPT-2 BPE is checked against a tiktoken `gpt2` Encoding built here, offline, from tiktoken's own
definition (its pre-tokenization regex and OpenAI's file hashes) and the packaged files; every
tokenizer must give back the exact bytes of every Shakespeare play and of adversarial text.
"""

import base64
import hashlib
import json
import random
import shutil

import pytest
import sentencepiece
import tiktoken
import tiktoken.load
from tiktoken_ext import openai_public

from gpt2_jax import config as config_lib
from gpt2_jax.cli import app as cli
from gpt2_jax.data import sources, spm
from gpt2_jax.data import tokenizers as tk
from gpt2_jax.jobs import pretrain

VARIED = ("Hello world! It's 2024: naïve café, Straße, \u4e2d\u6587, emoji 🙂🎉.\n\n"
          "  Indented\tline with  double  spaces,\r\nCRLF, 'quotes' and \"more\" — dashes… 1234567.\n")
ADVERSARIAL = [
    "🙂🎉 👍🏽 🇺🇳 🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",  # modifiers, flags, tag sequence
    "👨\u200d👩\u200d👧\u200d👦 👩🏽\u200d💻 ❤️\u200d🔥 \u200d lone joiner",  # ZWJ sequences
    "e\u0301 a\u0308\u0304 Z\u0351\u0364\u036b\u0489 \u0301 starts with a combining mark",
    "中文字符和日本語のかな、한국어 テキスト",
    "שָׁלוֹם עולם مرحبا بالعالم \u202eoverride\u202c \u200fmark",  # RTL scripts and bidi controls
    "".join(map(chr, range(32))) + "\x7f\x85\xa0\u200b\u2028\u2029\ufeff\ufffd",  # C0 (NUL too), C1, separators
    "NUL\x00inside\x00\x00",
    " " * 1000 + "x" + " " * 257,
    "\n" * 300 + "y\r\n\r\n" + "\t" * 50 + " \n \n",
    "   leading and trailing   ",
    "<|endoftext|> literal, twice <|endoftext|><|endoftext|>",
    "<unk></s><s> SentencePiece's specials and its whitespace mark \u2581 \u2581\u2581x\u2581",
    "\U0001d54f\U0001d4b3 math letters, \U00010348 Gothic, \U0010fffd plane 16",
    "no-spaces-" * 500 + " then words " * 300,  # longer than spm.CHUNK_CHARS, with and without cuts
    "",
]
# sha256 of OpenAI's GPT-2 files, as tiktoken_ext.openai_public.gpt2() checks them after download.
OPENAI_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
OPENAI_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


@pytest.fixture(scope="module")
def gpt2():
    return tk.make_tokenizer("gpt2")


@pytest.fixture(scope="module")
def reference_gpt2():
    """tiktoken's `gpt2` Encoding, as `tiktoken.get_encoding('gpt2')` builds it, from the local files."""
    encoder, merges = tk.default_files()
    assert hashlib.sha256(merges.read_bytes()).hexdigest() == OPENAI_VOCAB_BPE_SHA256
    assert hashlib.sha256(encoder.read_bytes()).hexdigest() == OPENAI_ENCODER_JSON_SHA256
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(merges), str(encoder))
    return tiktoken.Encoding(name="gpt2", pat_str=openai_public.r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={openai_public.ENDOFTEXT: 50256}, explicit_n_vocab=50257)


@pytest.fixture(scope="module")
def plays(pytestconfig, tmp_path_factory):
    """Every play of the real `shakespeare/plays` corpus, {split: [text]}; fetched once per machine."""
    cache = getattr(pytestconfig, "cache", None)  # None under -p no:cacheprovider
    data_dir = cache.mkdir("shakespeare_tfds") if cache else tmp_path_factory.mktemp("shakespeare_tfds")
    return {split: list(sources.read_documents("shakespeare/plays", split, data_dir))
            for split in ("train", "validation", "test")}


@pytest.fixture(scope="module")
def spm_models(plays, tmp_path_factory):
    """A SentencePiece model of 1000 pieces of each type, trained on two plays of the train split."""
    folder = tmp_path_factory.mktemp("spm")
    return {kind: spm.train_sentencepiece(plays["train"][:2], folder / f"{kind}.model", 1000, kind)
            for kind in spm.MODEL_TYPES}


@pytest.fixture(params=spm.MODEL_TYPES)
def spm_tok(request, spm_models):
    return spm_models[request.param]


def test_byte_roundtrip_non_ascii():
    tok = tk.make_tokenizer("byte")
    ids = tok.encode(VARIED)
    assert ids == list(VARIED.encode("utf-8")) and max(ids) < 256
    assert tok.decode(ids) == VARIED
    assert (tok.vocab_size, tok.eos_id, tok.name) == (257, 256, "byte")


def test_byte_decode_never_raises():
    tok = tk.ByteTokenizer()
    assert tok.decode([0xE4, 0xB8, 65]) == "\ufffdA"  # truncated 3-byte sequence
    assert tok.decode([72, 256, 105, 999, -1]) == "Hi"  # EOS and out-of-range ids dropped
    assert tok.decode([]) == ""


def test_byte_spec_roundtrip():
    spec = tk.ByteTokenizer().spec()
    assert json.loads(json.dumps(spec)) == spec
    assert isinstance(tk.from_spec(spec), tk.ByteTokenizer)


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("Hello world!") == [15496, 995, 0]
    assert (gpt2.vocab_size, gpt2.eos_id, gpt2.name) == (50257, 50256, "gpt2")
    assert gpt2.decode([gpt2.eos_id]) == "<|endoftext|>"


def test_gpt2_roundtrip_and_special_text(gpt2):
    assert gpt2.decode(gpt2.encode(VARIED)) == VARIED
    ids = gpt2.encode("a<|endoftext|>b")
    assert gpt2.eos_id not in ids and gpt2.decode(ids) == "a<|endoftext|>b"


def test_gpt2_decode_never_raises(gpt2):
    emoji = gpt2.encode("🙂")
    assert len(emoji) > 1
    assert "\ufffd" in gpt2.decode(emoji[:1])  # half a character
    assert gpt2.decode([15496, 50300, -5, 995]) == "Hello world"  # ids past the vocab dropped


def test_ranks_match_tiktoken_reference(gpt2):
    encoder, merges = tk.default_files()
    reference = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(merges), str(encoder))
    assert tk.ranks_from_merges(merges.read_text(encoding="utf-8")) == reference


def test_bytes_to_unicode_is_gpt2s_alphabet():
    mapping = tk.bytes_to_unicode()
    assert len(mapping) == 256 and len(set(mapping.values())) == 256
    assert mapping[ord("!")] == "!" and mapping[ord(" ")] == "Ġ" and mapping[ord("\n")] == "Ċ"
    assert list(mapping)[:3] == [ord("!"), ord('"'), ord("#")]


def test_all_loaders_agree(gpt2, tmp_path):
    encoder, merges = tk.default_files()
    hf = tmp_path / "hf"
    hf.mkdir()
    shutil.copy(encoder, hf / "vocab.json")
    shutil.copy(merges, hf / "merges.txt")
    reference = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(merges), str(encoder))
    lines = [f"{base64.b64encode(t).decode()} {r}" for t, r in reference.items()]
    (tmp_path / "gpt2.tiktoken").write_text("\n".join(lines) + "\n", encoding="utf-8")

    loaded = [tk.make_tokenizer(f"gpt2:{hf}"), tk.make_tokenizer(f"gpt2:{tmp_path / 'gpt2.tiktoken'}"),
              tk.GPT2BPETokenizer.from_encoder_json(encoder, merges)]
    want = gpt2.encode(VARIED)
    for tok in loaded:
        assert tok.encode(VARIED) == want
        assert (tok.vocab_size, tok.eos_id) == (50257, 50256)
    assert [t.spec()["format"] for t in loaded] == ["hf", "tiktoken", "encoder_json"]


def test_save_tiktoken_roundtrip(gpt2, tmp_path):
    gpt2.save_tiktoken(tmp_path / "x.tiktoken")
    tok = tk.GPT2BPETokenizer.from_path(tmp_path / "x.tiktoken")
    assert tok.encode(VARIED) == gpt2.encode(VARIED)


def test_spec_records_files_and_rebuilds(gpt2, tmp_path):
    spec = gpt2.spec()
    assert json.loads(json.dumps(spec)) == spec
    assert spec["packaged"] and [f["role"] for f in spec["files"]] == ["encoder.json", "vocab.bpe"]
    assert all(len(f["sha256"]) == 64 for f in spec["files"])
    assert tk.from_spec(spec).encode("Hello world!") == [15496, 995, 0]

    tampered = json.loads(json.dumps(spec))
    tampered["files"][1]["sha256"] = "0" * 64
    with pytest.raises(ValueError, match="sha256"):
        tk.from_spec(tampered)


def test_spec_of_local_files_uses_their_paths(tmp_path):
    encoder, merges = tk.default_files()
    shutil.copy(encoder, tmp_path / "encoder.json")
    shutil.copy(merges, tmp_path / "vocab.bpe")
    spec = tk.make_tokenizer("gpt2", path=tmp_path).spec()
    assert not spec["packaged"] and spec["files"][0]["path"] == str(tmp_path / "encoder.json")
    assert tk.from_spec(spec).encode("Hello") == [15496]


def test_bad_inputs_give_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer 'wordpiece'"):
        tk.make_tokenizer("wordpiece")
    with pytest.raises(ValueError, match="needs its model file"):
        tk.make_tokenizer("sentencepiece")
    with pytest.raises(ValueError, match="'byte' takes no path"):
        tk.make_tokenizer("byte:/x")
    with pytest.raises(ValueError, match="unexpected options"):
        tk.make_tokenizer("byte", path="x")
    with pytest.raises(FileNotFoundError, match="expected a .tiktoken file or a folder"):
        tk.make_tokenizer(f"gpt2:{tmp_path}")
    (tmp_path / "bad.tiktoken").write_text("not base64!! x\n")
    with pytest.raises(ValueError, match="bad.tiktoken:1"):
        tk.GPT2BPETokenizer.from_tiktoken(tmp_path / "bad.tiktoken")
    with pytest.raises(ValueError, match="unknown kind"):
        tk.from_spec({"kind": "wordpiece"})


def test_mismatched_vocab_and_merges_rejected(tmp_path):
    encoder, merges = tk.default_files()
    lines = merges.read_text(encoding="utf-8").splitlines()
    lines[1], lines[2] = lines[2], lines[1]  # swap two merges: ranks no longer match the ids
    (tmp_path / "vocab.bpe").write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match="do not belong together"):
        tk.GPT2BPETokenizer.from_encoder_json(encoder, tmp_path / "vocab.bpe")


def test_gpt2_ids_match_tiktoken_on_adversarial_text(gpt2, reference_gpt2):
    for text in ADVERSARIAL:
        ids = gpt2.encode(text)
        assert ids == reference_gpt2.encode_ordinary(text), text
        assert gpt2.decode_bytes(ids) == text.encode("utf-8") and gpt2.decode(ids) == text


def test_gpt2_matches_tiktoken_and_roundtrips_every_play(gpt2, reference_gpt2, plays):
    texts = [text for split in plays.values() for text in split]
    assert len(texts) == 42
    for text in texts:
        ids = gpt2.encode(text)
        assert ids == reference_gpt2.encode_ordinary(text)
        assert gpt2.decode_bytes(ids) == text.encode("utf-8")


def test_byte_tokenizer_roundtrips_adversarial_text_and_arbitrary_bytes():
    tok = tk.ByteTokenizer()
    for text in ADVERSARIAL:
        assert tok.decode(tok.encode(text)) == text
    invalid = [b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\x80abc"]
    data = bytes(range(256)) + b"".join(invalid) + random.Random(0).randbytes(4096)
    assert tok.decode_bytes(list(data)) == data
    for raw in invalid:  # not UTF-8: decode replaces, never raises
        assert "\ufffd" in tok.decode(list(raw))


def test_tokenizer_throughput_counts_one_pass(gpt2):
    texts = [VARIED, ADVERSARIAL[3]]
    report = tk.tokenizer_throughput(gpt2, texts, rounds=2)
    assert report["bytes"] == sum(len(t.encode("utf-8")) for t in texts)
    assert report["tokens"] == sum(len(gpt2.encode(t)) for t in texts)
    assert report["mb_per_s_per_core"] > 0 and report["wall_mb_per_s"] > 0 and report["tokenizer"] == "gpt2"
    with pytest.raises(ValueError, match="non-empty"):
        tk.tokenizer_throughput(gpt2, [""])


def test_spm_roundtrips_adversarial_text_and_every_play(spm_tok, plays):
    reference = sentencepiece.SentencePieceProcessor(model_file=str(spm_tok.path))
    for text in ADVERSARIAL:
        ids = spm_tok.encode(text)
        assert spm_tok.decode_bytes(ids) == text.encode("utf-8") and spm_tok.decode(ids) == text, text
        assert all(0 <= i < spm_tok.vocab_size and i != spm_tok.eos_id for i in ids)
        if "\u2581" not in text:
            assert ids == reference.encode(text)
    assert spm_tok._split_at_words == (spm_tok.path.stem == "bpe")  # BPE cuts long texts at word starts
    for text in (t for split in plays.values() for t in split):
        ids = spm_tok.encode(text)
        assert ids == reference.encode(text) and spm_tok.decode(ids) == text
    hamlet = plays["test"][0]
    assert len(spm_tok.encode(hamlet)) < len(hamlet.encode("utf-8")) / 2  # it learned pieces


def test_spm_layout_and_specials(spm_tok):
    assert (spm_tok.vocab_size, spm_tok.eos_id, spm_tok.name) == (1000, 1, "sentencepiece")
    assert spm_tok.decode([spm_tok.eos_id, 0, 5000, -1]) == ""  # EOS, <unk>, ids past the vocab dropped
    assert spm_tok.decode_bytes(spm_tok.encode("\u2581")) == "\u2581".encode("utf-8")
    assert spm_tok.decode_bytes([2 + 0xE4, 2 + 0xB8]) == b"\xe4\xb8"  # byte pieces follow <unk>, </s>
    assert spm_tok.decode([2 + 0xE4, 2 + 0xB8]) == "\ufffd"


def test_spm_spec_rebuilds_and_checks_hash(spm_tok, tmp_path):
    spec = spm_tok.spec()
    assert json.loads(json.dumps(spec)) == spec and spec["kind"] == "sentencepiece"
    again = tk.from_spec(spec)
    assert again.encode(VARIED) == spm_tok.encode(VARIED)
    assert tk.make_tokenizer(f"sentencepiece:{spm_tok.path}").spec() == spec
    assert tk.make_tokenizer("sentencepiece", path=spm_tok.path).spec() == spec
    proto = spm.parse_model(spm_tok.path.read_bytes(), spm_tok.path)
    proto.trainer_spec.model_prefix = "edited"  # a valid model that encodes the same, with another hash
    copy = tmp_path / "copy.model"
    copy.write_bytes(proto.SerializeToString())
    assert tk.make_tokenizer(f"sentencepiece:{copy}").encode(VARIED) == spm_tok.encode(VARIED)
    moved = {**spec, "files": [{**spec["files"][0], "path": str(copy)}]}
    with pytest.raises(ValueError, match="sha256"):
        tk.from_spec(moved)


def test_spm_training_is_reproducible_and_guards_the_output(plays, tmp_path):
    texts = [plays["validation"][0][:50_000]]
    first = spm.train_sentencepiece(texts, tmp_path / "a.model", 400)
    spm.train_sentencepiece(texts, tmp_path / "b.model", 400)
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    spm.train_sentencepiece(texts, tmp_path / "a.model", 400)  # the same model again: nothing to guard
    with pytest.raises(ValueError, match="already holds a different model"):
        spm.train_sentencepiece(texts, tmp_path / "a.model", 500)
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert spm.train_sentencepiece(texts, tmp_path / "a.model", 500, overwrite=True).vocab_size == 500
    assert first.vocab_size == 400


def test_spm_training_errors_say_the_fix(tmp_path):
    text = ["a few words of text, a few words\n"] * 3
    with pytest.raises(ValueError, match=r"too small: .* at least \d+"):
        spm.train_sentencepiece(text, tmp_path / "x.model", 100)
    with pytest.raises(ValueError, match=r"too large for this text .* lower it to \d+ or less"):
        spm.train_sentencepiece(text, tmp_path / "x.model", 5000)
    with pytest.raises(ValueError, match="holds no text to train on"):
        spm.train_sentencepiece(["", ""], tmp_path / "x.model", 300)
    with pytest.raises(ValueError, match="model type 'wordpiece'"):
        spm.train_sentencepiece(text, tmp_path / "x.model", 300, "wordpiece")
    assert not (tmp_path / "x.model").exists()


def test_spm_rejects_lossy_and_foreign_models(tmp_path):
    prefix = tmp_path / "lossy"
    sentencepiece.SentencePieceTrainer.train(  # SentencePiece's defaults: NFKC, dummy prefix, no bytes
        sentence_iterator=iter(["Some text to learn a few pieces from, some more text.\n"] * 20),
        model_prefix=str(prefix), vocab_size=25, minloglevel=2)
    with pytest.raises(ValueError, match=r"lossy .*nmt_nfkc.*dummy-prefix.*squeezing.*no byte fallback"):
        tk.make_tokenizer(f"sentencepiece:{prefix}.model")
    (tmp_path / "junk.model").write_bytes(b"\x00not a model")
    with pytest.raises(ValueError, match="is not a SentencePiece model"):
        spm.SentencePieceTokenizer(tmp_path / "junk.model")
    with pytest.raises(FileNotFoundError, match="not found"):
        spm.SentencePieceTokenizer(tmp_path / "missing.model")


def test_training_chunks_keep_the_text_in_whole_lines():
    text = "short line\n" + "x" * 50 + "\nlast line without end"
    chunks = list(spm.training_chunks([text, "", "one\r\ntwo\n"], max_chars=20))
    assert "".join(chunks) == text + "one\r\ntwo\n"
    assert all(0 < len(c) <= 20 for c in chunks) and chunks[0] == "short line\n"


def test_cli_tokenizer_train(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(VARIED * 20, encoding="utf-8")
    (corpus / "empty.txt").write_text("", encoding="utf-8")
    out = tmp_path / "tok.model"
    argv = ["tokenizer", "train", "--source", f"text:{corpus}/a.txt", "--vocab-size", "350", "--out", str(out)]
    assert cli.main(argv) == 0
    assert f"--config.data.tokenizer=sentencepiece:{out}" in capsys.readouterr().out
    assert tk.make_tokenizer(f"sentencepiece:{out}").decode(tk.make_tokenizer(f"sentencepiece:{out}")
                                                            .encode(VARIED)) == VARIED
    argv[3] = f"text:{corpus}/empty.txt"
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpt2-jax: error: ") and "empty.txt is empty; remove it" in err and err.count("\n") == 1


def test_config_checks_tokenizer_names_and_files(spm_models, tmp_path):
    spm_tok = spm_models["bpe"]
    load = config_lib.load_config
    cfg = load("experiments/default.py", [f"data.tokenizer=sentencepiece:{spm_tok.path}"])
    assert cfg.data.tokenizer == f"sentencepiece:{spm_tok.path}"
    with pytest.raises(config_lib.ConfigError, match=r"data.tokenizer: .*missing.model not found; .*tokenizer train"):
        load("experiments/default.py", [f"data.tokenizer=sentencepiece:{tmp_path}/missing.model"])
    with pytest.raises(config_lib.ConfigError, match="data.tokenizer: unknown tokenizer 'spm'"):
        load("experiments/default.py", ["data.tokenizer=spm"])
    with pytest.raises(config_lib.ConfigError, match="data.tokenizer: tokenizer 'sentencepiece' needs"):
        load("experiments/default.py", ["data.tokenizer=sentencepiece"])


def test_vocab_larger_than_model_is_a_config_error(spm_models, tmp_path):
    spm_tok = spm_models["unigram"]
    (tmp_path / "doc.txt").write_text(VARIED, encoding="utf-8")
    cfg = config_lib.load_config("experiments/default.py", [
        f"data.tokenizer=sentencepiece:{spm_tok.path}", f"data.source=text:{tmp_path}/doc.txt",
        f"data.data_dir={tmp_path}/data", "model.vocab_size=512", "train.progress=False"])
    with pytest.raises(config_lib.ConfigError, match=r"model.vocab_size: 512 is smaller than .* 1000; unset it"):
        pretrain.build(cfg)
