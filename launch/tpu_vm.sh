#!/usr/bin/env bash
# Run gpt2-jax training on every worker of a Cloud TPU VM slice, through gcloud.
#
# The same command runs on all workers (gcloud ... ssh --worker=all); JAX finds the other workers
# of the slice by itself, so no coordinator flags are passed. Each worker's output goes to
# REMOTE_DIR/logs/<hostname>.log there (and to this terminal, interleaved).
#
#   --setup         copies this working tree (the repo root: the parent of launch/, without .git,
#                   .venv, venv, runs, launch_logs, caches) as a tarball to every worker, unpacks it in
#                   REMOTE_DIR and creates REMOTE_DIR/.venv (with --remote-python, default python3)
#                   holding `pip install -e . 'jax[tpu]'`.
#   --collect-logs  after the run (also a failed one) copies REMOTE_DIR/logs/*.log of every worker
#                   into LOG_DIR here; `tpu-vm scp` copies from one worker at a time, so the
#                   number of workers is read with `gcloud compute tpus tpu-vm describe`.
# The exit code is the training command's (gcloud fails when any worker fails).
# CONFIG and paths in overrides are resolved on the workers, relative to REMOTE_DIR; a CONFIG that
# exists here under the repo root is rewritten relative to the repo root.

set -u -o pipefail

PROG=tpu_vm.sh

usage() {
  cat <<'EOF'
usage: launch/tpu_vm.sh [--dry-run] --tpu NAME --zone ZONE [--project P] [--setup]
                        [--collect-logs] [--remote-dir DIR] [--remote-python PY] [--log-dir DIR]
                        CONFIG [--config.a.b=v ...]

Run `gpt2-jax train --config CONFIG [overrides]` on all workers of a TPU VM slice.

  --tpu NAME        TPU VM name (as in `gcloud compute tpus tpu-vm list`)
  --zone ZONE       its zone, e.g. us-central2-b
  --project P       Google Cloud project (default: gcloud's configured project)
  --setup           first copy this repo to every worker and install it into REMOTE_DIR/.venv
  --collect-logs    afterwards copy REMOTE_DIR/logs/*.log from every worker into LOG_DIR
  --remote-dir DIR  repo directory on the workers, relative to the home directory
                    (default gpt2_jax)
  --remote-python PY interpreter --setup builds the venv with (default python3); gpt2_jax
                    needs Python >= 3.11, so pass e.g. python3.11 if the image's python3 is older
  --log-dir DIR     local directory for --collect-logs (default ./launch_logs/NAME)
  --dry-run         print every command (gcloud and local), one per line, and exit
  -h, --help        show this help

Running on several workers needs your key in ssh-agent: ssh-add ~/.ssh/google_compute_engine
EOF
}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

dry_run=0 setup=0 collect=0
tpu="" zone="" project="" remote_dir=gpt2_jax log_dir="" remote_python=python3

while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) dry_run=1; shift ;;
    --setup) setup=1; shift ;;
    --collect-logs) collect=1; shift ;;
    --tpu) need_value "$1" $#; tpu=$2; shift 2 ;;
    --tpu=*) tpu=${1#*=}; shift ;;
    --zone) need_value "$1" $#; zone=$2; shift 2 ;;
    --zone=*) zone=${1#*=}; shift ;;
    --project) need_value "$1" $#; project=$2; shift 2 ;;
    --project=*) project=${1#*=}; shift ;;
    --remote-dir) need_value "$1" $#; remote_dir=$2; shift 2 ;;
    --remote-dir=*) remote_dir=${1#*=}; shift ;;
    --remote-python) need_value "$1" $#; remote_python=$2; shift 2 ;;
    --remote-python=*) remote_python=${1#*=}; shift ;;
    --log-dir) need_value "$1" $#; log_dir=$2; shift 2 ;;
    --log-dir=*) log_dir=${1#*=}; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option '$1'; options go before CONFIG (see --help)" ;;
    *) break ;;
  esac
done

[[ -n $tpu ]] || die "missing --tpu NAME (the TPU VM's name, see gcloud compute tpus tpu-vm list)"
[[ -n $zone ]] || die "missing --zone ZONE (the TPU VM's zone, e.g. --zone us-central2-b)"
[[ $# -ge 1 ]] || die "missing CONFIG; usage: launch/tpu_vm.sh --tpu NAME --zone ZONE [options] CONFIG [overrides...]"
[[ -n $remote_dir ]] || die "--remote-dir must not be empty"
config=$1
shift
overrides=("$@")
log_dir=${log_dir:-./launch_logs/$tpu}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || die "cannot find the repo root"

# A CONFIG that exists here inside the repo is passed relative to the repo root (= REMOTE_DIR).
if [[ -f $config ]]; then
  abs="$(cd "$(dirname "$config")" && pwd)/$(basename "$config")"
  [[ $abs == "$repo"/* ]] && config=${abs#"$repo"/}
fi

gflags=(--zone "$zone")
[[ -n $project ]] && gflags+=(--project "$project")

# Each step is one command line (a string, shell-quoted) that is printed or run.
steps=()
add() {  # add WORD...: append one quoted command line
  local w line=""
  for w in "$@"; do line+="$(q "$w") "; done
  steps+=("${line% }")
}

if ((setup)); then
  tarball="${TMPDIR:-/tmp}/gpt2_jax_src_$tpu.tar.gz"
  remote_tar="gpt2_jax_src.tar.gz"
  add tar -C "$repo" --exclude=.git --exclude=.venv --exclude=venv --exclude=runs --exclude=launch_logs \
      --exclude=__pycache__ --exclude=.pytest_cache --exclude='*.egg-info' -czf "$tarball" .
  add gcloud compute tpus tpu-vm scp "$tarball" "$tpu:$remote_tar" "${gflags[@]}" --worker=all
  # Ubuntu images may lack the venv module; install PY-venv once if `PY -m venv` fails.
  py=$(q "$remote_python")
  setup_cmd="mkdir -p $(q "$remote_dir") && tar -xzf $remote_tar -C $(q "$remote_dir") && rm $remote_tar"
  setup_cmd+=" && cd $(q "$remote_dir") && { $py -m venv .venv || { sudo apt-get update -q"
  setup_cmd+=" && sudo apt-get install -y -q $(q "${remote_python##*/}-venv") && $py -m venv .venv; }; }"
  setup_cmd+=" && . .venv/bin/activate && pip install -q -e . 'jax[tpu]'"
  add gcloud compute tpus tpu-vm ssh "$tpu" "${gflags[@]}" --worker=all --command "$setup_cmd"
fi

train="set -o pipefail; cd $(q "$remote_dir") && . .venv/bin/activate && mkdir -p logs && gpt2-jax train --config $(q "$config")"
for o in ${overrides[@]+"${overrides[@]}"}; do train+=" $(q "$o")"; done
train+=' 2>&1 | tee logs/$(hostname).log'
add gcloud compute tpus tpu-vm ssh "$tpu" "${gflags[@]}" --worker=all --command "$train"
train_step=$((${#steps[@]} - 1))

if ((collect)); then
  add mkdir -p "$log_dir"
  describe=(gcloud compute tpus tpu-vm describe "$tpu" "${gflags[@]}" '--format=value(networkEndpoints.len())')
  add "${describe[@]}"
  describe_step=$((${#steps[@]} - 1))
  add gcloud compute tpus tpu-vm scp "$tpu:$remote_dir/logs/*.log" "$log_dir/" "${gflags[@]}" --worker=W
  collect_step=$((${#steps[@]} - 1))
fi

if ((dry_run)); then
  for ((i = 0; i < ${#steps[@]}; i++)); do
    if ((collect && i == collect_step)); then
      echo "${steps[i]}  # for W in 0 .. (number of workers printed by describe) - 1"
    else
      echo "${steps[i]}"
    fi
  done
  exit 0
fi

command -v gcloud >/dev/null 2>&1 || die "gcloud not found; install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"

run() {  # run step I, echoing it first
  echo "+ ${steps[$1]}" >&2
  eval "${steps[$1]}"
}

for ((i = 0; i < train_step; i++)); do
  run "$i" || { code=$?; echo "$PROG: error: setup step failed with code $code: ${steps[i]}" >&2; exit "$code"; }
done
run "$train_step"
train_code=$?
((train_code == 0)) || echo "$PROG: training failed with code $train_code on at least one worker" >&2

if ((collect)); then
  run $((train_step + 1)) || exit $?
  echo "+ ${steps[describe_step]}" >&2
  workers=$(eval "${steps[describe_step]}")
  if [[ $workers =~ ^[1-9][0-9]*$ ]]; then
    for ((w = 0; w < workers; w++)); do
      echo "+ ${steps[collect_step]/%--worker=W/--worker=$w}" >&2
      eval "${steps[collect_step]/%--worker=W/--worker=$w}" ||
        echo "$PROG: warning: could not copy the logs of worker $w" >&2
    done
    echo "$PROG: logs of $workers workers in $log_dir" >&2
  else
    echo "$PROG: warning: could not read the number of workers (got '$workers'); logs not collected" >&2
  fi
fi
exit "$train_code"
