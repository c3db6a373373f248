#!/usr/bin/env bash
# On one TPU-VM worker (launch/setup.sh runs it everywhere): the venv with this checkout and
# `.[tpu]`, installed the way the Makefile does (t5 without its dependencies first).
#
#   bash codegen2_jax/launch/worker_setup.sh      # VENV defaults to ~/codegen2_venv
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-$HOME/codegen2_venv}"
T5_VERSION="$(sed -n 's/^T5_VERSION := //p' Makefile)"
[[ -n "$T5_VERSION" ]] || { echo "no T5_VERSION in the Makefile" >&2; exit 1; }

# Ubuntu's TPU images ship python3 without ensurepip, which venv needs.
if ! python3 -c 'import ensurepip' 2>/dev/null; then
  sudo apt-get update -q
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# t5 without its dependencies: setup.py lists them, minus the tensorflow-datasets duplicate.
"$VENV/bin/pip" install -q --no-deps "t5==$T5_VERSION"
"$VENV/bin/pip" install -q -e '.[tpu]'
"$VENV/bin/pip" check
echo "$(hostname): installed $(cat COMMIT 2>/dev/null || echo 'this checkout') into $VENV"
