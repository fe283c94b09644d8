# Helpers shared by local.sh and tpu_vm.sh (sourced; slurm.sbatch stays self-contained because
# sbatch runs a spooled copy of it). Callers set PROG first.

die() {  # one-line usage error, exit 2
  echo "$PROG: error: $*" >&2
  exit 2
}

need_value() {  # option name, number of remaining args
  [[ $2 -ge 2 ]] || die "$1 needs a value (see --help)"
}

is_posint() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

# q WORD: WORD quoted for a POSIX shell, bare when it needs no quotes (as Python's shlex.quote).
q() {
  local safe='^[A-Za-z0-9_@%+=:,./-]+$'
  if [[ $1 =~ $safe ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
