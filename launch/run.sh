#!/usr/bin/env bash
# Runs the training entry point on every worker of the TPU VM, with MODEL_DIR on the bucket and
# each worker's log copied to MODEL_DIR/logs/. --babysit relaunches after a preemption.
#
#   launch/run.sh [--dry-run] [--babysit] [--max-restarts N] RUN EXPERIMENT [main.py flags...]
#
# RUN is a name (MODEL_DIR = $BUCKET/runs/RUN) or a full gs:// MODEL_DIR; EXPERIMENT a gin file
# relative to gin/, e.g. experiments/codegen2_1b.gin; further flags (--gin.NAME=VALUE,
# --gin_file=...) go to codegen2_jax.main unchanged.
#
# --babysit: when training ends and the TPU is PREEMPTED (or otherwise down, or gone), delete,
# recreate (create.sh), set up the same commit (setup.sh) and run again, at most --max-restarts
# times (default 5); training resumes from its newest checkpoint. A dropped ssh session (exit
# 255) or a watchdog abort (exit 75: a worker was lost or froze) on a healthy TPU is relaunched
# too; any other failure on a healthy TPU stops it.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "$0")/env.sh"

: "${BABYSIT_PAUSE_S:=60}"
USAGE="usage: run.sh [--dry-run] [--babysit] [--max-restarts N] RUN EXPERIMENT [main.py flags...]"
SSH_FAILED=255  # what gcloud's ssh returns when the connection itself fails
WATCHDOG_ABORT=75  # codegen2_jax.watchdog: a lost or frozen process; resuming is the cure

launch() {
  tpu_ssh all "$(quote_args bash "$REMOTE_DIR/launch/worker_train.sh" "$MODEL_DIR" \
    "--gin_file=$EXPERIMENT" "${MAIN_FLAGS[@]}")"
}

# Brings a TPU back that is not READY: recreated when preempted or gone, waited for otherwise.
recover() {
  case "$1" in
    PREEMPTED | TERMINATED | STOPPED | SUSPENDED)
      "$LAUNCH_DIR/delete.sh"
      "$LAUNCH_DIR/create.sh"
      "$LAUNCH_DIR/setup.sh"
      ;;
    MISSING)
      "$LAUNCH_DIR/create.sh"
      "$LAUNCH_DIR/setup.sh"
      ;;
    *) sleep "$BABYSIT_PAUSE_S" ;;  # READY after a dropped session, CREATING, REPAIRING, ...
  esac
}

babysit() {
  local restarts=0 status state
  while true; do
    status=0
    launch || status=$?
    state="$(tpu_state)"
    if [[ "$state" == READY ]]; then
      ((status != 0)) || { log "training finished"; return 0; }
      ((status == SSH_FAILED || status == WATCHDOG_ABORT)) || die "training exited $status on a healthy TPU; not relaunching (see launch/logs.sh)"
    fi
    ((restarts < MAX_RESTARTS)) || die "gave up after $restarts restarts (TPU $state, training exit $status)"
    restarts=$((restarts + 1))
    log "TPU $state, training exit $status: restart $restarts of $MAX_RESTARTS"
    recover "$state"
  done
}

BABYSIT=0
MAX_RESTARTS=5
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --babysit) BABYSIT=1 ;;
    --max-restarts)
      [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || die "--max-restarts needs a count"
      MAX_RESTARTS="$2"
      shift
      ;;
    -*) die "unknown option $1 ($USAGE)" ;;
    *) break ;;
  esac
  shift
done
(($# >= 2)) || die "$USAGE"
require PROJECT
MODEL_DIR="$(model_dir_of "$1")"
EXPERIMENT="$2"
MAIN_FLAGS=("${@:3}")
log "training $EXPERIMENT on $TPU_NAME into $MODEL_DIR"
if [[ "$BABYSIT" == 1 ]]; then
  COMMIT="$(resolve_commit)"  # every relaunch sets up this commit, whatever HEAD does meanwhile
  export COMMIT
  babysit
else
  launch
fi
