#!/usr/bin/env bash
# toolchain.sh DIR — creates or updates the Python plugin toolchain (componentize-py, pytest) in
# a virtual environment at DIR, pinned by requirements.lock next to this script (with hashes).
#
# Idempotent: DIR/.ovsb-lock-sha256 records the sha256 of the lock it was built from; when it
# matches, this is a fast no-op. Otherwise the pinned packages are (re)installed.
# Env: PYTHON (default python3) picks the interpreter the venv is made from (3.9 or newer).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR   (creates a venv with the pinned plugin toolchain at DIR)" >&2
    exit 2
fi
dir=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
lock=${OVSB_PY_LOCK:-$here/requirements.lock}
python=${PYTHON:-python3}

sha256() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
    else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

want=$(sha256 "$lock")
stamp=$dir/.ovsb-lock-sha256
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$dir/bin/componentize-py" ] && [ -x "$dir/bin/pytest" ]; then
    exit 0
fi

if ! command -v "$python" >/dev/null 2>&1; then
    echo "toolchain.sh: no \`$python\` on PATH: install Python 3.9 or newer (or set PYTHON=/path/to/python3)" >&2
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)'; then
    echo "toolchain.sh: $("$python" --version 2>&1) is too old: Python 3.9 or newer is needed (set PYTHON=...)" >&2
    exit 1
fi

echo "toolchain.sh: setting up the Python plugin toolchain in $dir (from $lock)" >&2
if [ ! -x "$dir/bin/python" ]; then
    "$python" -m venv "$dir" || {
        echo "toolchain.sh: could not create a venv at $dir (on Debian/Ubuntu: apt-get install python3-venv)" >&2
        exit 1
    }
fi
rm -f "$stamp"
"$dir/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r "$lock" || {
    echo "toolchain.sh: installing the pinned packages of $lock failed (see above)" >&2
    exit 1
}
echo "$want" >"$stamp"
echo "toolchain.sh: ready: $("$dir/bin/componentize-py" --version 2>/dev/null || echo componentize-py), $("$dir/bin/pytest" --version 2>&1 | head -1)" >&2
