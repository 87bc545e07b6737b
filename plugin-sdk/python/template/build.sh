#!/usr/bin/env bash
# ./build.sh — builds {{name}}.wasm from app.py, in one command:
#   1. sets up .venv with the pinned toolchain of requirements.lock (componentize-py, pytest),
#      only when it is missing or the lock changed;
#   2. puts the ovsb plugin SDK ({{sdk}}) on that venv's path;
#   3. componentizes app.py with the SDK against ovsb's WIT ({{wit}}) into {{name}}.wasm.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
sdk="{{sdk}}"
wit="{{wit}}"
[ -f "$sdk/build.sh" ] || { echo "build.sh: the ovsb Python plugin SDK is not at $sdk (edit sdk= in $0)" >&2; exit 1; }
[ -f "$wit/plugin.wit" ] || { echo "build.sh: ovsb's WIT is not at $wit (edit wit= in $0)" >&2; exit 1; }
OVSB_PY_LOCK="$PWD/requirements.lock" "$sdk/toolchain.sh" .venv
sdk_abs=$(cd "$sdk" && pwd)
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$sdk_abs" >"$site/ovsb_plugin_sdk.pth"
OVSB_PY_TOOLCHAIN="$PWD/.venv" OVSB_WIT="$(cd "$wit" && pwd)" "$sdk/build.sh" . "{{name}}.wasm"
