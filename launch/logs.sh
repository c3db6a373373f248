#!/usr/bin/env bash
# Shows training logs: live from a worker's disk, or the copies on the bucket (which outlive
# the TPU VM).
#
#   launch/logs.sh [--dry-run] [--worker N] [--lines N] [--follow]   # live, worker 0 by default
#   launch/logs.sh [--dry-run] RUN                                   # every worker's copy
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "$0")/env.sh"

USAGE="usage: logs.sh [--dry-run] [--worker N] [--lines N] [--follow] [RUN]"
worker=0
lines=100
follow=0
run=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --follow) follow=1 ;;
    --worker | --lines)
      [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || die "$1 needs a number ($USAGE)"
      if [[ "$1" == --worker ]]; then worker="$2"; else lines="$2"; fi
      shift
      ;;
    -*) die "unknown option $1 ($USAGE)" ;;
    *)
      [[ -z "$run" ]] || die "$USAGE"
      run="$1"
      ;;
  esac
  shift
done
require PROJECT
# codegen2_logs/train.log: where worker_train.sh keeps the log, under the worker's home.
if [[ -n "$run" ]]; then
  run_gcloud storage cat "$(model_dir_of "$run")/logs/*.log"
elif [[ "$follow" == 1 ]]; then
  tpu_ssh "$worker" "tail -n $lines -F codegen2_logs/train.log"
else
  tpu_ssh "$worker" "tail -n $lines codegen2_logs/train.log"
fi
