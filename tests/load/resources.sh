#!/usr/bin/env bash
# Issue #27's two resource attacks at full size, against one ovsb binary (so that a build before
# and after a change can be compared):
#   A. batch memory: one 9 KB batch of 40 eth_calls, each answering 6 MB (a state override gives
#      the called address code that returns 3 MB) -> ovsb's RSS before and at its peak, the answer;
#   B. batch fan-out: ovsb under RLIMIT_NOFILE 1024, three connections each sending a batch of
#      1000 eth_blockNumber at once -> ovsb's peak descriptors, the node's peak sockets, log lines
#      written, "Too many open files" lines, and whether the broker and admin answered meanwhile.
#
#   tests/load/resources.sh [OVSB_BINARY]     (default: the release build, built if needed)
#
# Everything listens on 127.0.0.1 on ports from the OS, every loop is bounded, and every process
# is stopped by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
GIVEN=${1:-}
if [ -n "$GIVEN" ]; then export OVSB_SKIP_BUILD=1; fi
source tests/load/common.sh
OVSB=${GIVEN:-$OVSB}

start_anvil

# Starts ovsb (config $1, name $2, wrapper words after) and sets BROKER, ADMIN, OVSB_PID, URL.
start_ovsb() {
    local name=$1; shift
    BROKER=$(free_port); GATEWAY=$(free_port); ADMIN=$(free_port)
    cat > "$WORK/$name.toml" <<TOML
$(listeners_toml "$name-data" resources-test)

$(shared_anvil_service shared)
TOML
    "$@" "$OVSB" serve --config "$WORK/$name.toml" > "$WORK/$name.log" 2>&1 &
    OVSB_PID=$!
    PIDS+=("$OVSB_PID")
    wait_port "$BROKER"; wait_port "$GATEWAY"
    local osb=(curl -sf -u ovsb:resources-test -H 'X-Broker-API-Version: 2.17' -H 'content-type: application/json')
    "${osb[@]}" -X PUT "http://127.0.0.1:$BROKER/v2/service_instances/i?accepts_incomplete=true" \
        -d '{"service_id":"svc","plan_id":"shared","organization_guid":"o","space_guid":"s"}' >/dev/null
    for _ in $(seq 100); do
        "${osb[@]}" "http://127.0.0.1:$BROKER/v2/service_instances/i/last_operation" | grep -q '"succeeded"' && break
        sleep 0.1
    done
    URL=$("${osb[@]}" -X PUT "http://127.0.0.1:$BROKER/v2/service_instances/i/service_bindings/b?accepts_incomplete=true" \
        -d '{"service_id":"svc","plan_id":"shared"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["credentials"]["uri"])')
}

echo "binary: $OVSB"

# ---- A. batch memory ----
start_ovsb memory env
python3 - "$URL" "$OVSB_PID" <<'PY'
import http.client, json, sys, threading, time, urllib.parse
url, pid = urllib.parse.urlparse(sys.argv[1]), int(sys.argv[2])
def rss():
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) // 1024 for l in f if l.startswith("VmRSS:"))
to = "0x00000000000000000000000000000000000b16a5"
batch = json.dumps([{"jsonrpc": "2.0", "id": n, "method": "eth_call",
                     "params": [{"to": to, "data": "0x"}, "latest", {to: {"code": "0x622dc6c06000f3"}}]} for n in range(40)])
before, peak, done = rss(), [0], threading.Event()
def sample():
    end = time.monotonic() + 300
    while not done.is_set() and time.monotonic() < end:
        peak[0] = max(peak[0], rss()); time.sleep(0.01)
t = threading.Thread(target=sample); t.start()
started = time.monotonic()
conn = http.client.HTTPConnection(url.hostname, url.port, timeout=300)
conn.request("POST", url.path, batch, {"content-type": "application/json"})
response = conn.getresponse(); answer = response.read()
elapsed = time.monotonic() - started
done.set(); t.join()
print(f"A. batch memory: request {len(batch)} bytes; answer HTTP {response.status}, {len(answer)} bytes in {elapsed:.1f} s: {answer[:160].decode(errors='replace')}")
print(f"   ovsb RSS: {before} MiB before, peak {peak[0]} MiB (+{peak[0] - before} MiB)")
PY
kill "$OVSB_PID"; wait "$OVSB_PID" 2>/dev/null || true

# ---- B. batch fan-out under RLIMIT_NOFILE 1024 ----
start_ovsb fanout prlimit --nofile=1024:1024 --
LOG_BEFORE=$(wc -l < "$WORK/fanout.log")
python3 - "$URL" "$OVSB_PID" "$ANVIL_PID" "$BROKER" "$ADMIN" <<'PY'
import http.client, json, os, sys, threading, time, urllib.parse, base64
url, pid, anvil, broker, admin = urllib.parse.urlparse(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def fds(p, sockets_only=False):
    try:
        names = os.listdir(f"/proc/{p}/fd")
    except OSError:
        return 0
    if not sockets_only:
        return len(names)
    n = 0
    for name in names:
        try:
            n += os.readlink(f"/proc/{p}/fd/{name}").startswith("socket:")
        except OSError:
            pass
    return n
def status(port, path, auth=None):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        h = {"X-Broker-API-Version": "2.17"}
        if auth: h["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
        c.request("GET", path, headers=h); r = c.getresponse(); r.read(); return r.status
    except OSError as e:
        return type(e).__name__
batch = json.dumps([{"jsonrpc": "2.0", "id": n, "method": "eth_blockNumber", "params": []} for n in range(1000)])
base_node = fds(anvil, True)
peak = {"ovsb_fds": 0, "node_sockets": 0}; done = threading.Event(); checks = []
def sample():
    end = time.monotonic() + 300
    while not done.is_set() and time.monotonic() < end:
        peak["ovsb_fds"] = max(peak["ovsb_fds"], fds(pid))
        peak["node_sockets"] = max(peak["node_sockets"], fds(anvil, True) - base_node)
        if len(checks) < 20:
            checks.append((status(broker, "/v2/catalog", "ovsb:resources-test"), status(admin, "/healthz")))
        time.sleep(0.01)
results = []
def send():
    try:
        c = http.client.HTTPConnection(url.hostname, url.port, timeout=300)
        c.request("POST", url.path, batch, {"content-type": "application/json"})
        r = c.getresponse(); body = json.loads(r.read())
        results.append(body)
    except Exception as e:
        results.append(repr(e))
s = threading.Thread(target=sample); s.start()
started = time.monotonic()
senders = [threading.Thread(target=send) for _ in range(3)]
for t in senders: t.start()
for t in senders: t.join()
elapsed = time.monotonic() - started
done.set(); s.join()
ok = refused = other = 0
reasons = {}
for body in results:
    if not isinstance(body, list):
        other += 1000; continue
    for a in body:
        if "result" in a: ok += 1
        else:
            refused += 1
            r = (a.get("error") or {}).get("data")
            key = f'{a["error"]["code"]} {r.get("reason") if isinstance(r, dict) else (a["error"].get("message") or "")[:60]}'
            reasons[key] = reasons.get(key, 0) + 1
print(f"B. batch fan-out (3 x 1000 at once, RLIMIT_NOFILE 1024) in {elapsed:.1f} s: {ok} answered, {refused} errors {reasons}, {other} lost")
print(f"   peak: ovsb descriptors {peak['ovsb_fds']}, node sockets {peak['node_sockets']} (above its baseline)")
bad = [c for c in checks if c != (200, 200)]
print(f"   broker/admin checks during the attack: {len(checks)}, not 200/200: {len(bad)} {bad[:3]}")
PY
LOG_AFTER=$(wc -l < "$WORK/fanout.log")
echo "   log: $((LOG_AFTER - LOG_BEFORE)) lines written, $(grep -c 'Too many open files' "$WORK/fanout.log" || true) of them 'Too many open files', $(wc -c < "$WORK/fanout.log") bytes in all"
