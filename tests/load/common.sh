# Sourced by the scripts that measure one `ovsb serve` over anvil: processes.sh (a work directory,
# PIDs cleaned up on exit, free_port, wait_port), then the builds below, anvil and the TOML of the
# one service they offer.
source tests/load/processes.sh

# anvil, the wasm target, and the release build of ovsb (not built with OVSB_SKIP_BUILD or
# OVSB_BIN set: a script measuring a given binary).
[ -x tests/node/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil ] || (cd tests/node && npm ci --no-audit --no-fund --ignore-scripts)
rustup target add wasm32-wasip2 >/dev/null 2>&1
[ -n "${OVSB_SKIP_BUILD:-}${OVSB_BIN:-}" ] || cargo build --release -p ovsb -q
TARGET=$(realpath "${CARGO_TARGET_DIR:-target}")
OVSB=${OVSB_BIN:-$TARGET/release/ovsb}   # OVSB_BIN: another build (a baseline)
ANVIL_BIN=tests/node/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil

# Starts anvil on a free port: sets ANVIL (its port) and ANVIL_PID, and waits until it answers.
start_anvil() {
    ANVIL=$(free_port)
    "$ANVIL_BIN" --host 127.0.0.1 --port "$ANVIL" --silent &
    ANVIL_PID=$!
    PIDS+=("$ANVIL_PID")
    wait_port "$ANVIL"
}

# The TOML of ovsb's data directory $WORK/$1 and its listeners on the ports BROKER, GATEWAY and
# ADMIN, the broker's user `ovsb` with the password $2; $3, when given, adds lines to [gateway].
listeners_toml() {
    cat <<TOML
data_dir = "$WORK/$1"

[broker]
listen = "127.0.0.1:$BROKER"
username = "ovsb"
password = "$2"

[gateway]
listen = "127.0.0.1:$GATEWAY"
TOML
    [ -z "${3:-}" ] || echo "$3"
    cat <<TOML

[admin]
listen = "127.0.0.1:$ADMIN"
TOML
}

# The TOML of the one service: plan $1 (its id and name) with the shared anvil as its upstream;
# $2, when given, describes the plan (else "the shared anvil"), and $3 adds lines to it.
shared_anvil_service() {
    cat <<TOML
[[services]]
id = "svc"
name = "ethereum-rpc"
description = "shared anvil"

[[services.plans]]
id = "$1"
name = "$1"
description = "${2:-the shared anvil}"
TOML
    [ -z "${3:-}" ] || echo "$3"
    echo "driver = { kind = \"upstream\", http = [\"http://127.0.0.1:$ANVIL\"] }"
}

# The three first-party plugins (their wasm under $W) and the one service, plan `chain3`, over
# the shared anvil, which runs them all: method-filter, a rate limit far out of reach, cache.
chain3_toml() {
    cat <<TOML
[[plugins]]
name = "method-filter"
path = "$W/ovsb_plugin_method_filter.wasm"

[[plugins]]
name = "rate-limit"
path = "$W/ovsb_plugin_rate_limit.wasm"

[[plugins]]
name = "cache"
path = "$W/ovsb_plugin_cache.wasm"

TOML
    shared_anvil_service chain3 "the shared anvil behind three first-party plugins" 'plugins = [
  { name = "method-filter", config = { deny = ["debug_*", "eth_send*"] } },
  { name = "rate-limit", config = { requests_per_second = 1000000, burst = 1000000 } },
  { name = "cache" },
]'
}

# Builds the three first-party plugins (not with OVSB_SKIP_BUILD: those already under $TARGET
# are measured as they are) and sets W, the folder of their wasm.
build_first_party_plugins() {
    [ -n "${OVSB_SKIP_BUILD:-}" ] ||
        cargo build --release --target wasm32-wasip2 -q -p ovsb-plugin-method-filter -p ovsb-plugin-rate-limit -p ovsb-plugin-cache
    W=$TARGET/wasm32-wasip2/release
}

# Waits up to 10 minutes, polling every 50 ms, for /readyz 200 on the admin listener $ADMIN;
# stops the script with the end of log $2 if process $1 exits first, or on the timeout.
wait_ready() { # pid log
    for _ in $(seq 12000); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN/readyz")" = 200 ] && return 0
        kill -0 "$1" 2>/dev/null || { tail -20 "$2"; exit 1; }
        sleep 0.05
    done
    echo "ovsb was not ready within 10 minutes (log: $2)" >&2
    exit 1
}
