#!/usr/bin/env bash
# What a provision costs the disk: `ovsb serve` (release build, SQLite) under
# `strace -f -e trace=fsync,fdatasync`, then N provisions of tenants.sh's plan one after the
# other (each polled to `succeeded`, then bound once), then N provisions 4 at a time (as
# tenants.sh makes them), and the syncs counted per provision in each phase, with the store's
# own count of its commits (`ovsb_store_commits_total`, `ovsb_store_changes_total`, where the
# build has them).
#
#   tests/load/fsyncs.sh [N]        (default 200)
#
# OVSB_BIN / OVSB_SKIP_BUILD as in common.sh. Everything listens on 127.0.0.1 and is stopped by
# PID at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-200}
source tests/load/common.sh
command -v strace >/dev/null || { echo "strace is not installed (apt-get install strace)" >&2; exit 1; }
build_first_party_plugins

start_anvil
BROKER=$(free_port); GATEWAY=$(free_port); ADMIN=$(free_port)
cat > "$WORK/ovsb.toml" <<TOML
$(listeners_toml data fsyncs-test)

$(chain3_toml)
TOML
strace -f -e trace=fsync,fdatasync -o "$WORK/syncs" "$OVSB" serve --config "$WORK/ovsb.toml" > "$WORK/ovsb.log" 2>&1 &
STRACE_PID=$!; PIDS+=($STRACE_PID)
wait_port "$BROKER"; wait_port "$ADMIN"
# ovsb itself (stopping strace alone would leave it running, detached).
PIDS+=($(pgrep -P "$STRACE_PID"))
python3 - "http://127.0.0.1:$BROKER" "http://127.0.0.1:$ADMIN" "$WORK/syncs" "$N" <<'PY'
import base64, json, sys, threading, time, urllib.request
BROKER, ADMIN, SYNCS, N = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
H = {"authorization": "Basic " + base64.b64encode(b"ovsb:fsyncs-test").decode(),
     "x-broker-api-version": "2.17", "content-type": "application/json"}
def call(method, path, body=None):
    req = urllib.request.Request(BROKER + path, json.dumps(body).encode() if body is not None else None, H, method=method)
    with urllib.request.urlopen(req) as r:
        return r.status, json.loads(r.read() or b"{}")
def provision(i, bind):
    call("PUT", f"/v2/service_instances/s-{i}?accepts_incomplete=true",
         {"service_id": "svc", "plan_id": "chain3", "organization_guid": "o", "space_guid": "s"})
    while call("GET", f"/v2/service_instances/s-{i}/last_operation")[1].get("state") != "succeeded":
        time.sleep(0.01)
    if bind:
        call("PUT", f"/v2/service_instances/s-{i}/service_bindings/b?accepts_incomplete=true",
             {"service_id": "svc", "plan_id": "chain3"})
def syncs():
    lines = open(SYNCS).read().splitlines()
    return sum(1 for l in lines if "fsync(" in l or "fdatasync(" in l), sum(1 for l in lines if "fdatasync(" in l)
def counters():
    out = {}
    for line in urllib.request.urlopen(ADMIN + "/metrics").read().decode().splitlines():
        name, _, value = line.partition(" ")
        if name in ("ovsb_store_commits_total", "ovsb_store_changes_total"):
            out[name] = float(value)
    return out
for i in range(5):
    provision(f"warm-{i}", True)
time.sleep(1)
(s0, d0), c0 = syncs(), counters()
for i in range(N):
    provision(i, True)
time.sleep(1)
(s1, d1), c1 = syncs(), counters()
def per(a, b, k):
    return f"{(b.get(k, 0) - a.get(k, 0)) / N:.2f}" if k in b else "n/a"
print(f"one at a time, {N} provisions and binds: {(s1 - s0) / N:.2f} syncs each ({(d1 - d0) / N:.2f} of them fdatasync); "
      f"store commits {per(c0, c1, 'ovsb_store_commits_total')}, changes {per(c0, c1, 'ovsb_store_changes_total')} per provision")
ids = list(range(N, 2 * N))
def run(k):
    for i in ids[k::4]:
        provision(i, False)
threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
time.sleep(1)
(s2, d2), c2 = syncs(), counters()
print(f"4 at a time, {N} provisions (no binds): {(s2 - s1) / N:.2f} syncs each ({(d2 - d1) / N:.2f} of them fdatasync); "
      f"store commits {per(c1, c2, 'ovsb_store_commits_total')}, changes {per(c1, c2, 'ovsb_store_changes_total')} per provision")
PY
