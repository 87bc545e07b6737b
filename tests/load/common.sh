# Sourced by the load scripts: a work directory and the PIDs of what the script starts (in PIDS,
# or in $WORK/pids for processes started in a subshell), both cleaned up on exit; a free loopback
# port; waiting until a port answers.
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}" $(cat "$WORK/pids" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# anvil, the wasm target, and the production build of ovsb (not built with OVSB_SKIP_BUILD set:
# a script measuring a given binary).
[ -x tests/node/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil ] || (cd tests/node && npm ci --no-audit --no-fund --ignore-scripts)
rustup target add wasm32-wasip2 >/dev/null 2>&1
[ -n "${OVSB_SKIP_BUILD:-}" ] || cargo build --profile production -p ovsb -q
TARGET=$(realpath "${CARGO_TARGET_DIR:-target}")
OVSB=$TARGET/production/ovsb
ANVIL_BIN=tests/node/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil
