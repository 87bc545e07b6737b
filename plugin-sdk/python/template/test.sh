#!/usr/bin/env bash
# ./test.sh [PYTEST ARGS...] — runs the plugin's native tests (test_*.py) with pytest in .venv,
# against the SDK's mock host (sets up .venv like build.sh when needed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
sdk="{{sdk}}"
[ -f "$sdk/toolchain.sh" ] || { echo "test.sh: the ovsb Python plugin SDK is not at $sdk (edit sdk= in $0)" >&2; exit 1; }
OVSB_PY_LOCK="$PWD/requirements.lock" "$sdk/toolchain.sh" .venv
sdk_abs=$(cd "$sdk" && pwd)
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$sdk_abs" >"$site/ovsb_plugin_sdk.pth"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
