#!/usr/bin/env bash
# On one TPU-VM worker (launch/run.sh runs it everywhere): trains in the background, keeps the
# log on local disk and copies it to MODEL_DIR/logs/<hostname>.log every LOG_SYNC_S seconds.
#
#   bash codegen2_jax/launch/worker_train.sh MODEL_DIR --gin_file=experiments/X.gin [flags...]
#
# Exits with the trainer's status. A trainer still running from an earlier launch (its ssh
# session dropped) gets SIGTERM first, so it saves a checkpoint that this launch resumes from.
set -euo pipefail
cd "$(dirname "$0")/.."

(($# >= 1)) || { echo "usage: worker_train.sh MODEL_DIR [codegen2_jax.main flags...]" >&2; exit 2; }
model_dir="$1"
shift
VENV="${VENV:-$HOME/codegen2_venv}"
LOG_DIR="${LOG_DIR:-$HOME/codegen2_logs}"
LOG_SYNC_S="${LOG_SYNC_S:-60}"
STOP_TIMEOUT_S="${STOP_TIMEOUT_S:-600}"
log_file="$LOG_DIR/train.log"
pid_file="$LOG_DIR/train.pid"
log_uri="$model_dir/logs/$(hostname).log"

stop_previous() {
  local pid waited=0
  [[ -f "$pid_file" ]] || return 0
  pid="$(cat "$pid_file")"
  kill -0 "$pid" 2>/dev/null || return 0
  echo "$(hostname): stopping the trainer left by an earlier launch (pid $pid)" >&2
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do
    ((waited < STOP_TIMEOUT_S)) || { kill -KILL "$pid"; break; }
    sleep 5
    waited=$((waited + 5))
  done
}

copy_log() {
  gcloud storage cp --quiet "$log_file" "$log_uri" || echo "$(hostname): log copy failed" >&2
}

mkdir -p "$LOG_DIR"
stop_previous
"$VENV/bin/python" -m codegen2_jax.main --gin.MODEL_DIR="'$model_dir'" "$@" >"$log_file" 2>&1 &
trainer=$!
echo "$trainer" >"$pid_file"
echo "$(hostname): training (pid $trainer), log $log_file, copied to $log_uri" >&2
while kill -0 "$trainer" 2>/dev/null; do
  sleep "$LOG_SYNC_S"
  copy_log
done
status=0
wait "$trainer" || status=$?
copy_log
tail -n 5 "$log_file" >&2
exit "$status"
