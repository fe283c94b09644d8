#!/usr/bin/env bash
# Every GPU speed figure of BENCHMARKS.md in one command, on one GPU host:
#   launch/gpu_bench.sh [--dry-run] [--budget SECONDS] [NANOGPT_CHECKOUT]
# runs `gpt2-jax bench sweep --plan gpu`: first the headline rows (gpt2 T=1024 in its best
# configuration with MFU; the same beside transformers + torch.compile, and nanoGPT when a
# checkout is given; greedy decoding at batch 1 and 32 and sliding-window evaluation beside
# transformers), then the sweeps (each optimization switched on in turn, variants, the largest
# batch that fits, gpt2-medium and gpt2-xl). One subprocess per row, each with a time budget;
# only the rows whose budgets fit in --budget (default 660 s: a 15-minute GPU ration less start-up)
# run, the table printed after each. OUT_DIR/sweep.json and OUT_DIR/sweep.md (the table to paste)
# keep finished rows, so calling it again resumes with the next row.
# --dry-run prints the rows in order with their budgets and running total, and needs no GPU.
#
# Environment: OUT_DIR (default bench_gpu), PYTHON (default python3).
set -euo pipefail

usage() { echo "usage: launch/gpu_bench.sh [--dry-run] [--budget SECONDS] [NANOGPT_CHECKOUT]" >&2; exit 2; }
dry_run=0
budget=660
nanogpt=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) dry_run=1; shift ;;
    --budget) [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || usage; budget=$2; shift 2 ;;
    -h|--help) usage ;;
    -*) usage ;;
    *) [[ -z $nanogpt ]] || usage; nanogpt=$1; shift ;;
  esac
done
args=(-m gpt2_jax.cli bench sweep --plan gpu --out "${OUT_DIR:-bench_gpu}" --budget "$budget")
if [[ -n $nanogpt ]]; then
  args+=(--nanogpt "$nanogpt")
fi
if ((dry_run)); then
  exec "${PYTHON:-python3}" "${args[@]}" --dry-run
fi
"${PYTHON:-python3}" -c "import jax; assert jax.default_backend() == 'gpu', 'no GPU: ' + jax.default_backend()"
exec "${PYTHON:-python3}" "${args[@]}"
