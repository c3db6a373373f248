#!/usr/bin/env bash
# Runs a gin sweep on the TPU VM, one job after another through run.sh, each job's MODEL_DIR
# under $BUCKET/sweeps/<sweep name>/ (codegen2_jax.experiments.sweep's TPU runner), then tabulates them.
#
#   launch/sweep.sh [--dry-run] [--babysit] SWEEP_FILE     # e.g. gin/sweeps/demo_lr.sweep
#
# PYTHON (default: the repo's .venv, else python3) runs the sweep runner on this machine.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "$0")/env.sh"

USAGE="usage: sweep.sh [--dry-run] [--babysit] SWEEP_FILE"
runner_flags=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --babysit) runner_flags+=(--babysit) ;;
    -*) die "unknown option $1 ($USAGE)" ;;
    *) break ;;
  esac
  shift
done
(($# == 1)) || die "$USAGE"
require PROJECT BUCKET
if [[ "$DRY_RUN" == 1 ]]; then runner_flags+=(--dry_run); fi
if [[ -z "${PYTHON:-}" ]]; then
  PYTHON=python3
  if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then PYTHON="$REPO_ROOT/.venv/bin/python"; fi
fi
sweep_file="$(realpath "$1")"
cd "$REPO_ROOT"
"$PYTHON" -m codegen2_jax.experiments.sweep tpu "$sweep_file" --root="${BUCKET%/}/sweeps" \
  --run_script="$LAUNCH_DIR/run.sh" "${runner_flags[@]}"
