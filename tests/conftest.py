"""Session setup: one persistent XLA compilation cache for the whole test session (this process and
the subprocesses it starts), so the many tests that compile the same small programs (the nano and
tiny models' steps, samplers, evaluators) compile each one once. A fresh directory per session:
nothing carries over between runs, and a user's own JAX_COMPILATION_CACHE_DIR is left alone.

The CLI's host malloc settings (parallel/host_memory.py) are off: tests call the CLI in this process
many times, and its allocator should stay as pytest started it; test_host_memory turns them on."""

import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # before any test module imports jax
    _cache = tempfile.mkdtemp(prefix="gpt2_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.3"  # default 1 s: most test programs are smaller
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
os.environ.setdefault("GPT2_JAX_KEEP_HOST_MEMORY", "0")
