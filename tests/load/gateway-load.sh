#!/usr/bin/env bash
# Load test of the data plane, as DESIGN.md prescribes: servers pinned to core 0, wrk to core 1,
# targets interleaved over several rounds, medians reported. Compares, against anvil and against
# a static upstream (nginx answering a fixed JSON-RPC result): the upstream directly, nginx
# proxying it, ovsb with an empty chain, and ovsb with the realistic first-party chain
# (method-filter, rate-limit with a limit out of reach, cache), all calling `eth_blockNumber`
# (which the cache does not answer: every call goes through all three plugins to the node).
# Beside them, against the static upstream, the floors of ovsb's stack (`host/examples/
# proxy_floor.rs`): the least a proxy made of hyper's server and client costs (`static-floor-hyper`),
# and the least one whose server is jsonrpsee, as ovsb's is, costs (`static-floor-rpc`). They bound
# what ovsb can reach against nginx with these crates.
#
#   tests/load/gateway-load.sh [ROUNDS] [SECONDS]      (defaults: 5 rounds of 10 s)
#
# OVSB_BASELINE=/path/to/an/older/ovsb adds that build, with 0 and 3 plugins in front of anvil,
# interleaved with this one (before/after figures of a change from one run).
#
# Installs nginx and wrk from Debian's packages if missing. Everything listens on 127.0.0.1 and
# is stopped by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-5}
SECS=${2:-10}
# Servers started inside $(...) run in a subshell: their PIDs go to $WORK/pids, not to PIDS.
source tests/load/wrk.sh

command -v wrk >/dev/null && command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light wrk >/dev/null; }
[ -x tests/node/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil ] || (cd tests/node && npm ci --no-audit --no-fund --ignore-scripts)
rustup target add wasm32-wasip2 >/dev/null 2>&1
[ -n "${OVSB_SKIP_BUILD:-}" ] || cargo build --profile production -p ovsb -q --bin ovsb --example proxy_floor   # thin LTO: see [profile.production] in Cargo.toml
cargo build --release --target wasm32-wasip2 -q -p ovsb-plugin-method-filter -p ovsb-plugin-rate-limit -p ovsb-plugin-cache
W=target/wasm32-wasip2/release
OVSB=target/production/ovsb
export BODY='{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}'

ANVIL=$(free_port); STATIC=$(free_port); NGX_ANVIL=$(free_port); NGX_STATIC=$(free_port)
taskset -c 0 tests/node/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil --host 127.0.0.1 --port "$ANVIL" --silent & PIDS+=($!)

# One nginx process (one worker, on core 0) with the given `http { … }` contents.
start_nginx() { # name http-block
    cat > "$WORK/$1.conf" <<NGINX
worker_processes 1;
pid $WORK/$1.pid;
error_log $WORK/$1-error.log;
events { worker_connections 4096; }
http {
    access_log off;
$2
}
NGINX
    taskset -c 0 nginx -c "$WORK/$1.conf" -g 'daemon off;' & PIDS+=($!)
}

# The static upstream is an nginx process of its own: were it served by the proxying nginx's own
# worker, nginx's upstream hop would never leave its event loop (no wakeup, no context switch),
# while every other proxy's hop crosses to another process.
start_nginx static "
    server { listen 127.0.0.1:$STATIC;
             location / { default_type application/json; return 200 '{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":\"0x7a69\"}'; } }"
start_nginx proxy "
    upstream anvil { server 127.0.0.1:$ANVIL; keepalive 64; }
    upstream static { server 127.0.0.1:$STATIC; keepalive 64; }
    server { listen 127.0.0.1:$NGX_ANVIL;
             location / { proxy_pass http://anvil; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }
    server { listen 127.0.0.1:$NGX_STATIC;
             location / { proxy_pass http://static; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"

start_ovsb() { # name upstream_port plugins [binary]
    local port; port=$(free_port)
    local bin=${4:-$OVSB}
    local args=(plugin serve --upstream "http://127.0.0.1:$2" --listen "127.0.0.1:$port" --key loadtest)
    if [ "$3" = 3 ]; then
        args+=(--plugin "$W/ovsb_plugin_method_filter.wasm" --config '{"deny":["debug_*","eth_send*"]}'
               --plugin "$W/ovsb_plugin_rate_limit.wasm" --config '{"requests_per_second":1000000,"burst":1000000}'
               --plugin "$W/ovsb_plugin_cache.wasm" --config 'null')
    fi
    taskset -c 0 "$bin" "${args[@]}" > "$WORK/$1.log" 2>&1 & echo $! >> "$WORK/pids"
    wait_port "$port"
    echo "http://127.0.0.1:$port/v1/loadtest"
}
wait_port "$ANVIL"; wait_port "$STATIC"
declare -A URL
URL[anvil-direct]="http://127.0.0.1:$ANVIL"
URL[anvil-nginx]="http://127.0.0.1:$NGX_ANVIL"
URL[anvil-ovsb-0]=$(start_ovsb anvil-ovsb-0 "$ANVIL" 0)
URL[anvil-ovsb-3]=$(start_ovsb anvil-ovsb-3 "$ANVIL" 3)
URL[static-direct]="http://127.0.0.1:$STATIC"
URL[static-nginx]="http://127.0.0.1:$NGX_STATIC"
URL[static-ovsb-0]=$(start_ovsb static-ovsb-0 "$STATIC" 0)
URL[static-ovsb-3]=$(start_ovsb static-ovsb-3 "$STATIC" 3)
start_floor() { # kind
    local port; port=$(free_port)
    taskset -c 0 target/production/examples/proxy_floor "$1" "127.0.0.1:$port" "http://127.0.0.1:$STATIC/" > "$WORK/floor-$1.log" 2>&1 & echo $! >> "$WORK/pids"
    wait_port "$port"
    echo "http://127.0.0.1:$port/"
}
URL[static-floor-hyper]=$(start_floor hyper)
URL[static-floor-rpc]=$(start_floor jsonrpsee)
ORDER=(anvil-direct anvil-nginx anvil-ovsb-0 anvil-ovsb-3 static-direct static-nginx static-floor-hyper static-floor-rpc
       static-ovsb-0 static-ovsb-3)
if [ -n "${OVSB_BASELINE:-}" ]; then
    URL[anvil-base-0]=$(start_ovsb anvil-base-0 "$ANVIL" 0 "$OVSB_BASELINE")
    URL[anvil-base-3]=$(start_ovsb anvil-base-3 "$ANVIL" 3 "$OVSB_BASELINE")
    ORDER=(anvil-direct anvil-nginx anvil-base-0 anvil-ovsb-0 anvil-base-3 anvil-ovsb-3
           static-direct static-nginx static-floor-hyper static-floor-rpc static-ovsb-0 static-ovsb-3)
fi

measure tests/load/post.lua

python3 - "$WORK" "$ROUNDS" "${ORDER[@]}" <<'PY'
import sys
sys.path.insert(0, "tests/load")
from wrk_report import report
rows = report(sys.argv[1:], lambda t: None if t.endswith("direct") else t.split("-")[0] + "-direct")
for up in ("anvil", "static"):
    ng, o3 = rows[f"{up}-nginx"], rows[f"{up}-ovsb-3"]
    o0 = rows[f"{up}-ovsb-0"]
    print(f"{up}: ovsb empty chain = {100 * o0[0] / ng[0]:.0f}% of nginx's req/s (target ≥ 90%); "
          f"with method-filter + rate-limit + cache = {100 * o3[0] / ng[0]:.0f}% (target ≥ 75%), "
          f"p99 {o3[2] / ng[2]:.2f}x nginx's (target ≤ 1.5x)")
ng = rows["static-nginx"]
for floor, what in (("static-floor-hyper", "hyper server + client"), ("static-floor-rpc", "jsonrpsee server + hyper client")):
    print(f"floor, {what}, no ovsb code: {100 * rows[floor][0] / ng[0]:.0f}% of nginx's req/s, p99 {rows[floor][2] / ng[2]:.2f}x; "
          f"ovsb's empty chain reaches {100 * rows['static-ovsb-0'][0] / rows[floor][0]:.0f}% of it")
if "anvil-base-0" in rows:
    for n in ("0", "3"):
        base, now = rows[f"anvil-base-{n}"][0], rows[f"anvil-ovsb-{n}"][0]
        print(f"anvil, {n} plugins: baseline {base:.0f} req/s ({1e6 / base - 1e6 / rows['anvil-direct'][0]:.1f} µs added), "
              f"this build {now:.0f} req/s ({1e6 / now - 1e6 / rows['anvil-direct'][0]:.1f} µs added): {100 * (now / base - 1):+.1f}%")
PY
