#!/usr/bin/env bash
# Two replicas on one PostgreSQL database (a fresh one, dropped at the end): the cost of a bind on
# replica A, and the time until replica B serves it, at 1,000 and at N instances (default 10,000).
# Production build; operations.sync_interval_ms = 100 (B polls the change counter that often).
#
#   tests/load/replicas.sh [N]
#
# Needs PostgreSQL on 127.0.0.1:5432 (tests/run-all.sh starts it). Everything listens on
# 127.0.0.1 and is stopped by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-10000}
source tests/load/common.sh
DB=ovsb_replicas_$$
psql -q postgres://postgres@127.0.0.1:5432/postgres -c "CREATE DATABASE $DB"
trap 'cleanup; psql -q postgres://postgres@127.0.0.1:5432/postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null' EXIT

start_anvil
SECRET=$(python3 -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())')
start_replica() { # name -> "broker gateway"
    local broker gateway admin; broker=$(free_port); gateway=$(free_port); admin=$(free_port)
    cat > "$WORK/$1.toml" <<TOML
data_dir = "$WORK/$1"
database_url = "postgres://postgres@127.0.0.1:5432/$DB"

[broker]
listen = "127.0.0.1:$broker"
username = "ovsb"
password = "replicas-test"
secret_key = "$SECRET"

[gateway]
listen = "127.0.0.1:$gateway"

[admin]
listen = "127.0.0.1:$admin"

[operations]
sync_interval_ms = 100

$(shared_anvil_service plain)
TOML
    "$OVSB" serve --config "$WORK/$1.toml" > "$WORK/$1.log" 2>&1 & echo $! >> "$WORK/pids"  # a subshell: not PIDS
    wait_port "$broker"; wait_port "$gateway"
    echo "$broker $gateway"
}
read -r A_BROKER _ <<< "$(start_replica a)"
read -r _ B_GATEWAY <<< "$(start_replica b)"
python3 tests/load/replicas.py "http://127.0.0.1:$A_BROKER" "http://127.0.0.1:$B_GATEWAY" replicas-test "$N"
