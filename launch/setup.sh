#!/usr/bin/env bash
# Puts one commit of this repository on every worker of the TPU VM and installs it with
# `.[tpu]` into a venv there (launch/worker_setup.sh, which follows the Makefile's steps).
#
#   launch/setup.sh [--dry-run]
#
# COMMIT (default: this checkout's HEAD) is shipped as a `git archive`, so it needs no push and
# no git credentials on the workers; only committed files travel.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "$0")/env.sh"

parse_dry_run_only "setup.sh [--dry-run]" "$@"
require PROJECT
COMMIT="$(resolve_commit)"
archive="${TMPDIR:-/tmp}/codegen2_jax-${COMMIT}.tar.gz"
remote_archive="${REMOTE_DIR}.tar.gz"

run_cmd git -C "$REPO_ROOT" archive --format=tar.gz --output="$archive" "$COMMIT"
run_gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:$remote_archive" --zone="$ZONE" \
  --project="$PROJECT" --worker=all
tpu_ssh all "$(quote_args rm -rf "$REMOTE_DIR") && $(quote_args mkdir -p "$REMOTE_DIR") && \
$(quote_args tar -xzf "$remote_archive" -C "$REMOTE_DIR") && \
echo $(quote_args "$COMMIT") > $(quote_args "$REMOTE_DIR/COMMIT") && \
$(quote_args bash "$REMOTE_DIR/launch/worker_setup.sh")"
run_cmd rm -f "$archive"
log "set up $COMMIT on every worker of $TPU_NAME"
