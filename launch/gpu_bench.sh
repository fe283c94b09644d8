#!/usr/bin/env bash
# Every GPU training-speed figure of BENCHMARKS.md in one command, on one GPU host:
#   launch/gpu_bench.sh [NANOGPT_CHECKOUT]
# runs `gpt2-jax bench sweep --plan gpu` (gpt2 at T=1024 with each optimization switched on in
# turn, variants, the largest batch that fits, transformers + torch.compile side by side, and
# nanoGPT too when a checkout is given, gpt2-medium and gpt2-xl with remat/fsdp), one subprocess
# per row, and writes OUT_DIR/sweep.json and OUT_DIR/sweep.md (the table to paste). Rows already
# in OUT_DIR/sweep.json are kept, so a run that was cut short resumes where it stopped.
#
# Environment: OUT_DIR (default bench_gpu), PYTHON (default python3).
set -euo pipefail

if [[ $# -gt 1 || ${1:-} == -h || ${1:-} == --help ]]; then
  echo "usage: launch/gpu_bench.sh [NANOGPT_CHECKOUT]" >&2
  exit 2
fi
args=(-m gpt2_jax.cli bench sweep --plan gpu --out "${OUT_DIR:-bench_gpu}")
if [[ $# -eq 1 ]]; then
  args+=(--nanogpt "$1")
fi
"${PYTHON:-python3}" -c "import jax; assert jax.default_backend() == 'gpu', 'no GPU: ' + jax.default_backend()"
exec "${PYTHON:-python3}" "${args[@]}"
