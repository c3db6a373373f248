# shellcheck shell=bash
# Sourced by every launch script: the TPU VM's settings and the helpers that print or run gcloud.
#
# Override any setting by exporting it first, e.g.
#   export PROJECT=my-project BUCKET=gs://my-bucket ZONE=us-central2-b ACCELERATOR_TYPE=v4-32
# With --dry-run (or DRY_RUN=1) every gcloud command is printed to stdout instead of run.

: "${PROJECT:=}"                                  # Google Cloud project (required)
: "${BUCKET:=}"                                   # gs:// bucket for runs and logs (required)
: "${ZONE:=us-central2-b}"
: "${TPU_NAME:=codegen2}"
: "${ACCELERATOR_TYPE:=v4-8}"                     # v4-32 and up are multi-host slices
: "${RUNTIME_VERSION:=tpu-ubuntu2204-base}"
: "${SPOT:=0}"                                    # 1: spot capacity (cheaper, preemptible)
: "${QUEUED:=0}"                                  # 1: create through a queued resource
: "${QUEUED_RESOURCE:=${TPU_NAME}-qr}"
: "${REMOTE_DIR:=codegen2_jax}"                   # the checkout on each worker, under its home
: "${DRY_RUN:=0}"
export PROJECT BUCKET ZONE TPU_NAME ACCELERATOR_TYPE RUNTIME_VERSION SPOT QUEUED QUEUED_RESOURCE \
  REMOTE_DIR DRY_RUN

shopt -s inherit_errexit  # a failure inside $(...) stops the script too

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$LAUNCH_DIR")"

# Dry-run output goes to the caller's stdout even from inside $(...), which captures fd 1.
exec 3>&1

log() {
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "[launch, dry run] $*" >&2
  else
    echo "[launch] $*" >&2
  fi
}

die() {
  log "error: $*"
  exit 1
}

# Fails naming every listed setting that is empty.
# Scripts whose only option is --dry-run: parse_dry_run_only USAGE "$@".
parse_dry_run_only() {
  local usage="$1"
  shift
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      *) die "unknown argument $1 (usage: $usage)" ;;
    esac
    shift
  done
}

require() {
  local name missing=()
  for name in "$@"; do
    [[ -n "${!name}" ]] || missing+=("$name")
  done
  ((${#missing[@]} == 0)) || die "set ${missing[*]} (see launch/env.sh)"
}

# Single-quotes one word for the shell.
quote_word() {
  local quote="'" escaped="'\\''"
  echo "'${1//$quote/$escaped}'"
}

# Prints arguments as one shell command line that pastes back into a shell unchanged.
quote_args() {
  local arg out=()
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+=("$arg")
    elif [[ "$arg" =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
      out+=("${BASH_REMATCH[1]}$(quote_word "${BASH_REMATCH[2]}")")
    else
      out+=("$(quote_word "$arg")")
    fi
  done
  echo "${out[*]}"
}

# Runs a command that changes something, or under dry run prints it instead.
run_cmd() {
  if [[ "$DRY_RUN" == 1 ]]; then
    quote_args "$@" >&3
  else
    "$@"
  fi
}

run_gcloud() {
  run_cmd gcloud "$@"
}

# Runs COMMAND on WORKER ("all" or an index) of the TPU VM.
tpu_ssh() {
  run_gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" \
    --worker="$1" --command="$2"
}

# The TPU VM's state (READY, PREEMPTED, ...), MISSING when it does not exist, UNKNOWN when
# gcloud fails otherwise; READY under dry run.
tpu_state() {
  local output
  if output="$(run_gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" \
    --project="$PROJECT" --format='value(state)' 2>&1)"; then
    [[ "$DRY_RUN" == 1 ]] && output=READY
    echo "${output##*$'\n'}"  # the state is the last line; gcloud may warn before it
  elif grep -qiE 'NOT_FOUND|not found' <<<"$output"; then
    echo MISSING
  else
    echo "$output" >&2
    echo UNKNOWN
  fi
}

# The full hash of COMMIT (default HEAD), so every worker and every relaunch gets the same code.
resolve_commit() {
  git -C "$REPO_ROOT" rev-parse --verify "${COMMIT:-HEAD}^{commit}"
}

# MODEL_DIR of a run: a full URI as given, a name under $BUCKET/runs otherwise.
model_dir_of() {
  if [[ "$1" == *://* ]]; then
    echo "$1"
  else
    require BUCKET
    echo "${BUCKET%/}/runs/$1"
  fi
}
