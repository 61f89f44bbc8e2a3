# shellcheck shell=bash
# Remote scripts are built in single quotes on purpose, and their `~` paths too: they expand on the worker.
# shellcheck disable=SC2016,SC2088
#
# Helpers for launch/tpu_vm.sh: errors, shell quoting, dry-run execution, flag checks and the scripts
# that run on the TPU workers. Sourced, never run. Written for bash 3.2 too (the macOS default), so no
# associative arrays, namerefs or ${x,,}; possibly empty arrays expand as ${a[@]+"${a[@]}"}.

# Where things live on every worker, relative to the login user's home directory.
readonly REMOTE_TARBALL='score-jax.tar.gz'
readonly REMOTE_CODE='~/score-jax'
readonly REMOTE_VENV='~/score-jax-venv'
readonly REMOTE_LOGS='~/score-jax-logs'
# The environment variable score_jax.train reads to call jax.distributed.initialize() (DISTRIBUTED_ENV).
readonly DISTRIBUTED_ENV='SCORE_JAX_DISTRIBUTED'
# shellcheck disable=SC2034  # Used by tpu_vm.sh.
readonly QUEUED_POLL_SECONDS=60

PROG=${PROG:-tpu_vm.sh}
DRY_RUN=0

# Usage error: one line on stderr, exit status 2.
die_usage() {
  echo "$PROG: $*" >&2
  exit 2
}

# Runtime error: one line on stderr, exit status 1.
die() {
  echo "$PROG: error: $*" >&2
  exit 1
}

# Progress notes go to stderr so that stdout holds only the commands in a dry run.
note() {
  echo "$PROG: $*" >&2
}

# Prints one word quoted for a POSIX shell, unquoted where that is safe. A `--flag=value` word keeps
# the flag outside the quotes (`--command='cd ~ && ls'`): the same word to the shell, easier to read.
quote_word() {
  local word=$1 prefix='' squote="'" escaped="'\\''"
  if [[ -n $word && $word =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$word"
    return
  fi
  if [[ $word =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    prefix=${BASH_REMATCH[1]}
    word=${BASH_REMATCH[2]}
  fi
  printf "%s'%s'" "$prefix" "${word//$squote/$escaped}"
}

# Prints a command line: every argument quoted, separated by spaces, ending in a newline.
quote_command() {
  local out='' arg
  for arg in "$@"; do
    out+="${out:+ }$(quote_word "$arg")"
  done
  printf '%s\n' "$out"
}

# Runs a command, or with --dry-run only prints it (to stdout, copy-pasteable). A real run echoes the
# command to stderr first, like `set -x`.
run_cmd() {
  if ((DRY_RUN)); then
    quote_command "$@"
  else
    printf '+ %s' "$(quote_command "$@")" >&2
    echo >&2
    "$@"
  fi
}

# Fails unless gcloud is installed (real runs only: a dry run never calls it).
require_gcloud() {
  ((DRY_RUN)) && return 0
  command -v gcloud >/dev/null 2>&1 ||
    die "gcloud not found on PATH; install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"
}

# The runtime (software) version to use for an accelerator type when --runtime-version is not given:
# Google's recommended image for JAX on each TPU generation. Prints nothing for an unknown family.
default_runtime_version() {
  case $1 in
    v6e-*) echo 'v2-alpha-tpuv6e' ;;
    v5p-*) echo 'v2-alpha-tpuv5' ;;
    v5litepod-* | v5e-*) echo 'v2-alpha-tpuv5-lite' ;;
    v2-* | v3-* | v4-*) echo 'tpu-ubuntu2204-base' ;;
  esac
}

# Reads the pinned jax version (`jax==X.Y.Z`) from requirements.txt, so the TPU install matches it.
pinned_jax_version() {
  local requirements=$1 line
  [[ -f $requirements ]] || die "$requirements not found; cannot pin jax[tpu]"
  while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line =~ ^jax==([0-9][0-9A-Za-z.]*)[[:space:]]*$ ]]; then
      echo "${BASH_REMATCH[1]}"
      return 0
    fi
  done <"$requirements"
  die "no 'jax==VERSION' line in $requirements; cannot pin jax[tpu]"
}

# ---- Checks of flag values (each fails with a usage error naming the flag and the value). ----

check_name() {
  [[ $1 =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    die_usage "--name must be lower-case letters, digits and '-', start with a letter, at most 63 characters; got '$1'"
}

check_zone() {
  [[ $1 =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] ||
    die_usage "--zone must be a zone such as us-east5-a or europe-west4-b; got '$1'"
}

check_accelerator_type() {
  [[ $1 =~ ^(v[0-9]+[a-z]*|tpu[0-9]+[a-z]*)-[0-9]+$ ]] ||
    die_usage "--accelerator-type must be a TPU type such as v5p-32, v5litepod-16 or v6e-8; got '$1'"
}

check_worker() {
  [[ $1 == all || $1 =~ ^[0-9]+$ ]] ||
    die_usage "--worker must be 'all' or a worker index (0, 1, ...); got '$1'"
}

check_lines() {
  [[ $1 =~ ^[0-9]+$ ]] || die_usage "--lines must be a whole number; got '$1'"
}

check_source() {
  [[ $1 == head || $1 == worktree ]] || die_usage "--source must be 'head' or 'worktree'; got '$1'"
}

check_python() {
  [[ $1 =~ ^python3\.[0-9]+$ ]] || die_usage "--python must name a python3.N interpreter (e.g. python3.11); got '$1'"
}

# The config must be a file of this repository, given relative to its root: that is where it sits on
# the workers too. A variant after ':' (configs/toy_arith.py:smoke) is passed through.
check_config() {
  local config=$1 repo_root=$2 file=${1%%:*}
  [[ $file != /* ]] ||
    die_usage "--config must be relative to the repository root (it is shipped to the workers); got '$config'"
  [[ -f $repo_root/$file ]] ||
    die_usage "--config file '$file' not found under $repo_root (paths are relative to the repository root)"
}

# A multi-host run needs a work directory that every worker sees; warn (once) about a local path.
workdir_checked=0
check_workdir() {
  ((workdir_checked == 0)) || return 0
  workdir_checked=1
  case $1 in
    gs://*) ;;
    /*) note "warning: --workdir '$1' is a local path; every worker must see the same directory (a mounted bucket), or the checkpoints are incomplete" ;;
    *) die_usage "--workdir must be a gs:// path or an absolute path shared by every worker; got '$1'" ;;
  esac
}

# ---- Scripts that run on every worker (POSIX sh, one line: they travel in ssh --command). ----

# Installs Python if the image lacks it, unpacks the code and installs it in a venv with its tpu extra
# (the libtpu pin) and jax[tpu] at the version of requirements.txt.
remote_install_script() {
  local python=$1 jax_version=$2
  local venv_python="$REMOTE_VENV/bin/python"
  local steps=(
    'set -e'
    "if ! $python -c \"import ensurepip, venv\" >/dev/null 2>&1; then sudo apt-get -o DPkg::Lock::Timeout=600 -qq update && sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -qq install -y $python $python-venv; fi"
    "rm -rf $REMOTE_CODE"
    "mkdir -p $REMOTE_CODE"
    "tar -xzf ~/$REMOTE_TARBALL -C $REMOTE_CODE"
    "rm -f ~/$REMOTE_TARBALL"
    "[ -x $venv_python ] || $python -m venv $REMOTE_VENV"
    "$venv_python -m pip install -q --upgrade pip"
    "cd $REMOTE_CODE"
    "$venv_python -m pip install -q -e \".[tpu]\" \"jax[tpu]==$jax_version\""
    "echo \"\$(hostname): score-jax installed with jax \$($venv_python -c \"import jax; print(jax.__version__)\")\""
  )
  join_steps "${steps[@]}"
}

# Fails on a worker that has a trainer running already or has no install. Arguments: the commands
# to suggest for each case.
remote_check_script() {
  local stop_hint=$1 setup_hint=$2
  local steps=(
    "pid=\$(cat $REMOTE_LOGS/train.pid 2>/dev/null || true)"
    "if [ -n \"\$pid\" ] && grep -qs score_jax.train /proc/\$pid/cmdline; then echo \"\$(hostname): a trainer is already running (pid \$pid); stop it first: $stop_hint\" >&2; exit 1; fi"
    "if [ ! -x $REMOTE_VENV/bin/python ]; then echo \"\$(hostname): score-jax is not installed; run: $setup_hint\" >&2; exit 1; fi"
  )
  join_steps "${steps[@]}"
}

# Starts the trainer detached (setsid + nohup: a dropped ssh connection does not stop it), logging to
# its own file on each worker, with the pid saved for `stop`. Arguments: run id, then the trainer's.
remote_train_script() {
  local run_id=$1 log_file train_command arg
  shift
  log_file="train-$run_id.log"
  train_command="$REMOTE_VENV/bin/python -m score_jax.train"
  for arg in "$@"; do
    train_command+=" $(quote_word "$arg")"
  done
  local steps=(
    'set -e'
    "mkdir -p $REMOTE_LOGS"
    "cd $REMOTE_CODE"
    "$DISTRIBUTED_ENV=1 PYTHONUNBUFFERED=1 setsid nohup $train_command >$REMOTE_LOGS/$log_file 2>&1 </dev/null &"
    "echo \$! >$REMOTE_LOGS/train.pid"
    "ln -sfn $log_file $REMOTE_LOGS/latest.log"
    "echo \"\$(hostname): trainer started (pid \$(cat $REMOTE_LOGS/train.pid)), log $REMOTE_LOGS/$log_file\""
  )
  join_steps "${steps[@]}"
}

# Sends SIGTERM to the trainer (it saves a checkpoint and exits 143), if one runs.
remote_stop_script() {
  local steps=(
    "pid=\$(cat $REMOTE_LOGS/train.pid 2>/dev/null || true)"
    "if [ -n \"\$pid\" ] && grep -qs score_jax.train /proc/\$pid/cmdline; then kill -TERM \$pid && echo \"\$(hostname): sent SIGTERM to the trainer (pid \$pid)\"; else echo \"\$(hostname): no trainer running\"; fi"
  )
  join_steps "${steps[@]}"
}

# Shows the latest run's log; with several workers each line is prefixed by the worker's host name.
remote_logs_script() {
  local lines=$1 follow=$2 prefix_host=$3 command
  command="tail -n $lines"
  ((follow)) && command+=' -F'
  command+=" $REMOTE_LOGS/latest.log"
  ((prefix_host)) && command+=' 2>&1 | sed -u "s/^/[$(hostname)] /"'
  printf '%s' "$command"
}

# Joins shell steps with '; ' (the `&` of a background step already ends it).
join_steps() {
  local out='' step
  for step in "$@"; do
    if [[ -z $out ]]; then
      out=$step
    elif [[ $out == *'&' ]]; then
      out+=" $step"
    else
      out+="; $step"
    fi
  done
  printf '%s' "$out"
}
