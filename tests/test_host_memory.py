"""The CLI's malloc settings: XLA:CPU's per-call temporaries stop being page-faulted anew every call."""

import json
import os
import subprocess
import sys

from gpt2_jax.cli import common

# A jitted function whose 128 MiB intermediate is allocated by XLA for every call; prints the median
# minor page faults per call after warm-up.
PROBE = r"""
import json, resource, statistics, sys
from gpt2_jax.parallel import host_memory
applied = host_memory.reuse_freed_memory() if sys.argv[1] == "on" else False
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w1, w2: (jnp.tanh(x @ w1) @ w2).sum())
x, w1, w2 = jnp.ones((8192, 64)), jnp.ones((64, 4096)) * 1e-3, jnp.ones((4096, 8))
faults = []
for i in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, w1, w2).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "median_faults": statistics.median(faults[4:])}))
"""


def _faults(mode: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_reused_host_memory_stops_per_call_page_faults():
    off, on = _faults("off"), _faults("on")
    assert on["applied"] and not off["applied"]
    assert off["median_faults"] > 20_000  # the 128 MiB block mapped anew: ~32k fresh pages per call
    assert on["median_faults"] < 0.1 * off["median_faults"]


def test_cli_leaves_malloc_alone_when_asked_or_on_gpu():
    assert common.keep_host_memory({"GPT2_JAX_KEEP_HOST_MEMORY": "0"}) is False
    assert common.keep_host_memory({"JAX_PLATFORMS": "cuda"}) is False
