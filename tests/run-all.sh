#!/usr/bin/env bash
# The whole test suite, on a fresh machine of the rust-svc kind. Installs what it needs first,
# idempotently, so it is also the command to run after a clone.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "wasm32-wasip2 target (test plugins are built to it by tests/artifacts/build.rs)"
rustup target add wasm32-wasip2

step "anvil (the Ethereum node of the end-to-end tests), pinned in tests/node/package-lock.json"
if [ ! -x tests/node/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil ]; then
    (cd tests/node && npm ci --no-audit --no-fund --ignore-scripts)
fi
tests/node/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil --version | head -1

step "lint: rustfmt and clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
cargo test --workspace --locked
