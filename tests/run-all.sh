#!/usr/bin/env bash
# The whole test suite, on a fresh machine of the rust-svc kind. Installs what it needs first,
# idempotently, so it is also the command to run after a clone.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# A fresh clone gains nothing from incremental compilation, and its caches are the largest part of
# target/ after debug info (a CI machine once ran out of disk). Set CARGO_INCREMENTAL=1 to keep them.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
disk() { df -h . | awk 'NR==2 {print "disk: " $4 " free of " $2 " (" $5 " used); target/: " t}' t="$(du -sh target 2>/dev/null | cut -f1)"; }
disk

step "wasm32-wasip2 target (test plugins are built to it by tests/artifacts/build.rs)"
rustup target add wasm32-wasip2

step "anvil (the Ethereum node of the end-to-end tests), pinned in tests/node/package-lock.json"
if [ ! -x tests/node/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil ]; then
    (cd tests/node && npm ci --no-audit --no-fund --ignore-scripts)
fi
tests/node/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil --version | head -1

step "Lodestar 1.5.1 (the validator tests run real clients), pinned in tests/lodestar/package-lock.json"
# About a minute of npm and native addons: installed in the background while Rust builds.
lodestar_pid=""
lodestar_log=$(mktemp)
if [ ! -x tests/lodestar/node_modules/.bin/lodestar ]; then
    (cd tests/lodestar && npm ci --no-audit --no-fund) >"$lodestar_log" 2>&1 &
    lodestar_pid=$!
    echo "installing in the background (pid $lodestar_pid)"
fi

step "@metamask/eth-sig-util (the sealed-secrets tests use the real wallet library), pinned in tests/ethsig/package-lock.json"
if [ ! -d tests/ethsig/node_modules/@metamask/eth-sig-util ]; then
    (cd tests/ethsig && npm ci --no-audit --no-fund --ignore-scripts)
fi

step "Python's jsonschema 4.26.0 (the catalog's published schemas are checked by a client-side validator), from PyPI"
if ! python3 -c 'import importlib.metadata as m, sys; sys.exit(m.version("jsonschema") != "4.26.0")' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check 'jsonschema==4.26.0'
fi
python3 -c 'import importlib.metadata as m; print("jsonschema", m.version("jsonschema"))'

step "Python's prometheus_client 0.26.0 (/metrics is parsed by a real exposition-format parser), from PyPI"
if ! python3 -c 'import importlib.metadata as m, sys; sys.exit(m.version("prometheus_client") != "0.26.0")' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check 'prometheus_client==0.26.0'
fi

step "viem and ethers (the dApp tests run real clients), ajv (strict schema checks), pinned in tests/dapp/package-lock.json"
if [ ! -d tests/dapp/node_modules/viem ] || [ ! -d tests/dapp/node_modules/ethers ] || [ ! -d tests/dapp/node_modules/ajv-draft-04 ]; then
    (cd tests/dapp && npm ci --no-audit --no-fund --ignore-scripts)
fi

step "Chromium (the dashboard and dApp tests render pages headless), from Debian's packages"
if ! command -v chromium >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
chromium --version

step "PostgreSQL (the broker tests run on SQLite and on PostgreSQL)"
export OVSB_TEST_POSTGRES_URL="${OVSB_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
    fi
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432 || { echo "PostgreSQL is not running on 127.0.0.1:5432 and could not be started" >&2; exit 1; }
psql "$OVSB_TEST_POSTGRES_URL" -qAtc "select 'PostgreSQL ' || current_setting('server_version')"

step "Python plugin toolchain (componentize-py, pytest), pinned with hashes in plugin-sdk/python/requirements.lock"
plugin-sdk/python/toolchain.sh plugin-sdk/python/.toolchain
plugin-sdk/python/.toolchain/bin/componentize-py --version

step "JavaScript plugin toolchain (componentize-js, esbuild), pinned in plugin-sdk/js/package-lock.json"
plugin-sdk/js/setup.sh

step "plugin SDKs' own tests against their mock hosts: pytest (Python), node --test (JavaScript), and the examples'"
plugin-sdk/python/test.sh
examples/python-plugin/test.sh
plugin-sdk/js/test.sh
(cd examples/js-plugin && npm test)

step "first-party plugins (the example configurations load them from target/wasm32-wasip2/release)"
cargo build --release --locked --target wasm32-wasip2 \
    -p ovsb-plugin-method-filter -p ovsb-plugin-rate-limit -p ovsb-plugin-cache -p ovsb-plugin-eth-extras

step "lint: rustfmt and clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "Lodestar installed"
if [ -n "$lodestar_pid" ]; then
    wait "$lodestar_pid" || { cat "$lodestar_log"; echo "installing Lodestar failed" >&2; exit 1; }
fi
tests/lodestar/node_modules/.bin/lodestar --version 2>/dev/null | head -1 || true

step "tests"
disk
cargo test --workspace --locked
disk
