#!/usr/bin/env bash
# The whole test suite, on a fresh machine of the rust-svc kind. Installs what it needs first,
# idempotently, so it is also the command to run after a clone.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "wasm32-wasip2 target (test plugins are built to it by tests/artifacts/build.rs)"
rustup target add wasm32-wasip2

step "lint: rustfmt and clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
cargo test --workspace --locked
