#!/bin/sh
# Installs the SDK's build toolchain (ComponentizeJS, esbuild; pinned by package-lock.json) into
# plugin-sdk/js/node_modules with `npm ci`. Idempotent: skips when node_modules was installed
# from the present lock file. Needed for build.mjs when the plugin project has no node_modules of
# its own (the repository's tests/polyglot plugins), not for the SDK's native tests.
set -e
cd "$(dirname "$0")"
stamp=node_modules/.ovsb-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -d node_modules/@bytecodealliance/componentize-js ]; then
  exit 0
fi
command -v npm >/dev/null || { echo "error: npm not found: install Node.js 20 or later" >&2; exit 1; }
npm ci --no-audit --no-fund
echo "$want" > "$stamp"
