#!/usr/bin/env bash
# test.sh [PYTEST ARGS...] — runs the Python SDK's own tests (tests/) with the pinned pytest of
# the toolchain venv (env OVSB_PY_TOOLCHAIN, default plugin-sdk/python/.toolchain; set up by
# toolchain.sh when missing or stale).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${OVSB_PY_TOOLCHAIN:-$here/.toolchain}
"$here/toolchain.sh" "$venv"
cd "$here"
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
