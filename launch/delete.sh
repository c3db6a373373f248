#!/usr/bin/env bash
# Deletes the TPU VM (with QUEUED=1, its queued resource and the VM with it).
#
#   launch/delete.sh [--dry-run]
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "$0")/env.sh"

parse_dry_run_only "delete.sh [--dry-run]" "$@"
require PROJECT
if [[ "$QUEUED" == 1 ]]; then
  run_gcloud compute tpus queued-resources delete "$QUEUED_RESOURCE" --zone="$ZONE" \
    --project="$PROJECT" --force --quiet
else
  run_gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" --quiet
fi
log "deleted $TPU_NAME"
