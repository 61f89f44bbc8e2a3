#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Launches score-jax training on a Cloud TPU VM slice with gcloud, one subcommand per step:
#
#   launch/tpu_vm.sh create --name=NAME --zone=ZONE --accelerator-type=v5p-32 [--spot | --queued]
#   launch/tpu_vm.sh setup  --name=NAME --zone=ZONE
#   launch/tpu_vm.sh run    --name=NAME --zone=ZONE --config=configs/... --workdir=gs://...
#   launch/tpu_vm.sh logs   --name=NAME --zone=ZONE
#   launch/tpu_vm.sh delete --name=NAME --zone=ZONE
#
# `up` chains create, setup and run. Every subcommand takes --dry-run (print the commands it would
# run, one per line, run nothing) and --help. See docs/tpu.md.
set -euo pipefail

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$LAUNCH_DIR/.." && pwd)
SCRIPT=$(basename "$0")
PROG=$SCRIPT  # The prefix of messages; main appends the subcommand.
# shellcheck source=common.sh
source "$LAUNCH_DIR/common.sh"

readonly SUBCOMMANDS='create setup run logs stop delete up'

# Every flag's value, set by parse_flags; '' is "not given" (booleans are 0 or 1).
opt_name='' opt_zone='' opt_project='' opt_accelerator_type='' opt_runtime_version=''
opt_spot=0 opt_queued=0 opt_wait=0 opt_source=head opt_python=python3.11
opt_config='' opt_workdir='' opt_worker=0 opt_lines=100 opt_no_follow=0 opt_yes=0
train_args=()

usage() {
  cat <<EOF
Usage: $SCRIPT SUBCOMMAND --name=NAME --zone=ZONE [flags]

Launches score-jax training on a Cloud TPU VM slice with gcloud.

Subcommands:
  create   create the slice: on demand, --spot, or --queued (a queued resource)
  setup    copy the code to every worker and install it with jax[tpu] in a venv
  run      start score_jax.train on every worker in the background, one log per worker
  logs     show the latest run's log of worker 0 (--worker=all: every worker)
  stop     send SIGTERM to the trainer on every worker (it saves a checkpoint and exits)
  delete   delete the slice (--queued: the queued resource and its slice)
  up       create, then setup, then run

Every subcommand takes --dry-run (print the commands, one per line, and run nothing) and --help.
'$SCRIPT SUBCOMMAND --help' lists the subcommand's flags. See docs/tpu.md.
EOF
}

# The flags each subcommand accepts, in the order its help lists them.
flags_for() {
  local scope='name zone project'
  case $1 in
    create) echo "$scope accelerator-type runtime-version spot queued wait dry-run" ;;
    setup) echo "$scope source python dry-run" ;;
    run) echo "$scope config workdir dry-run" ;;
    logs) echo "$scope worker lines no-follow dry-run" ;;
    stop) echo "$scope dry-run" ;;
    delete) echo "$scope queued yes dry-run" ;;
    up) echo "$scope accelerator-type runtime-version spot queued source python config workdir dry-run" ;;
  esac
}

# Flags that take no value.
is_boolean_flag() {
  case $1 in
    spot | queued | wait | no-follow | yes | dry-run) return 0 ;;
    *) return 1 ;;
  esac
}

# One help line per flag.
flag_help() {
  case $1 in
    name) echo '  --name=NAME              required; the TPU VM (and with --queued the queued resource) name' ;;
    zone) echo '  --zone=ZONE              required; a zone that offers the accelerator type, e.g. us-east5-a' ;;
    project) echo '  --project=PROJECT        Google Cloud project (default: gcloud config get-value project)' ;;
    accelerator-type) echo '  --accelerator-type=TYPE  required; the slice, e.g. v5p-32, v5litepod-16, v6e-8, v4-32' ;;
    runtime-version) echo '  --runtime-version=V      TPU software version (default from the type: v5p v2-alpha-tpuv5,
                           v5litepod v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e, v2-v4 tpu-ubuntu2204-base)' ;;
    spot) echo '  --spot                   a spot slice: cheaper, may be preempted at any time (SIGTERM)' ;;
    queued) case $2 in
        delete) echo '  --queued                 delete the queued resource (with --force: its slice too)' ;;
        *) echo '  --queued                 request the slice as a queued resource named NAME (node id NAME);
                           waits until it is ACTIVE under up, or with --wait' ;;
      esac ;;
    wait) echo "  --wait                   with --queued: poll every ${QUEUED_POLL_SECONDS} s until the queued resource is ACTIVE" ;;
    source) echo '  --source=head|worktree   what to ship: the committed HEAD (default, git archive) or the
                           working tree (tracked and untracked files that git does not ignore)' ;;
    python) echo '  --python=python3.N       interpreter for the venv (default python3.11; installed with apt
                           if the image lacks it, as the Ubuntu 22.04 TPU images do)' ;;
    config) echo '  --config=FILE[:ARG]      required; a config file relative to the repository root' ;;
    workdir) echo '  --workdir=DIR            required; where checkpoints and metrics go: a gs:// path, or an
                           absolute path that every worker shares (e.g. a gcsfuse mount)' ;;
    worker) echo '  --worker=N|all           which worker'"'"'s log (default 0); all: every worker, lines prefixed' ;;
    lines) echo '  --lines=N                lines of history to show first (default 100)' ;;
    no-follow) echo '  --no-follow              print the log'"'"'s last lines and return instead of following it' ;;
    yes) echo '  --yes                    do not ask for confirmation (passes --quiet to gcloud)' ;;
    dry-run) echo '  --dry-run                print the commands, one per line, shell-quoted; run nothing' ;;
  esac
}

subcommand_usage() {
  local subcommand=$1 flag
  case $subcommand in
    create) echo "Usage: $SCRIPT create --name=NAME --zone=ZONE --accelerator-type=TYPE [flags]"
      echo 'Creates a TPU VM slice: on demand (default), spot (--spot) or as a queued resource (--queued).' ;;
    setup) echo "Usage: $SCRIPT setup --name=NAME --zone=ZONE [flags]"
      echo 'Packs the code (git archive), copies it to every worker and installs it there: a venv in'
      echo "$REMOTE_VENV with 'pip install -e .[tpu]' and jax[tpu] at the version of requirements.txt."
      echo "Replaces $REMOTE_CODE on every worker; rerun it after a code change." ;;
    run) echo "Usage: $SCRIPT run --name=NAME --zone=ZONE --config=FILE --workdir=DIR [flags] [-- TRAINER FLAGS]"
      echo "Starts 'python -m score_jax.train --config=FILE --workdir=DIR' on every worker with"
      echo "$DISTRIBUTED_ENV=1 (the trainer joins the slice with jax.distributed.initialize()), under"
      echo "setsid and nohup, logging to $REMOTE_LOGS/train-<UTC time>.log on each worker. Flags after"
      echo "'--' go to the trainer (e.g. -- --config.schedule=stage1:100). Refuses if a trainer is running." ;;
    logs) echo "Usage: $SCRIPT logs --name=NAME --zone=ZONE [flags]"
      echo "Follows the latest run's log ($REMOTE_LOGS/latest.log) of one worker or of all; Ctrl-C stops." ;;
    stop) echo "Usage: $SCRIPT stop --name=NAME --zone=ZONE [flags]"
      echo 'Sends SIGTERM to the trainer on every worker; it saves a checkpoint and exits (status 143).' ;;
    delete) echo "Usage: $SCRIPT delete --name=NAME --zone=ZONE [flags]"
      echo 'Deletes the slice (gcloud asks for confirmation unless --yes). Checkpoints in gs:// stay.' ;;
    up) echo "Usage: $SCRIPT up --name=NAME --zone=ZONE --accelerator-type=TYPE --config=FILE --workdir=DIR [flags] [-- TRAINER FLAGS]"
      echo 'Runs create (waiting for a queued resource to become ACTIVE), setup and run.' ;;
  esac
  echo
  echo 'Flags:'
  for flag in $(flags_for "$subcommand"); do
    flag_help "$flag" "$subcommand"
  done
  echo '  --help                   this help'
}

# Sets opt_* from the command line, checking each flag is known to the subcommand and has a value.
parse_flags() {
  local subcommand=$1 arg key value has_value allowed
  shift
  allowed=" $(flags_for "$subcommand") "
  while (($#)); do
    arg=$1
    shift
    case $arg in
      --help | -h)
        subcommand_usage "$subcommand"
        exit 0
        ;;
      --)
        [[ $subcommand == run || $subcommand == up ]] ||
          die_usage "'--' passes flags to the trainer and is only for run and up"
        train_args=("$@")
        return 0
        ;;
      --*)
        key=${arg#--}
        has_value=0
        value=''
        if [[ $key == *=* ]]; then
          value=${key#*=}
          key=${key%%=*}
          has_value=1
        fi
        [[ $allowed == *" $key "* ]] ||
          die_usage "unknown flag --$key (see: $PROG --help)"
        if is_boolean_flag "$key"; then
          ((has_value == 0)) || die_usage "--$key takes no value; got --$key=$value"
          value=1
        else
          if ((has_value == 0)); then
            [[ $# -gt 0 && $1 != --* ]] || die_usage "--$key needs a value (--$key=VALUE)"
            value=$1
            shift
          fi
          [[ -n $value ]] || die_usage "--$key needs a non-empty value"
        fi
        printf -v "opt_${key//-/_}" '%s' "$value"
        ;;
      *)
        die_usage "unexpected argument '$arg' (flags look like --name=VALUE; see: $PROG --help)"
        ;;
    esac
  done
}

# Fails naming the first required flag that is missing.
require_flags() {
  local subcommand=$1 flag var example
  shift
  for flag in "$@"; do
    var="opt_${flag//-/_}"
    if [[ -z ${!var} ]]; then
      case $flag in
        name) example='my-tpu' ;;
        zone) example='us-east5-a' ;;
        accelerator-type) example='v5p-32' ;;
        config) example='configs/toy_arith.py' ;;
        workdir) example='gs://my-bucket/score-jax/run1' ;;
      esac
      die_usage "missing required flag --$flag (e.g. --$flag=$example)"
    fi
  done
}

# --zone=ZONE and, if given, --project=PROJECT: the flags every gcloud command here takes.
scope_flags=()
set_scope_flags() {
  check_name "$opt_name"
  check_zone "$opt_zone"
  scope_flags=("--zone=$opt_zone")
  [[ -z $opt_project ]] || scope_flags+=("--project=$opt_project")
}

# A command line of this script for the same slice, for messages: self_hint SUBCOMMAND.
self_hint() {
  local hint=(launch/tpu_vm.sh "$1" "--name=$opt_name" "--zone=$opt_zone")
  [[ -z $opt_project ]] || hint+=("--project=$opt_project")
  printf '%s' "${hint[*]}"
}

cmd_create() {
  require_flags create name zone accelerator-type
  set_scope_flags
  check_accelerator_type "$opt_accelerator_type"
  local version=${opt_runtime_version:-$(default_runtime_version "$opt_accelerator_type")}
  [[ -n $version ]] ||
    die_usage "no default runtime version for $opt_accelerator_type; pass --runtime-version (list: gcloud compute tpus tpu-vm versions list --zone=$opt_zone)"
  local tier=()
  ((opt_spot == 0)) || tier=(--spot)
  require_gcloud
  if ((opt_queued)); then
    run_cmd gcloud compute tpus queued-resources create "$opt_name" "${scope_flags[@]}" \
      "--node-id=$opt_name" "--accelerator-type=$opt_accelerator_type" "--runtime-version=$version" \
      ${tier[@]+"${tier[@]}"}
    ((opt_wait == 0)) || wait_for_queued_resource
  else
    ((opt_wait == 0)) || die_usage "--wait is for --queued (an on-demand or spot create waits already)"
    run_cmd gcloud compute tpus tpu-vm create "$opt_name" "${scope_flags[@]}" \
      "--accelerator-type=$opt_accelerator_type" "--version=$version" ${tier[@]+"${tier[@]}"}
  fi
}

# Polls the queued resource until it is ACTIVE (its slice exists); fails if it can no longer become so.
wait_for_queued_resource() {
  local describe=(gcloud compute tpus queued-resources describe "$opt_name" "${scope_flags[@]}"
    '--format=value(state.state)')
  if ((DRY_RUN)); then
    quote_command "${describe[@]}"
    echo "# (repeated every ${QUEUED_POLL_SECONDS} s until the state is ACTIVE)"
    return 0
  fi
  local state
  while true; do
    state=$("${describe[@]}") || state=''  # A failed poll is retried, not fatal.
    case $state in
      ACTIVE) note "queued resource $opt_name is ACTIVE"; return 0 ;;
      FAILED | SUSPENDING | SUSPENDED | DELETING)
        die "queued resource $opt_name is $state; see: gcloud compute tpus queued-resources describe $opt_name --zone=$opt_zone" ;;
    esac
    note "queued resource $opt_name is ${state:-unknown}; checking again in ${QUEUED_POLL_SECONDS} s"
    sleep "$QUEUED_POLL_SECONDS"
  done
}

# Writes the code to ship into a .tar.gz: HEAD, or the working tree as `git add -A` would see it.
pack_code() {
  local tarball=$1 git=(git -C "$REPO_ROOT")
  if [[ $opt_source == head ]]; then
    if ((DRY_RUN == 0)) && [[ -n $("${git[@]}" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
      note "note: shipping HEAD ($("${git[@]}" rev-parse --short HEAD)); uncommitted changes stay here (--source=worktree ships them)"
    fi
    run_cmd "${git[@]}" archive --format=tar.gz "--output=$tarball" HEAD
    return 0
  fi
  if ((DRY_RUN)); then
    echo "# pack the working tree (git add -A into a temporary index, git write-tree, git archive) into $(quote_word "$tarball")"
    return 0
  fi
  local index tree
  index=$(mktemp)
  cp "$("${git[@]}" rev-parse --absolute-git-dir)/index" "$index" 2>/dev/null || true
  GIT_INDEX_FILE=$index "${git[@]}" add -A
  tree=$(GIT_INDEX_FILE=$index "${git[@]}" write-tree)
  rm -f "$index"
  "${git[@]}" archive --format=tar.gz "--output=$tarball" "$tree"
  note "packed the working tree (tree $tree) into $tarball"
}

cmd_setup() {
  require_flags setup name zone
  set_scope_flags
  check_source "$opt_source"
  check_python "$opt_python"
  local jax_version tarball="${TMPDIR:-/tmp}/score-jax-$opt_name.tar.gz"
  jax_version=$(pinned_jax_version "$REPO_ROOT/requirements.txt")
  require_gcloud
  # shellcheck disable=SC2064  # The path is expanded now, on purpose: it is a local variable.
  ((DRY_RUN)) || trap "rm -f $(quote_word "$tarball")" EXIT
  pack_code "$tarball"
  run_cmd gcloud compute tpus tpu-vm scp "$tarball" "$opt_name:$REMOTE_TARBALL" "${scope_flags[@]}" --worker=all
  ((DRY_RUN)) || rm -f "$tarball"
  run_cmd gcloud compute tpus tpu-vm ssh "$opt_name" "${scope_flags[@]}" --worker=all \
    "--command=$(remote_install_script "$opt_python" "$jax_version")"
}

cmd_run() {
  require_flags run name zone config workdir
  set_scope_flags
  check_config "$opt_config" "$REPO_ROOT"
  check_workdir "$opt_workdir"
  local run_id
  run_id=$(date -u +%Y%m%d-%H%M%S)
  require_gcloud
  run_cmd gcloud compute tpus tpu-vm ssh "$opt_name" "${scope_flags[@]}" --worker=all \
    "--command=$(remote_check_script "$(self_hint stop)" "$(self_hint setup)")"
  run_cmd gcloud compute tpus tpu-vm ssh "$opt_name" "${scope_flags[@]}" --worker=all \
    "--command=$(remote_train_script "$run_id" "--config=$opt_config" "--workdir=$opt_workdir" \
      ${train_args[@]+"${train_args[@]}"})"
  ((DRY_RUN)) || note "started on every worker; follow worker 0 with: $(self_hint logs)"
}

cmd_logs() {
  require_flags logs name zone
  set_scope_flags
  check_worker "$opt_worker"
  check_lines "$opt_lines"
  local follow=1 prefix_host=0
  ((opt_no_follow == 0)) || follow=0
  [[ $opt_worker != all ]] || prefix_host=1
  require_gcloud
  run_cmd gcloud compute tpus tpu-vm ssh "$opt_name" "${scope_flags[@]}" "--worker=$opt_worker" \
    "--command=$(remote_logs_script "$opt_lines" "$follow" "$prefix_host")"
}

cmd_stop() {
  require_flags stop name zone
  set_scope_flags
  require_gcloud
  run_cmd gcloud compute tpus tpu-vm ssh "$opt_name" "${scope_flags[@]}" --worker=all \
    "--command=$(remote_stop_script)"
}

cmd_delete() {
  require_flags delete name zone
  set_scope_flags
  local quiet=()
  ((opt_yes == 0)) || quiet=(--quiet)
  require_gcloud
  if ((opt_queued)); then
    run_cmd gcloud compute tpus queued-resources delete "$opt_name" "${scope_flags[@]}" --force \
      ${quiet[@]+"${quiet[@]}"}
  else
    run_cmd gcloud compute tpus tpu-vm delete "$opt_name" "${scope_flags[@]}" ${quiet[@]+"${quiet[@]}"}
  fi
}

cmd_up() {
  require_flags up name zone accelerator-type config workdir
  # Check every flag before creating anything: a bad --config should not cost a slice.
  set_scope_flags
  check_accelerator_type "$opt_accelerator_type"
  check_source "$opt_source"
  check_python "$opt_python"
  check_config "$opt_config" "$REPO_ROOT"
  check_workdir "$opt_workdir"
  opt_wait=$opt_queued
  cmd_create
  cmd_setup
  cmd_run
}

main() {
  if (($# == 0)); then
    usage >&2
    exit 2
  fi
  local subcommand=$1
  shift
  case $subcommand in
    -h | --help | help)
      usage
      exit 0
      ;;
  esac
  [[ " $SUBCOMMANDS " == *" $subcommand "* ]] ||
    die_usage "unknown subcommand '$subcommand'; one of: $SUBCOMMANDS (see: $PROG --help)"
  PROG="$PROG $subcommand"
  parse_flags "$subcommand" "$@"
  DRY_RUN=$opt_dry_run
  "cmd_$subcommand"
}

opt_dry_run=0
main "$@"
