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
# `anvil-ovsb-*` and `static-ovsb-*` are `ovsb plugin serve` (one chain, one key, no broker);
# `anvil-serve-*` is the whole `ovsb serve`: a `shared` instance provisioned through the broker,
# with the empty chain or the three plugins, called at its binding's `uri` (the plan's method
# rules, the binding's route, budgets and shares: what a tenant's dApp goes through). `anvil-hit-3`
# is that three-plugin binding calling `eth_chainId`, which the cache answers without the node.
#
#   tests/load/gateway-load.sh [ROUNDS] [SECONDS]      (defaults: 5 rounds of 10 s)
#
# OVSB_BASELINE=/path/to/an/older/ovsb adds that build through a binding (`anvil-bserve-*`,
# `anvil-bhit-3`), interleaved with this one (before/after figures of a change from one run).
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
[ -n "${OVSB_SKIP_BUILD:-}" ] || cargo build --release -p ovsb -q --bin ovsb --example proxy_floor   # thin LTO: see [profile.release] in Cargo.toml
cargo build --release --target wasm32-wasip2 -q -p ovsb-plugin-method-filter -p ovsb-plugin-rate-limit -p ovsb-plugin-cache
TARGET=$(realpath "${CARGO_TARGET_DIR:-target}")
W=$TARGET/wasm32-wasip2/release
OVSB=$TARGET/release/ovsb
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
# `ovsb serve` with the given binary: a `shared` plan over anvil, the three first-party plugins
# registered; two instances provisioned through the broker (the empty chain, and method-filter +
# rate-limit + cache) and bound. Sets SERVE_0 and SERVE_3 to the bindings' `uri`.
start_serve() { # name binary
    local broker gateway admin; broker=$(free_port); gateway=$(free_port); admin=$(free_port)
    cat > "$WORK/$1.toml" <<TOML
data_dir = "$WORK/$1"

[broker]
listen = "127.0.0.1:$broker"
username = "ovsb"
password = "load-test"

[gateway]
listen = "127.0.0.1:$gateway"

[admin]
listen = "127.0.0.1:$admin"

[[plugins]]
name = "method-filter"
path = "$W/ovsb_plugin_method_filter.wasm"

[[plugins]]
name = "rate-limit"
path = "$W/ovsb_plugin_rate_limit.wasm"

[[plugins]]
name = "cache"
path = "$W/ovsb_plugin_cache.wasm"

[[services]]
id = "svc"
name = "ethereum-rpc"
description = "shared anvil"

[[services.plans]]
id = "shared"
name = "shared"
description = "the shared anvil"
driver = { kind = "upstream", http = ["http://127.0.0.1:$ANVIL"] }
policy = { allowed_methods = ["eth_chainId", "eth_blockNumber", "eth_getBalance", "eth_call", "eth_getLogs", "net_version", "ovsb_*"] }
TOML
    taskset -c 0 "$2" serve --config "$WORK/$1.toml" > "$WORK/$1.log" 2>&1 & PIDS+=($!)
    wait_port "$broker"; wait_port "$gateway"
    osb() { # method path [body]
        curl -sf -u ovsb:load-test -H 'X-Broker-API-Version: 2.17' -H 'content-type: application/json' \
            -X "$1" "http://127.0.0.1:$broker$2" ${3:+-d "$3"}
    }
    provision() { # id plugins-json
        osb PUT "/v2/service_instances/$1?accepts_incomplete=true" \
            "{\"service_id\":\"svc\",\"plan_id\":\"shared\",\"organization_guid\":\"o\",\"space_guid\":\"s\",\"parameters\":{\"plugins\":$2}}" >/dev/null
        for _ in $(seq 100); do
            osb GET "/v2/service_instances/$1/last_operation" | grep -q '"succeeded"' && break
            sleep 0.1
        done
        osb PUT "/v2/service_instances/$1/service_bindings/b?accepts_incomplete=true" \
            '{"service_id":"svc","plan_id":"shared"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["credentials"]["uri"])'
    }
    SERVE_0=$(provision empty '[]')
    SERVE_3=$(provision three '[{"name":"method-filter","config":{"deny":["debug_*","eth_send*"]}},{"name":"rate-limit","config":{"requests_per_second":1000000,"burst":1000000}},{"name":"cache","config":{}}]')
}
wait_port "$ANVIL"; wait_port "$STATIC"
declare -A URL BODY_OF
HIT='{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}'
start_serve serve "$OVSB"
URL[anvil-serve-0]=$SERVE_0; URL[anvil-serve-3]=$SERVE_3; URL[anvil-hit-3]=$SERVE_3; BODY_OF[anvil-hit-3]=$HIT
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
    taskset -c 0 "$TARGET/release/examples/proxy_floor" "$1" "127.0.0.1:$port" "http://127.0.0.1:$STATIC/" > "$WORK/floor-$1.log" 2>&1 & echo $! >> "$WORK/pids"
    wait_port "$port"
    echo "http://127.0.0.1:$port/"
}
URL[static-floor-hyper]=$(start_floor hyper)
URL[static-floor-rpc]=$(start_floor jsonrpsee)
ORDER=(anvil-direct anvil-nginx anvil-ovsb-0 anvil-ovsb-3 anvil-serve-0 anvil-serve-3 anvil-hit-3
       static-direct static-nginx static-floor-hyper static-floor-rpc static-ovsb-0 static-ovsb-3)
if [ -n "${OVSB_BASELINE:-}" ]; then
    start_serve base "$OVSB_BASELINE"
    URL[anvil-bserve-0]=$SERVE_0; URL[anvil-bserve-3]=$SERVE_3; URL[anvil-bhit-3]=$SERVE_3; BODY_OF[anvil-bhit-3]=$HIT
    ORDER=(anvil-direct anvil-nginx anvil-ovsb-0 anvil-ovsb-3 anvil-bserve-0 anvil-serve-0 anvil-bserve-3 anvil-serve-3
           anvil-bhit-3 anvil-hit-3 static-direct static-nginx static-floor-hyper static-floor-rpc static-ovsb-0 static-ovsb-3)
fi

measure tests/load/post.lua

python3 - "$WORK" "$ROUNDS" "${ORDER[@]}" <<'PY'
import sys
sys.path.insert(0, "tests/load")
from wrk_report import report
rows = report(sys.argv[1:], lambda t: None if t.endswith("direct") else t.split("-")[0] + "-direct")
for up, ovsb in (("anvil", "serve"), ("anvil", "ovsb"), ("static", "ovsb")):
    ng, o3 = rows[f"{up}-nginx"], rows[f"{up}-{ovsb}-3"]
    o0 = rows[f"{up}-{ovsb}-0"]
    what = "through a binding of `ovsb serve`" if ovsb == "serve" else "`ovsb plugin serve`"
    print(f"{up}, {what}: empty chain = {o0[0] / ng[0]:.2f}x nginx's req/s (target ≥ 0.9x), "
          f"p99 {o0[2] / ng[2]:.2f}x; method-filter + rate-limit + cache = {o3[0] / ng[0]:.2f}x (target ≥ 0.8x), "
          f"p99 {o3[2] / ng[2]:.2f}x nginx's (target ≤ 1.5x)")
hit, ng = rows["anvil-hit-3"], rows["anvil-nginx"]
print(f"cache hit through a binding (eth_chainId, no node): {hit[0] / ng[0]:.2f}x nginx → anvil's req/s (target ≥ 1.5x), "
      f"p99 {hit[2] / ng[2]:.2f}x")
ng = rows["static-nginx"]
for floor, what in (("static-floor-hyper", "hyper server + client"), ("static-floor-rpc", "jsonrpsee server + hyper client")):
    print(f"floor, {what}, no ovsb code: {100 * rows[floor][0] / ng[0]:.0f}% of nginx's req/s, p99 {rows[floor][2] / ng[2]:.2f}x; "
          f"ovsb's empty chain reaches {100 * rows['static-ovsb-0'][0] / rows[floor][0]:.0f}% of it")
if "anvil-bserve-0" in rows:
    for b, n in (("bserve-0", "serve-0"), ("bserve-3", "serve-3"), ("bhit-3", "hit-3")):
        base, now = rows[f"anvil-{b}"][0], rows[f"anvil-{n}"][0]
        ng = rows["anvil-nginx"]
        print(f"through a binding, {n}: baseline {base:.0f} req/s ({base / ng[0]:.2f}x nginx), "
              f"this build {now:.0f} req/s ({now / ng[0]:.2f}x nginx): {100 * (now / base - 1):+.1f}%")
PY
