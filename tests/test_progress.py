"""What a run prints: a bar only on a terminal, times that leave evaluations out, and third-party
chatter (TFDS's banners and bars, absl warnings) only with --verbose."""

import io
import logging
import re
import sys
import time

from gpt2_jax import verbosity
from gpt2_jax.cli import app as cli
from gpt2_jax.train import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bars_only_on_a_terminal():
    assert progress.bars_wanted(True, _Terminal())
    assert not progress.bars_wanted(True, io.StringIO())  # a file or a pipe: plain lines instead
    assert not progress.bars_wanted(False, _Terminal())
    assert progress.clock(3725.9) == "1:02:05"


def test_paused_time_stays_out_of_the_bar_and_the_eta(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Terminal())
    lines = []
    shown = progress.Progress(10, 0, True, lines.append, tokens_per_step=100, every=1)
    assert shown.mode == "bar"
    for _ in range(2):
        time.sleep(0.05)
        shown.update()
    with shown.paused():
        time.sleep(1.0)  # an evaluation
    shown.update()
    assert shown.bar.format_dict["elapsed"] < 0.6  # the bar's clock (and so its rate and ETA) skipped the pause
    assert shown.training_seconds() < 0.6 and shown.paused_s >= 1.0
    shown.evaluated(3, {"val_loss": 1.23456, "val_bpb": 1.78}, " (first 2 batches)")
    assert re.fullmatch(r"step 3/10: val loss 1\.2346, bits/byte 1\.7800 \(first 2 batches\), [\d,]+ tokens/s, "
                        r"elapsed 0:00:01", lines[-1])
    assert int(lines[-1].split(", ")[-2].split()[0].replace(",", "")) > 300 / 0.6  # tokens/s of training time
    shown.close()


def test_plain_lines_without_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    lines = []
    shown = progress.Progress(100, 40, True, lines.append, tokens_per_step=10, every=20)
    assert shown.mode == "lines" and shown.bar is None
    for step in (50, 60):
        shown.update()
        shown.train_metrics(step, {"loss": 2.5, "tokens_per_s": 1234.0})
    assert len(lines) == 1 and re.fullmatch(r"step 60/100: loss 2\.5000, 1,234 tokens/s, elapsed 0:00:00, "
                                            r"eta 0:00:00", lines[0])
    assert sys.stderr.getvalue() == ""


def _corpus(tmp_path):
    for split in ("train", "validation"):
        (tmp_path / "corpus" / split).mkdir(parents=True)
        (tmp_path / "corpus" / split / "a.txt").write_text("To be, or not to be, that is the question.\n" * 20)
    return f"text:{tmp_path}/corpus/{{split}}/*.txt"


def test_tfds_chatter_and_absl_warnings_only_with_verbose(tmp_path, capfd, caplog):
    source = _corpus(tmp_path)
    try:
        for verbose, data_dir in ((False, "quiet"), (True, "loud")):
            caplog.clear()
            flag = ["--verbose"] if verbose else []
            assert cli.main(["prepare", "--source", source, "--splits", "train,validation", "--tokenizer", "byte",
                             "--data-dir", str(tmp_path / data_dir), *flag]) == 0
            out, err = capfd.readouterr()
            assert ("Generating" in err) == verbose and ("Downloading and preparing" in out) == verbose
            assert out.count("tokens (uint16") == 2
            absl = [r.getMessage() for r in caplog.records if r.name == "absl"]
            assert any("has no dataset_info.json" in m for m in absl) == verbose, absl
    finally:
        verbosity.set_verbose(False)
        logging.getLogger("absl").setLevel(logging.NOTSET)
