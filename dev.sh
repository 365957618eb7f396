#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv, installs the pinned
# stack and this package (editable), then runs what you asked for.
#
#   bash dev.sh demo     poison sklearn's 8x8 digits with NTGA, train a Keras
#                        model on clean and on poisoned, print both accuracies
#   bash dev.sh test     run the test suite
#   bash dev.sh bench ARGS...   run a benchmark script under bench/
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# Reinstall only when the install recipe changed.
stamp="$VENV/.ntga_tfds-installed"
want=$(cat setup.py pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[test,cli]'
  echo "$want" > "$stamp"
fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
cmd=${1:-demo}
shift || true
case "$cmd" in
  demo)  exec "$VENV/bin/python" -m ntga_tfds.demo "$@" ;;
  test)  exec "$VENV/bin/python" -m pytest "$@" ;;
  bench) script=$1; shift; exec "$VENV/bin/python" "bench/$script" "$@" ;;
  *) echo "usage: bash dev.sh {demo|test|bench SCRIPT} [args...]" >&2; exit 2 ;;
esac
