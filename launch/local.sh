#!/usr/bin/env bash
# Start N gpt2-jax training processes on this machine, connected through a local coordinator.
#
# Each process runs
#   ${PYTHON:-python3} -m gpt2_jax.cli train --config CONFIG --coordinator 127.0.0.1:PORT \
#       --num-processes N --process-id I [overrides...]
# in the background with its own environment (see --platform), output in LOG_DIR/process_I.log;
# process 0's log is also shown on this terminal. If a process fails, the others are stopped
# (SIGTERM, then SIGKILL after ${LAUNCH_KILL_GRACE:-30} s) and this script exits with its code.
# Ctrl-C / SIGTERM are forwarded to all processes as SIGTERM (they checkpoint and exit); a second
# one sends SIGKILL.
#
# Nothing here changes directory: CONFIG and paths in overrides are relative to the caller's cwd.

set -u -o pipefail

PROG=local.sh

usage() {
  cat <<'EOF'
usage: launch/local.sh [--dry-run] [--devices-per-process K] [--port P] [--log-dir DIR]
                       [--platform cpu|gpu] N CONFIG [--config.a.b=v ...]

Start N `gpt2-jax train` processes on this machine that train as one job.

  N                       number of processes (positive integer)
  CONFIG                  experiment config file, e.g. experiments/default.py
  --config.a.b=v          config overrides, passed to every process verbatim
  --platform cpu|gpu      cpu (default): each process gets K fake CPU devices
                          (JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=K);
                          gpu: each process sees K GPUs of its own through CUDA_VISIBLE_DEVICES
                          (process I gets GPUs I*K .. I*K+K-1)
  --devices-per-process K devices per process: default 2 on cpu, 1 on gpu
  --port P                coordinator port on 127.0.0.1 (default: a free port)
  --log-dir DIR           where process_I.log files go (default ./launch_logs)
  --dry-run               print each process's command (shell-quoted, env in front), one line
                          per process, and exit without starting anything
  -h, --help              show this help

Environment: PYTHON (default python3) is the interpreter that runs `-m gpt2_jax.cli`;
LAUNCH_KILL_GRACE (default 30) is how many seconds a failed run's other processes get
between SIGTERM and SIGKILL.
EOF
}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

dry_run=0
devices=""
port=""
log_dir=./launch_logs
platform=cpu

while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) dry_run=1; shift ;;
    --devices-per-process) need_value "$1" $#; devices=$2; shift 2 ;;
    --devices-per-process=*) devices=${1#*=}; shift ;;
    --port) need_value "$1" $#; port=$2; shift 2 ;;
    --port=*) port=${1#*=}; shift ;;
    --log-dir) need_value "$1" $#; log_dir=$2; shift 2 ;;
    --log-dir=*) log_dir=${1#*=}; shift ;;
    --platform) need_value "$1" $#; platform=$2; shift 2 ;;
    --platform=*) platform=${1#*=}; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option '$1'; options go before N (see --help)" ;;
    *) break ;;
  esac
done

[[ $# -ge 1 ]] || die "missing N and CONFIG; usage: launch/local.sh [options] N CONFIG [overrides...]"
n=$1
shift
is_posint "$n" || die "N must be a positive integer (number of processes), got '$n'"
[[ $# -ge 1 ]] || die "missing CONFIG; usage: launch/local.sh [options] N CONFIG [overrides...]"
config=$1
shift
[[ -f $config ]] || die "config file '$config' not found (paths are relative to the current directory $PWD)"
overrides=("$@")

case $platform in
  cpu) devices=${devices:-2} ;;
  gpu) devices=${devices:-1} ;;
  *) die "--platform must be cpu or gpu, got '$platform'" ;;
esac
is_posint "$devices" || die "--devices-per-process must be a positive integer, got '$devices'"

python=${PYTHON:-python3}

if [[ -z $port ]]; then
  # A port that is free now; the coordinator (process 0) binds it a moment later.
  pick='import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
  port=$(python3 -c "$pick" 2>/dev/null || "$python" -c "$pick" 2>/dev/null)
  [[ $port =~ ^[0-9]+$ ]] || die "could not pick a free port with python3; pass --port P"
fi
is_posint "$port" && ((port <= 65535)) || die "--port must be in 1..65535, got '$port'"

# env_for I: the environment assignments of process I, one NAME=value per line.
env_for() {
  local i=$1 ids="" d
  if [[ $platform == cpu ]]; then
    echo "JAX_PLATFORMS=cpu"
    echo "XLA_FLAGS=--xla_force_host_platform_device_count=$devices"
  else
    for ((d = i * devices; d < (i + 1) * devices; d++)); do ids+=${ids:+,}$d; done
    echo "CUDA_VISIBLE_DEVICES=$ids"
  fi
}

# cmd_for I: sets the array `cmd` to process I's argv.
cmd_for() {
  cmd=("$python" -m gpt2_jax.cli train --config "$config" --coordinator "127.0.0.1:$port"
       --num-processes "$n" --process-id "$1" ${overrides[@]+"${overrides[@]}"})
}

if ((dry_run)); then
  for ((i = 0; i < n; i++)); do
    line=""
    while IFS= read -r assignment; do
      line+="${assignment%%=*}=$(q "${assignment#*=}") "
    done < <(env_for "$i")
    cmd_for "$i"
    for word in "${cmd[@]}"; do line+="$(q "$word") "; done
    echo "${line% }"
  done
  exit 0
fi

mkdir -p "$log_dir" || die "cannot create log directory '$log_dir'"

pids=()
tail_pid=""
signalled=""

log_of() { echo "$log_dir/process_$1.log"; }

alive() { kill -0 "$1" 2>/dev/null; }

on_signal() {  # forward as SIGTERM the first time, SIGKILL the second
  local sig=$1 pid
  if [[ -z $signalled ]]; then
    signalled=$sig
    echo "$PROG: got SIG$sig; sending SIGTERM to ${#pids[@]} processes (they checkpoint and exit; again to kill)" >&2
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  else
    echo "$PROG: got SIG$sig again; sending SIGKILL" >&2
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  fi
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

for ((i = 0; i < n; i++)); do
  env_args=()
  while IFS= read -r assignment; do env_args+=("$assignment"); done < <(env_for "$i")
  cmd_for "$i"
  : >"$(log_of "$i")"
  env "${env_args[@]}" "${cmd[@]}" >"$(log_of "$i")" 2>&1 </dev/null &
  pids+=($!)
done
echo "$PROG: started $n processes (coordinator 127.0.0.1:$port, logs in $log_dir/process_<i>.log); showing process 0" >&2

# Show process 0's log here. GNU tail stops by itself shortly after process 0 exits.
if tail --version >/dev/null 2>&1; then
  tail -n +1 -s 0.2 --pid="${pids[0]}" -f "$(log_of 0)" &
else
  tail -n +1 -f "$(log_of 0)" &
fi
tail_pid=$!

stop_tail() {
  [[ -n $tail_pid ]] || return 0
  local t
  for ((t = 0; t < 20; t++)); do alive "$tail_pid" || break; sleep 0.1; done
  kill "$tail_pid" 2>/dev/null
  wait "$tail_pid" 2>/dev/null
  tail_pid=""
}

# lost_peer I: whether process I stopped because it lost another process (a consequence, not the cause).
lost_peer() { tail -n 1 "$(log_of "$1")" 2>/dev/null | grep -q '^gpt2-jax: error: lost process '; }

# Poll until every process has exited, or one has failed. Of the failures, the cause is reported:
# a process that says it lost another one exits within milliseconds of it, so after the first
# failure the others get one more look half a second later.
codes=()
failed=""
remaining=$n
reap_exited() {
  local i
  for ((i = 0; i < n; i++)); do
    [[ -z ${codes[i]:-} ]] || continue
    alive "${pids[i]}" && continue
    wait "${pids[i]}"
    codes[i]=$?
    ((remaining--))
    if [[ ${codes[i]} -ne 0 && -z $signalled ]] && { [[ -z $failed ]] || { lost_peer "$failed" && ! lost_peer "$i"; }; }; then
      failed=$i
    fi
  done
}
while ((remaining > 0)); do
  reap_exited
  if [[ -n $failed ]]; then
    sleep 0.5
    reap_exited
    break
  fi
  ((remaining > 0)) && sleep 0.2
done

if [[ -n $failed ]]; then
  # Stop the others: SIGTERM, then SIGKILL after the grace period.
  grace=${LAUNCH_KILL_GRACE:-30}
  for ((i = 0; i < n; i++)); do [[ -n ${codes[i]:-} ]] || kill -TERM "${pids[i]}" 2>/dev/null; done
  deadline=$((SECONDS + grace))
  for ((i = 0; i < n; i++)); do
    [[ -z ${codes[i]:-} ]] || continue
    while alive "${pids[i]}" && ((SECONDS < deadline)); do sleep 0.2; done
    alive "${pids[i]}" && kill -KILL "${pids[i]}" 2>/dev/null
    wait "${pids[i]}" 2>/dev/null
    codes[i]=$?
  done
  stop_tail
  code=${codes[failed]}
  log=$(log_of "$failed")
  echo "$PROG: last 20 lines of $log:" >&2
  tail -n 20 "$log" | sed 's/^/    /' >&2
  echo "$PROG: error: process $failed of $n exited with code $code (log: $log); stopped the others" >&2
  exit "$code"
fi

stop_tail
if [[ -n $signalled ]]; then
  echo "$PROG: stopped on SIG$signalled; exit codes: ${codes[*]} (logs in $log_dir)" >&2
  [[ $signalled == INT ]] && exit 130
  exit 143
fi
echo "$PROG: all $n processes finished (logs in $log_dir)" >&2
exit 0
