#!/usr/bin/env bash
# The README's walkthrough, as a script: catalog → provision `devnet` with a plugin chain → poll →
# bind → call the endpoint → see the plugins act → rotate the credentials → unbind → deprovision;
# then a validator: key in,
# keymanager through the binding, deprovision, history kept. Run it while
# `examples/quick-start.sh` runs (the tests run it against `ovsb serve` too). Exits non-zero at the
# first step that does not answer as described.
set -euo pipefail

BROKER="${OVSB_BROKER_URL:-http://127.0.0.1:8080}"
PASSWORD="${OVSB_BROKER_PASSWORD:-$(cat "${OVSB_DATA_DIR:-.ovsb}/broker-password")}"
H='X-Broker-API-Version: 2.17'
S=6f1c2a3e-6d3b-4a7e-9c55-0e2f3b7c1a01   # service ethereum-rpc
P=6f1c2a3e-6d3b-4a7e-9c55-0e2f3b7c1b01   # plan devnet: an anvil of its own
ID="walkthrough-$$"
osb() { curl -sS -u "ovsb:$PASSWORD" -H "$H" -H 'Content-Type: application/json' "$@"; }
expect() { # expect TEXT PATTERN WHAT
    if ! grep -q -- "$2" <<<"$1"; then echo "FAILED: $3: expected $2 in: $1" >&2; exit 1; fi
    echo "ok: $3"
}
poll() { # poll until the last operation of instance $1 (default $ID) has finished; prints its body
    for _ in $(seq 1 600); do
        body=$(osb "$BROKER/v2/service_instances/${1:-$ID}/last_operation")
        grep -q '"in progress"' <<<"$body" || { echo "$body"; return; }
        sleep 0.2
    done
    echo "timed out: $body"
}

expect "$(osb "$BROKER/v2/catalog")" '"name":"devnet"' "the catalog lists the devnet plan"

expect "$(osb -X PUT "$BROKER/v2/service_instances/$ID?accepts_incomplete=true" -d '{
    "service_id": "'$S'", "plan_id": "'$P'", "organization_guid": "org", "space_guid": "space",
    "parameters": {"chain_id": 1337, "plugins": [
        {"name": "method-filter", "config": {"deny": ["eth_sendTransaction"]}},
        {"name": "eth-extras"}
    ]}}')" '"operation":"provision-' "provision is accepted (202)"
expect "$(poll)" '"state":"succeeded"' "the instance is provisioned"

binding=$(osb -X PUT "$BROKER/v2/service_instances/$ID/service_bindings/my-app" -d '{"service_id": "'$S'", "plan_id": "'$P'"}')
expect "$binding" '"uri":"http' "bind returns credentials"
URI=$(sed -E 's/.*"uri":"([^"]+)".*/\1/' <<<"$binding")

rpc() { curl -sS -H 'Content-Type: application/json' "$URI" -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\",\"params\":$2}"; }
expect "$(rpc eth_chainId '[]')" '"result":"0x539"' "the endpoint serves the instance's own chain (1337)"
expect "$(rpc ovsb_getBalances '[["0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"]]')" '"result":\["0x' \
    "eth-extras adds ovsb_getBalances"
expect "$(rpc eth_sendTransaction '[{"from":"0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266","to":"0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"}]')" \
    '"code":-32601' "method-filter refuses eth_sendTransaction"

# Rotation (OSB 2.17): a new binding naming the old one; both keys work until the old one goes.
rotated=$(osb -X PUT "$BROKER/v2/service_instances/$ID/service_bindings/my-app-2" \
    -d '{"service_id": "'$S'", "plan_id": "'$P'", "predecessor_binding_id": "my-app"}')
expect "$rotated" '"uri":"http' "a rotation returns new credentials"
OLD_URI=$URI
URI=$(sed -E 's/.*"uri":"([^"]+)".*/\1/' <<<"$rotated")
[ "$URI" != "$OLD_URI" ] || { echo "FAILED: the rotation returned the old key" >&2; exit 1; }
expect "$(rpc eth_chainId '[]')" '"result":"0x539"' "the new key serves"

expect "$(osb -X DELETE "$BROKER/v2/service_instances/$ID/service_bindings/my-app?service_id=$S&plan_id=$P")" '{}' "unbind the old binding"
expect "$(rpc eth_chainId '[]')" '"result":"0x539"' "the new key still serves"
URI=$OLD_URI
expect "$(rpc eth_chainId '[]')" '"code":-32001' "the old key no longer works"
expect "$(osb -X DELETE "$BROKER/v2/service_instances/$ID/service_bindings/my-app-2?service_id=$S&plan_id=$P")" '{}' "unbind"

expect "$(osb -X DELETE "$BROKER/v2/service_instances/$ID?service_id=$S&plan_id=$P&accepts_incomplete=true")" \
    '"operation":"deprovision-' "deprovision is accepted (202)"
expect "$(poll)" '"state":"succeeded"' "the instance is deprovisioned"

# A validator: interop key 3 into a Lodestar dev chain of its own, keymanager through the binding.
VS=6f1c2a3e-6d3b-4a7e-9c55-0e2f3b7c1a02   # service ethereum-validator
VP=6f1c2a3e-6d3b-4a7e-9c55-0e2f3b7c1b11   # plan devnet: a Lodestar dev chain of its own
VID="validator-$$"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KEYS=$(mktemp -d)
(cd "$KEYS" && node "$ROOT/tests/lodestar/mkkeystore.mjs" 3 >/dev/null)
expect "$(osb -X PUT "$BROKER/v2/service_instances/$VID?accepts_incomplete=true" -d '{
    "service_id": "'$VS'", "plan_id": "'$VP'", "organization_guid": "org", "space_guid": "space",
    "parameters": {"keystores": ['"$(cat "$KEYS/keystore-3.json")"'], "passwords": ["testpassword1234"],
                   "fee_recipient": "0x00000000000000000000000000000000000000bb"}}')" \
    '"operation":"provision-' "validator provision is accepted (202)"
rm -rf "$KEYS"
vdone=$(poll "$VID")
expect "$vdone" '"state":"succeeded"' "the validator is provisioned"
expect "$vdone" ': imported' "its description reports the key as imported"
vbinding=$(osb -X PUT "$BROKER/v2/service_instances/$VID/service_bindings/ops" -d '{"service_id": "'$VS'", "plan_id": "'$VP'"}')
KM=$(sed -E 's/.*"keymanager_uri":"([^"]+)".*/\1/' <<<"$vbinding")
KT=$(sed -E 's/.*"keymanager_token":"([^"]+)".*/\1/' <<<"$vbinding")
expect "$(curl -sS -H "Authorization: Bearer $KT" "$KM/eth/v1/keystores")" '"validating_pubkey":"0x88c141df' \
    "the binding's keymanager lists the key"
expect "$(osb -X DELETE "$BROKER/v2/service_instances/$VID?service_id=$VS&plan_id=$VP&accepts_incomplete=true")" \
    '"operation":"deprovision-' "validator deprovision is accepted (202)"
expect "$(poll "$VID")" '"state":"succeeded"' "the validator is deprovisioned"
PK3=0x88c141df77cd9d8d7a71a75c826c41a9c9f03c6ee1b180f3e7852f6a280099ded351b58d66e653af8e42816a4d8f532e
expect "$(curl -sS -u "ovsb:$PASSWORD" "$BROKER/ovsb/v1/slashing-protection/$PK3")" '"interchange_format_version":"5"' \
    "the key's slashing-protection history is kept"
echo "walkthrough complete"
