#!/usr/bin/env bash
# Quick start, command 1: runs ovsb (broker + gateway) with the built-in quick-start
# configuration (examples/quick-start.toml): SQLite under ./.ovsb, loopback listeners, and the
# `ethereum-rpc` service whose `devnet` plan runs an anvil per instance (`shared`: the anvil
# this script starts on 127.0.0.1:8545), and the `ethereum-validator` service whose `devnet`
# plan runs a Lodestar dev chain per instance. Installs what it needs first (idempotently); Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

anvil=tests/node/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil
if [ ! -x "$anvil" ]; then
    echo "==> installing anvil (pinned in tests/node/package-lock.json)"
    (cd tests/node && npm ci --no-audit --no-fund --ignore-scripts)
fi

if [ ! -x tests/lodestar/node_modules/.bin/lodestar ]; then
    echo "==> installing Lodestar 1.5.1 (pinned in tests/lodestar/package-lock.json; about a minute)"
    (cd tests/lodestar && npm ci --no-audit --no-fund)
fi

anvil_pid=""
cleanup() { if [ -n "$anvil_pid" ]; then kill "$anvil_pid" 2>/dev/null || true; wait "$anvil_pid" 2>/dev/null || true; fi; }
trap cleanup EXIT INT TERM
if (exec 3<>/dev/tcp/127.0.0.1/8545) 2>/dev/null; then
    echo "==> a node already listens on 127.0.0.1:8545; using it"
else
    echo "==> starting anvil on 127.0.0.1:8545 (log: .ovsb/anvil.log)"
    mkdir -p .ovsb
    "$anvil" --host 127.0.0.1 --port 8545 >.ovsb/anvil.log 2>&1 &
    anvil_pid=$!
fi

echo "==> building the first-party plugins (wasm32-wasip2)"
rustup target add wasm32-wasip2
cargo build --release --locked --target wasm32-wasip2 \
    -p ovsb-plugin-method-filter -p ovsb-plugin-rate-limit -p ovsb-plugin-cache -p ovsb-plugin-eth-extras

echo "==> building and starting ovsb (the first build takes several minutes)"
cargo build --release -p ovsb --locked
# The binary is target/release/ovsb (or under $CARGO_TARGET_DIR); put that folder on PATH to
# run `ovsb reload`, `ovsb config show` and the other commands by name.
"${CARGO_TARGET_DIR:-target}/release/ovsb" serve "$@"
