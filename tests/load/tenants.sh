#!/usr/bin/env bash
# Provider scale: N instances (default 10,000) of a shared plan whose chain is the three
# first-party plugins (method-filter, rate-limit with a limit out of reach, cache), two bindings
# each, in one `ovsb serve` (release build, SQLite, the default runtime capacity; idle copies
# dropped after 10 s so that the script need not wait the default 30 s), then one call on every
# instance. tests/load/tenants.py reports latencies, RSS and copies alive.
#
#   tests/load/tenants.sh [N]
#
# Everything listens on 127.0.0.1 and is stopped by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-10000}
source tests/load/common.sh
cargo build --release --target wasm32-wasip2 -q -p ovsb-plugin-method-filter -p ovsb-plugin-rate-limit -p ovsb-plugin-cache
W=$TARGET/wasm32-wasip2/release

start_anvil
BROKER=$(free_port); GATEWAY=$(free_port); ADMIN=$(free_port)

cat > "$WORK/ovsb.toml" <<TOML
$(listeners_toml data tenants-test)

[runtime]
idle_ms = 10000

[[plugins]]
name = "method-filter"
path = "$W/ovsb_plugin_method_filter.wasm"

[[plugins]]
name = "rate-limit"
path = "$W/ovsb_plugin_rate_limit.wasm"

[[plugins]]
name = "cache"
path = "$W/ovsb_plugin_cache.wasm"

$(shared_anvil_service chain3 "the shared anvil behind three first-party plugins" 'plugins = [
  { name = "method-filter", config = { deny = ["debug_*", "eth_send*"] } },
  { name = "rate-limit", config = { requests_per_second = 1000000, burst = 1000000 } },
  { name = "cache" },
]')
TOML
"$OVSB" serve --config "$WORK/ovsb.toml" > "$WORK/ovsb.log" 2>&1 & OVSB_PID=$!; PIDS+=($OVSB_PID)
wait_port "$BROKER"; wait_port "$GATEWAY"; wait_port "$ADMIN"
sleep 1
python3 tests/load/tenants.py "http://127.0.0.1:$BROKER" tenants-test "http://127.0.0.1:$ADMIN" "$OVSB_PID" "$N" 10 \
    || { tail -20 "$WORK/ovsb.log"; exit 1; }
