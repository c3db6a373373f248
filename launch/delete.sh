#!/usr/bin/env bash
# Deletes the TPU VM (with QUEUED=1, its queued resource and the VM with it).
#
#   launch/delete.sh [--dry-run]
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "$0")/env.sh"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    *) die "unknown argument $1 (usage: delete.sh [--dry-run])" ;;
  esac
  shift
done
require PROJECT
if [[ "$QUEUED" == 1 ]]; then
  run_gcloud compute tpus queued-resources delete "$QUEUED_RESOURCE" --zone="$ZONE" \
    --project="$PROJECT" --force --quiet
else
  run_gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" --quiet
fi
log "deleted $TPU_NAME"
