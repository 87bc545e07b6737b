#!/usr/bin/env bash
# Load test of the first-party plugins: requests/s and latency of `eth_blockNumber` (which no
# plugin answers itself, so every call goes through the whole chain and the node) against anvil
# directly, through ovsb with an empty chain, and through ovsb with the chain of all four
# first-party plugins (method-filter, rate-limit with a limit out of reach, eth-extras, cache).
# Servers on core 0, wrk on core 1, interleaved rounds, medians (as DESIGN.md prescribes).
#
#   tests/load/plugins-load.sh [ROUNDS] [SECONDS]      (defaults: 5 rounds of 10 s)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-5}
SECS=${2:-10}
# Servers started inside $(...) run in a subshell: their PIDs go to $WORK/pids, not to PIDS.
source tests/load/wrk.sh

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
[ -x tests/node/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil ] || (cd tests/node && npm ci --no-audit --no-fund --ignore-scripts)
rustup target add wasm32-wasip2 >/dev/null 2>&1
cargo build --release -p ovsb -q
cargo build --release --target wasm32-wasip2 -q \
    -p ovsb-plugin-method-filter -p ovsb-plugin-rate-limit -p ovsb-plugin-cache -p ovsb-plugin-eth-extras
OVSB=target/release/ovsb
W=target/wasm32-wasip2/release

ANVIL=$(free_port)
taskset -c 0 tests/node/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil --host 127.0.0.1 --port "$ANVIL" --silent & PIDS+=($!)
wait_port "$ANVIL"

start_ovsb() { # name plugin-args...
    local name=$1; shift
    local port; port=$(free_port)
    taskset -c 0 "$OVSB" plugin serve --upstream "http://127.0.0.1:$ANVIL" --listen "127.0.0.1:$port" --key loadtest "$@" \
        > "$WORK/$name.log" 2>&1 & echo $! >> "$WORK/pids"
    wait_port "$port"
    echo "http://127.0.0.1:$port/v1/loadtest"
}
declare -A URL
URL[direct]="http://127.0.0.1:$ANVIL"
URL[ovsb-empty]=$(start_ovsb ovsb-empty)
URL[ovsb-4-plugins]=$(start_ovsb ovsb-4-plugins \
    --plugin "$W/ovsb_plugin_method_filter.wasm" --config '{"deny":["debug_*","eth_send*"]}' \
    --plugin "$W/ovsb_plugin_rate_limit.wasm" --config '{"requests_per_second":1000000,"burst":1000000}' \
    --plugin "$W/ovsb_plugin_eth_extras.wasm" --config 'null' \
    --plugin "$W/ovsb_plugin_cache.wasm" --config 'null')
ORDER=(direct ovsb-empty ovsb-4-plugins)

BODY='{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}'
cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
LUA
measure "$WORK/post.lua"

python3 - "$WORK" "$ROUNDS" "${ORDER[@]}" <<'PY'
import sys
sys.path.insert(0, "tests/load")
from wrk_report import report
rows = report(sys.argv[1:], lambda t: None if t == "direct" else "direct")
e, f = rows["ovsb-empty"], rows["ovsb-4-plugins"]
print(f"four plugins: {100 * f[0] / e[0]:.0f}% of the empty chain's req/s, +{1e6 / f[0] - 1e6 / e[0]:.1f} µs per call")
PY
