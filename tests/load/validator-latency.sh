#!/usr/bin/env bash
# Time of a validator instance's operations with the quick-start configuration
# (ethereum-validator / devnet: a Lodestar 1.5.1 dev chain per instance): PUT → last_operation
# `succeeded` for a provision with one keystore (interop key 3), and DELETE → `succeeded` for its
# deprovision (keys deleted, history stored, client stopped). Polls every 50 ms.
#
#   tests/load/validator-latency.sh [RUNS]      (default 5; uses target/debug/ovsb, building it)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-5}
[ -x tests/lodestar/node_modules/.bin/lodestar ] || (cd tests/lodestar && npm ci --no-audit --no-fund)
cargo build -p ovsb -q
WORK=$(mktemp -d)
B=$((28000 + RANDOM % 1000)); G=$((B + 1000)); A=$((B + 2000))
OVSB_DATA_DIR=$WORK OVSB_BROKER_LISTEN=127.0.0.1:$B OVSB_GATEWAY_LISTEN=127.0.0.1:$G \
    OVSB_ADMIN_LISTEN=127.0.0.1:$A OVSB_BROKER_PASSWORD=load-test \
    target/debug/ovsb serve >"$WORK/ovsb.log" 2>&1 &
PID=$!
cleanup() {
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
until curl -s -o /dev/null "127.0.0.1:$B"; do sleep 0.1; done
(cd "$WORK" && node "$OLDPWD/tests/lodestar/mkkeystore.mjs" 3 >/dev/null)
KS=$(cat "$WORK/keystore-3.json")
osb() { curl -sS -u ovsb:load-test -H 'X-Broker-API-Version: 2.17' -H 'Content-Type: application/json' "$@"; }
VS=6f1c2a3e-6d3b-4a7e-9c55-0e2f3b7c1a02; VP=6f1c2a3e-6d3b-4a7e-9c55-0e2f3b7c1b11
wait_done() {
    while osb "http://127.0.0.1:$B/v2/service_instances/$1/last_operation" | grep -q '"in progress"'; do sleep 0.05; done
    osb "http://127.0.0.1:$B/v2/service_instances/$1/last_operation" | grep -q '"succeeded"' || { echo "operation of $1 failed" >&2; exit 1; }
}
now() { date +%s.%N; }
for i in $(seq 1 "$RUNS"); do
    t0=$(now)
    osb -X PUT "http://127.0.0.1:$B/v2/service_instances/latency-$i?accepts_incomplete=true" -d '{
        "service_id": "'$VS'", "plan_id": "'$VP'", "organization_guid": "o", "space_guid": "s",
        "parameters": {"keystores": ['"$KS"'], "passwords": ["testpassword1234"],
                       "fee_recipient": "0x00000000000000000000000000000000000000bb"}}' >/dev/null
    wait_done "latency-$i"
    t1=$(now)
    osb -X DELETE "http://127.0.0.1:$B/v2/service_instances/latency-$i?service_id=$VS&plan_id=$VP&accepts_incomplete=true" >/dev/null
    wait_done "latency-$i"
    t2=$(now)
    printf 'run %d: provision %.2f s, deprovision %.2f s\n' "$i" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)"
done
