"""Tests of gpt2_jax.data.tokenizers: byte and GPT-2 BPE tokenizers, their loaders and specs."""

import base64
import json
import shutil

import pytest
import tiktoken.load

from gpt2_jax.data import tokenizers as tk

VARIED = ("Hello world! It's 2024: naïve café, Straße, \u4e2d\u6587, emoji 🙂🎉.\n\n"
          "  Indented\tline with  double  spaces,\r\nCRLF, 'quotes' and \"more\" — dashes… 1234567.\n")


@pytest.fixture(scope="module")
def gpt2():
    return tk.make_tokenizer("gpt2")


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
    with pytest.raises(ValueError, match="unknown tokenizer 'sentencepiece'"):
        tk.make_tokenizer("sentencepiece")
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
