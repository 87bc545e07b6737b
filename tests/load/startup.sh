#!/usr/bin/env bash
# Start-up with many instances: the time from process start to /readyz 200 of `ovsb serve` with
# N instances (default 30,000) of tenants.sh's plan (three first-party plugins) and two bindings
# each in its SQLite store, for each N given. The rows are written straight into the store
# (tests/load/seed_store.py: what N provisions and 2N binds leave there, without making them one
# by one, which takes tenants.sh most of its time), so start-up can be timed at 100,000 tenants.
#
#   tests/load/startup.sh [N...]        e.g. tests/load/startup.sh 3000 10000 30000
#
# Prints the wall time and the CPU time ovsb spent until then (user + system: what a loaded
# machine does not move). OVSB_BIN / OVSB_SKIP_BUILD as in common.sh; OVSB_KEEP_LOG=PREFIX keeps
# each run's log as PREFIX-N.log; OVSB_PERF=1 records `perf record -g` of each
# start-up into $OVSB_PERF_DIR (default /tmp) as startup-N.perf.data. Everything listens on
# 127.0.0.1 and is stopped by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZES=("${@:-30000}")
source tests/load/common.sh
build_first_party_plugins

start_anvil
for N in "${SIZES[@]}"; do
    BROKER=$(free_port); GATEWAY=$(free_port); ADMIN=$(free_port)
    DATA="startup-$N"
    cat > "$WORK/ovsb-$N.toml" <<TOML
$(listeners_toml "$DATA" startup-test)

$(chain3_toml)
TOML
    # A first start makes the data directory (secret key, store, migrations); then the rows.
    "$OVSB" serve --config "$WORK/ovsb-$N.toml" > "$WORK/ovsb-$N.log" 2>&1 & pid=$!; PIDS+=($pid)
    wait_ready "$pid" "$WORK/ovsb-$N.log"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    python3 tests/load/seed_store.py "$WORK/$DATA/ovsb.db" "$N" chain3 svc

    started=$(date +%s%N)
    if [ -n "${OVSB_PERF:-}" ]; then
        perf record -g -o "${OVSB_PERF_DIR:-/tmp}/startup-$N.perf.data" -- \
            "$OVSB" serve --config "$WORK/ovsb-$N.toml" >> "$WORK/ovsb-$N.log" 2>&1 & pid=$!
    else
        "$OVSB" serve --config "$WORK/ovsb-$N.toml" >> "$WORK/ovsb-$N.log" 2>&1 & pid=$!
    fi
    PIDS+=($pid)
    wait_ready "$pid" "$WORK/ovsb-$N.log"
    ready=$(date +%s%N)
    # (Under perf, ovsb is perf's child.)
    server=$(pgrep -P "$pid" || echo "$pid")
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$server/status")
    # CPU time (user + system) spent until then: on a machine shared with builds, the figure
    # that the other processes' load does not move.
    cpu_ms=$(awk -v hz="$(getconf CLK_TCK)" '{print int(($14 + $15) * 1000 / hz)}' "/proc/$server/stat")
    echo "start-up with $N instances ($((2 * N)) bindings) in the store: $(( (ready - started) / 1000000 )) ms to /readyz 200" \
        "($cpu_ms ms of CPU); RSS then $(( rss / 1024 )) MiB"
    [ -z "${OVSB_KEEP_LOG:-}" ] || cp "$WORK/ovsb-$N.log" "$OVSB_KEEP_LOG-$N.log"
    kill -INT "$server" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
    rm -rf "${WORK:?}/$DATA"
done
