#!/usr/bin/env bash
# Creates the TPU VM, retrying with backoff while the zone has no capacity (or via a queued
# resource with QUEUED=1, which waits for capacity on Google's side).
#
#   launch/create.sh [--dry-run]
#
# Retries: CREATE_ATTEMPTS (10), first wait CREATE_BACKOFF_S (60 s), doubling up to
# CREATE_BACKOFF_MAX_S (900 s). Queued: polls every QUEUE_POLL_S (60 s) for QUEUE_TIMEOUT_S (24 h).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "$0")/env.sh"

: "${CREATE_ATTEMPTS:=10}"
: "${CREATE_BACKOFF_S:=60}"
: "${CREATE_BACKOFF_MAX_S:=900}"
: "${QUEUE_POLL_S:=60}"
: "${QUEUE_TIMEOUT_S:=86400}"
# What gcloud says when the zone is out of TPUs; anything else is not worth retrying.
CAPACITY_ERRORS='RESOURCE_EXHAUSTED|no more capacity|insufficient capacity|resource pool exhausted|stockout'

spot_flag() {
  if [[ "$SPOT" == 1 ]]; then echo --spot; fi
}

create_vm() {
  # shellcheck disable=SC2046  # spot_flag is one word or none
  run_gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" $(spot_flag)
}

create_with_retries() {
  local attempt=1 delay="$CREATE_BACKOFF_S" output
  until output="$(create_vm 2>&1)"; do
    echo "$output" >&2
    grep -qiE "$CAPACITY_ERRORS" <<<"$output" || die "creating $TPU_NAME failed (not a capacity error)"
    ((attempt < CREATE_ATTEMPTS)) || die "no capacity for $ACCELERATOR_TYPE in $ZONE after $attempt attempts"
    log "no capacity for $ACCELERATOR_TYPE in $ZONE (attempt $attempt of $CREATE_ATTEMPTS); retrying in ${delay}s"
    sleep "$delay"
    attempt=$((attempt + 1))
    delay=$((2 * delay < CREATE_BACKOFF_MAX_S ? 2 * delay : CREATE_BACKOFF_MAX_S))
  done
  if [[ -n "$output" ]]; then echo "$output" >&2; fi
}

create_queued() {
  # shellcheck disable=SC2046  # spot_flag is one word or none
  run_gcloud compute tpus queued-resources create "$QUEUED_RESOURCE" --node-id="$TPU_NAME" \
    --zone="$ZONE" --project="$PROJECT" --accelerator-type="$ACCELERATOR_TYPE" \
    --runtime-version="$RUNTIME_VERSION" $(spot_flag)
  local waited=0 state
  while true; do
    state="$(run_gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE" \
      --zone="$ZONE" --project="$PROJECT" --format='value(state.state)')"
    [[ "$DRY_RUN" == 1 || "$state" == ACTIVE ]] && return 0
    [[ "$state" == FAILED || "$state" == SUSPENDED ]] && die "queued resource $QUEUED_RESOURCE is $state"
    ((waited < QUEUE_TIMEOUT_S)) || die "queued resource $QUEUED_RESOURCE still $state after ${waited}s"
    log "queued resource $QUEUED_RESOURCE is $state; waiting"
    sleep "$QUEUE_POLL_S"
    waited=$((waited + QUEUE_POLL_S))
  done
}

parse_dry_run_only "create.sh [--dry-run]" "$@"
require PROJECT
if [[ "$QUEUED" == 1 ]]; then
  create_queued
else
  create_with_retries
fi
log "created $TPU_NAME ($ACCELERATOR_TYPE, $RUNTIME_VERSION) in $ZONE"
