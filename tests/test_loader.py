"""Tests of gpt2_jax.data.loader: resumable, host-independent sampling and the prefetcher."""

import threading

import numpy as np
import pytest

from gpt2_jax.data import loader, tokenizers, tokens


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """A prepared byte-level split of a few thousand tokens, in several shards."""
    root = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(1)
    (root / "corpus").mkdir()
    for i in range(12):
        (root / "corpus" / f"{i:02d}.txt").write_text("".join(rng.choice(list("abcdefgh \n"), size=400)))
    path = tokens.prepare_split(f"text:{root}/corpus/*.txt", "train", tokenizers.ByteTokenizer(), root,
                                show_progress=False, max_shard_tokens=1000)
    out = tokens.load_split(path)
    assert len(out.tokens.shards) > 3  # windows cross shard boundaries
    return out


def _batches(split, start, stop, rows=None, batch=8, seq_len=64, seed=5):
    make = lambda step: loader.train_batch(split.tokens, seed, step, batch, seq_len, rows)  # noqa: E731
    with loader.Prefetcher(make, start, stop, depth=2) as prefetch:
        return {step: b for step, b in prefetch}


def test_resumed_run_reads_the_same_batches(split):
    straight = _batches(split, 0, 12)
    resumed = _batches(split, 7, 12)  # a run restarted at step 7 knows nothing but the step
    assert sorted(resumed) == list(range(7, 12))
    for step, batch in resumed.items():
        assert np.array_equal(batch, straight[step])
    assert not np.array_equal(straight[7], straight[8])
    flat = np.asarray(split.tokens).astype(np.int32)
    for row in straight[3]:  # every row is a real window of the split
        start = int(np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(flat, 65) == row, axis=1))[0])
        assert np.array_equal(flat[start:start + 65], row)


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_global_batch_is_the_same_set_of_rows_for_any_process_count(split, processes):
    batch = 8
    full = _batches(split, 0, 5, batch=batch)
    per = batch // processes
    for step in range(5):
        parts = [loader.train_batch(split.tokens, 5, step, batch, 64, slice(p * per, (p + 1) * per))
                 for p in range(processes)]
        rows_read = [r for p in range(processes) for r in range(p * per, (p + 1) * per)]
        assert sorted(rows_read) == list(range(batch))  # every row once, none twice
        assert np.array_equal(np.concatenate(parts), full[step])


def test_epochs_are_counted_in_tokens():
    assert loader.epochs_seen(0, 512, 1000) == 0.0
    assert loader.epochs_seen(10, 512, 1024) == 5.0


def test_prefetcher_raises_where_the_failing_step_is_needed_and_stops():
    def make(step):
        if step == 3:
            raise ValueError("bad batch 3")
        return step * 10

    prefetch = loader.Prefetcher(make, 0, 10, depth=2)
    assert [prefetch.get(s) for s in range(3)] == [0, 10, 20]
    with pytest.raises(ValueError, match="bad batch 3"):
        prefetch.get(3)
    prefetch.close()
    assert not any(t.name == "batch-prefetch" and t.is_alive() for t in threading.enumerate())


def test_prefetcher_closes_early_and_checks_order():
    prefetch = loader.Prefetcher(lambda s: s, 5, 1_000_000, depth=3)
    with pytest.raises(RuntimeError, match="holds step 5, step 6 was asked for"):
        prefetch.get(6)
    prefetch.close()  # the thread is blocked on a full queue: close must still end it
    assert not prefetch._thread.is_alive()  # pylint: disable=protected-access
    with pytest.raises(ValueError, match="depth must be >= 1"):
        loader.Prefetcher(lambda s: s, 0, 1, depth=0)


def test_bench_data_reports_prepare_and_loader_rates(tmp_path, capsys):
    from gpt2_jax.cli import app as cli

    (tmp_path / "a.txt").write_text("To be, or not to be, that is the question. " * 200, encoding="utf-8")
    assert cli.main(["bench", "data", "--source", f"text:{tmp_path}/a.txt", "--tokenizers", "byte,gpt2",
                     "--workers", "1", "--data-dir", str(tmp_path), "--loader-seq-len", "64"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[:4] == ["byte", "1", "0.01", "8,600"]  # 8,600 bytes, one document
    assert "gpt2" in out.splitlines()[2] and "loader 8x64 (+1)" in out and "x the target" in out
