#!/usr/bin/env bash
# Provider scale: N instances (default 10,000) of a shared plan whose chain is the three
# first-party plugins (method-filter, rate-limit with a limit out of reach, cache), two bindings
# each, in one `ovsb serve` (release build, SQLite, the default runtime capacity; idle copies
# dropped after 10 s so that the script need not wait the default 30 s), then one call on every
# instance. tests/load/tenants.py reports latencies, RSS and copies alive; then ovsb is started
# again on the same store, and the time to /readyz 200 is reported (with RSS, descriptors and
# the store's size).
#
#   tests/load/tenants.sh [N]
#
# Everything listens on 127.0.0.1 and is stopped by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-10000}
source tests/load/common.sh
build_first_party_plugins

start_anvil
BROKER=$(free_port); GATEWAY=$(free_port); ADMIN=$(free_port)

cat > "$WORK/ovsb.toml" <<TOML
$(listeners_toml data tenants-test)

[runtime]
idle_ms = 10000

$(chain3_toml)
TOML
"$OVSB" serve --config "$WORK/ovsb.toml" > "$WORK/ovsb.log" 2>&1 & OVSB_PID=$!; PIDS+=($OVSB_PID)
wait_port "$BROKER"; wait_port "$GATEWAY"; wait_port "$ADMIN"
sleep 1
python3 tests/load/tenants.py "http://127.0.0.1:$BROKER" tenants-test "http://127.0.0.1:$ADMIN" "$OVSB_PID" "$N" 10 "$WORK/data" \
    || { tail -20 "$WORK/ovsb.log"; exit 1; }

# Start-up with N instances in the store: stop ovsb, start it again on the same data directory,
# and time process start → /readyz 200 (every route loaded, every chain built).
kill "$OVSB_PID"; wait "$OVSB_PID" 2>/dev/null || true
started=$(date +%s%N)
"$OVSB" serve --config "$WORK/ovsb.toml" >> "$WORK/ovsb.log" 2>&1 & OVSB_PID=$!; PIDS+=($OVSB_PID)
wait_ready "$OVSB_PID" "$WORK/ovsb.log"
ready=$(date +%s%N)
rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$OVSB_PID/status")
fds=$(ls "/proc/$OVSB_PID/fd" | wc -l)
db=$(du -k "$WORK/data"/*.db* 2>/dev/null | awk '{s += $1} END {print s}')
echo "start-up with $N instances in the store: $(( (ready - started) / 1000000 )) ms to /readyz 200;" \
    "RSS then $(( rss / 1024 )) MiB; open descriptors $fds; store files $(( db / 1024 )) MiB"
