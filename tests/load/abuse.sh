#!/usr/bin/env bash
# What one hostile tenant, or a stranger with no key, does to a quiet tenant of the same gateway.
# One `ovsb serve` (release build, the provider's defaults but max_connections = 1024 as in
# the issue's probe) over one anvil, with two instances of a shared plan: the quiet tenant's (the
# test plugin passing calls on) and the hostile tenant's (the test plugin in `hostile` mode).
# tests/load/abuse.py then measures the quiet tenant's latency with no attack, and during each
# attack: a WebSocket flood, looping-plugin batches, an idle-connection flood, slow bodies, batches
# whose answers take memory (40 x 6 MB), batches that fan out to the node (3 x 1000 calls), two
# keys' keep-alive connections kept after the keys are unbound, and anonymous connections from
# the quiet tenant's own address; for each, ovsb's peak RSS and descriptors, and, as reference, the
# same quiet calls straight to anvil at the same time and the CPU seconds ovsb and anvil spent.
#
#   tests/load/abuse.sh [SECONDS]      (default: 20 s per scenario)
#   ABUSE_ONLY=batch_memory,batch_fanout tests/load/abuse.sh 10    (some attacks only)
#   ABUSE_GATEWAY='slow_call_ms = 25' tests/load/abuse.sh 8   (more [gateway] settings: node time on)
#
# Everything listens on 127.0.0.1 (attackers connect from other 127.0.0.x addresses), every loop
# is bounded, and every process is stopped by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-20}
source tests/load/common.sh
cargo build --release --target wasm32-wasip2 -p ovsb-test-plugin -q
PLUGIN=$TARGET/wasm32-wasip2/release/ovsb_test_plugin.wasm

start_anvil
BROKER=$(free_port); GATEWAY=$(free_port); ADMIN=$(free_port)

cat > "$WORK/ovsb.toml" <<TOML
$(listeners_toml data abuse-test "max_connections = 1024
${ABUSE_GATEWAY:-}")

[[plugins]]
name = "test"
path = "$PLUGIN"

$(shared_anvil_service shared)
TOML
"$OVSB" serve --config "$WORK/ovsb.toml" > "$WORK/ovsb.log" 2>&1 & PIDS+=($!)
OVSB_PID=$!
wait_port "$BROKER"; wait_port "$GATEWAY"

osb() { # method path [body]
    curl -sf -u ovsb:abuse-test -H 'X-Broker-API-Version: 2.17' -H 'content-type: application/json' \
        -X "$1" "http://127.0.0.1:$BROKER$2" ${3:+-d "$3"}
}
provision() { # id mode
    osb PUT "/v2/service_instances/$1?accepts_incomplete=true" \
        "{\"service_id\":\"svc\",\"plan_id\":\"shared\",\"organization_guid\":\"o\",\"space_guid\":\"s\",\"parameters\":{\"plugins\":[{\"name\":\"test\",\"config\":{\"mode\":\"$2\"}}]}}" >/dev/null
    for _ in $(seq 100); do
        osb GET "/v2/service_instances/$1/last_operation" | grep -q '"succeeded"' && break
        sleep 0.1
    done
    osb PUT "/v2/service_instances/$1/service_bindings/b?accepts_incomplete=true" \
        '{"service_id":"svc","plan_id":"shared"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["credentials"]["uri"])'
}
QUIET_URL=$(provision quiet pass)
HOSTILE_URL=$(provision hostile hostile)
HOSTILE_KEY=${HOSTILE_URL##*/}
curl -sf -H 'content-type: application/json' -d '{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}' "$QUIET_URL" | grep -q 0x7a69

ulimit -n 65536 2>/dev/null || true
ABUSE_NODE_URL="http://127.0.0.1:$ANVIL/" ABUSE_NODE_PID=$ANVIL_PID \
    python3 tests/load/abuse.py "127.0.0.1:$GATEWAY" "$QUIET_URL" "$HOSTILE_KEY" "$SECS" "$OVSB_PID" \
    "http://ovsb:abuse-test@127.0.0.1:$BROKER"
echo "ovsb log: $(wc -l < "$WORK/ovsb.log") lines, $(wc -c < "$WORK/ovsb.log") bytes"
