#!/usr/bin/env python3
"""The attacks of tests/load/abuse.sh, and the quiet tenant that is measured during each.

    abuse.py GATEWAY_HOST:PORT QUIET_URL HOSTILE_KEY SECONDS [OVSB_PID BROKER_URL]

QUIET_URL is the quiet tenant's endpoint (http://host:port/v1/<key>); HOSTILE_KEY is the key of
the hostile tenant's instance, whose chain runs the test plugin in `hostile` mode (`test_loop`
spins until the plugin's time budget ends). For each scenario (none, then each attack) the quiet
tenant makes sequential eth_chainId calls on one keep-alive connection for SECONDS, and the script
prints its p50, p99, max and errors, and (given OVSB_PID) ovsb's peak RSS and descriptors. With
BROKER_URL (http://user:password@host:port), the revoked-key attack binds and unbinds keys of the
hostile instance. Every loop is bounded in count and time, every socket is on 127.0.0.0/8, and
every attack stops at the end of its scenario.
"""

import http.client
import json
import os
import socket
import statistics
import sys
import threading
import time
import urllib.parse

GATEWAY, QUIET_URL, HOSTILE_KEY, SECONDS = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
OVSB_PID = int(sys.argv[5]) if len(sys.argv) > 5 else None
BROKER_URL = sys.argv[6] if len(sys.argv) > 6 else None
HOST, PORT = GATEWAY.rsplit(":", 1)
PORT = int(PORT)
# Attackers come from other loopback addresses than the quiet tenant (127.0.0.1).
ATTACK_SOURCES = [f"127.0.0.{i}" for i in range(10, 30)]


def quiet_run(seconds, fresh=False, target=None):
    """Sequential calls on one keep-alive connection (a new connection per call if `fresh`, as
    clients behind the attacker's address that come and go); latencies in ms and errors.
    `target` (default: the quiet tenant's endpoint) may be the node itself, for reference."""
    url = urllib.parse.urlparse(target or QUIET_URL)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    headers = {"content-type": "application/json"}
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    latencies, errors = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(latencies) + errors < 200_000:
        started = time.perf_counter()
        try:
            conn.request("POST", url.path or "/", body, headers)
            response = conn.getresponse()
            answer = response.read()
            ok = response.status == 200 and b'"result":"0x7a69"' in answer
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        elapsed = (time.perf_counter() - started) * 1000
        if fresh:
            conn.close()
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        if ok:
            latencies.append(elapsed)
        else:
            errors += 1
        time.sleep(0.002)  # about 400 calls/s: a steady customer, not a load generator
    conn.close()
    return latencies, errors


def source(i):
    return ATTACK_SOURCES[i % len(ATTACK_SOURCES)]


def connect(i):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((source(i), 0))
    s.settimeout(5)
    s.connect((HOST, PORT))
    return s


class Attack:
    """Runs `step` in `threads` threads until stopped (or 10 minutes, whichever is first)."""

    def __init__(self, threads, step):
        self.stop = threading.Event()
        self.counts = {"sent": 0, "refused": 0, "failed": 0}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.loop, args=(i, step), daemon=True) for i in range(threads)]

    def count(self, what):
        with self.lock:
            self.counts[what] += 1

    def loop(self, i, step):
        deadline = time.monotonic() + 600
        while not self.stop.is_set() and time.monotonic() < deadline:
            step(self, i)

    def __enter__(self):
        for t in self.threads:
            t.start()
        time.sleep(2)  # let the attack build up before measuring
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)


def ws_flood(attack, i):
    """Opens WebSocket connections on the hostile key and holds them (up to 150 per thread)."""
    held = []
    for n in range(150):
        if attack.stop.is_set():
            break
        try:
            s = connect(i * 150 + n)
            s.sendall(
                (
                    f"GET /v1/{HOSTILE_KEY} HTTP/1.1\r\nHost: {GATEWAY}\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            status = s.recv(64)
            if b" 101 " in status:
                attack.count("sent")
                held.append(s)
            else:
                attack.count("refused")
                s.close()
        except OSError:
            attack.count("failed")
    attack.stop.wait(SECONDS + 5)
    for s in held:
        s.close()


def loop_batches(attack, i):
    """Batches of 100 calls that loop in the hostile tenant's plugin, back to back."""
    batch = json.dumps([{"jsonrpc": "2.0", "id": n, "method": "test_loop", "params": []} for n in range(100)])
    try:
        conn = http.client.HTTPConnection(HOST, PORT, timeout=60, source_address=(source(i), 0))
        conn.request("POST", f"/v1/{HOSTILE_KEY}", batch, {"content-type": "application/json"})
        conn.getresponse().read()
        conn.close()
        attack.count("sent")
    except (OSError, http.client.HTTPException):
        attack.count("failed")


def hold_idle(attack, count, open_connection, pause):
    """Opens `count` connections (`open_connection(n)`) that never send a byte and holds them until
    the attack stops (or SECONDS + 5 s), looking every `pause` seconds and reopening each one the
    gateway has closed."""
    held = []
    for n in range(count):
        try:
            held.append(open_connection(n))
            attack.count("sent")
        except OSError:
            attack.count("failed")
    end = time.monotonic() + SECONDS + 5
    while not attack.stop.is_set() and time.monotonic() < end:
        for k, s in enumerate(held):
            s.setblocking(False)
            try:
                closed = s.recv(1) == b""
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            if closed:
                s.close()
                attack.count("refused")
                try:
                    held[k] = open_connection(k)
                except OSError:
                    attack.count("failed")
        attack.stop.wait(pause)
    for s in held:
        s.close()


def keep_poking(attack, held, poke, pause):
    """Every `pause` seconds, until the attack stops (or SECONDS + 5 s), `poke(s)` on each held
    connection; one that fails (OSError) is counted as refused, dropped and closed."""
    end = time.monotonic() + SECONDS + 5
    while not attack.stop.is_set() and time.monotonic() < end:
        for s in list(held):
            try:
                poke(s)
            except OSError:
                attack.count("refused")
                held.remove(s)
                s.close()
        attack.stop.wait(pause)
    for s in held:
        s.close()


def idle_flood(attack, i):
    """Connections that never send a byte (100 per thread), reopened as the gateway closes them."""
    hold_idle(attack, 100, lambda n: connect(i * 100 + n), 0.5)


def slow_bodies(attack, i):
    """Requests with the hostile key whose body comes at one byte every two seconds (20 per thread)."""
    held = []
    for n in range(20):
        try:
            s = connect(i * 20 + n)
            s.sendall(
                f"POST /v1/{HOSTILE_KEY} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                "content-length: 1000\r\n\r\n{".encode()
            )
            held.append(s)
            attack.count("sent")
        except OSError:
            attack.count("failed")
    keep_poking(attack, held, lambda s: s.sendall(b" "), 2)


def post_batch(i, key, batch, timeout=120):
    conn = http.client.HTTPConnection(HOST, PORT, timeout=timeout, source_address=(source(i), 0))
    try:
        conn.request("POST", f"/v1/{key}", batch, {"content-type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


BIG = "0x00000000000000000000000000000000000b16a5"
# PUSH3 0x2dc6c0 (3,000,000), PUSH1 0, RETURN: 3 MB of zeros, 6 MB as hex.
BIG_CODE = "0x622dc6c06000f3"


def batch_memory(attack, i):
    """Batches of 40 eth_calls each answering 6 MB (a 9 KB request), back to back."""
    batch = json.dumps(
        [
            {"jsonrpc": "2.0", "id": n, "method": "eth_call",
             "params": [{"to": BIG, "data": "0x"}, "latest", {BIG: {"code": BIG_CODE}}]}
            for n in range(40)
        ]
    )
    try:
        status, answer = post_batch(i, HOSTILE_KEY, batch)
        attack.count("refused" if b"response_bytes" in answer or b"-32005" in answer else "sent")
    except (OSError, http.client.HTTPException):
        attack.count("failed")


def batch_fanout(attack, i):
    """Batches of 1000 eth_blockNumber calls, back to back (each entry used to open a socket)."""
    batch = json.dumps([{"jsonrpc": "2.0", "id": n, "method": "eth_blockNumber", "params": []} for n in range(1000)])
    try:
        status, answer = post_batch(i, HOSTILE_KEY, batch)
        attack.count("sent" if status == 200 else "refused")
    except (OSError, http.client.HTTPException):
        attack.count("failed")


def broker(method, path, body=None):
    url = urllib.parse.urlparse(BROKER_URL)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    import base64
    auth = base64.b64encode(f"{url.username}:{url.password}".encode()).decode()
    headers = {"Authorization": f"Basic {auth}", "X-Broker-API-Version": "2.17", "content-type": "application/json"}
    conn.request(method, path, json.dumps(body) if body is not None else None, headers)
    response = conn.getresponse()
    answer = response.read()
    conn.close()
    return response.status, json.loads(answer or b"null")


def revoked_slots(attack, i):
    """Two keys of the hostile instance, each on 512 keep-alive connections (its share) from its own
    address; both keys unbound; the connections then send something every few seconds."""
    keys = []
    for n in range(2):
        status, bound = broker(
            "PUT", f"/v2/service_instances/hostile/service_bindings/revoked-{i}-{n}?accepts_incomplete=true",
            {"service_id": "svc", "plan_id": "shared"},
        )
        keys.append((n, bound["credentials"]["uri"].rsplit("/", 1)[1]))
    held = []
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    for n, key in keys:
        for k in range(512):
            try:
                s = socket.socket()
                s.bind((f"127.0.1.{10 + n}", 0))
                s.settimeout(5)
                s.connect((HOST, PORT))
                s.sendall(f"POST /v1/{key} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n{body}".encode())
                s.recv(4096)
                held.append(s)
                attack.count("sent")
            except OSError:
                attack.count("failed")
    for n, _ in keys:
        broker("DELETE", f"/v2/service_instances/hostile/service_bindings/revoked-{i}-{n}?service_id=svc&plan_id=shared&accepts_incomplete=true")

    def poke(s):
        s.sendall(f"POST /v1/{keys[0][1]} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n{body}".encode())
        if s.recv(4096) == b"":
            raise OSError("closed")

    keep_poking(attack, held, poke, 3)


def same_source_flood(attack, i):
    """600 idle connections from the quiet tenant's own address (127.0.0.1), reopened as closed."""

    def open_connection(_n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        s.connect((HOST, PORT))
        return s

    hold_idle(attack, 600, open_connection, 0.2)


# The node itself (ABUSE_NODE_URL, ABUSE_NODE_PID): the same quiet calls straight to it during
# each scenario, and the CPU time ovsb and the node each spent, tell the gateway's share of a
# slow quiet tenant from the node's.
NODE_URL = os.environ.get("ABUSE_NODE_URL")
NODE_PID = int(os.environ["ABUSE_NODE_PID"]) if os.environ.get("ABUSE_NODE_PID") else None


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far (0 if unknown)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, TypeError, ValueError, IndexError):
        return 0.0


class Sampler:
    """ovsb's peak RSS (MiB) and descriptors while a scenario runs (every 50 ms), and the CPU
    seconds ovsb and the node spent in it."""

    def __init__(self):
        self.rss, self.fds, self.stop = 0, 0, threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.cpu = {}

    def loop(self):
        deadline = time.monotonic() + 900
        while OVSB_PID and not self.stop.is_set() and time.monotonic() < deadline:
            try:
                with open(f"/proc/{OVSB_PID}/status") as status:
                    for line in status:
                        if line.startswith("VmRSS:"):
                            self.rss = max(self.rss, int(line.split()[1]) // 1024)
                self.fds = max(self.fds, len(__import__("os").listdir(f"/proc/{OVSB_PID}/fd")))
            except OSError:
                pass
            self.stop.wait(0.05)

    def __enter__(self):
        self.started = {"ovsb": cpu_seconds(OVSB_PID), "node": cpu_seconds(NODE_PID)}
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)
        self.cpu = {k: cpu_seconds(p) - self.started[k] for k, p in (("ovsb", OVSB_PID), ("node", NODE_PID))}


SCENARIOS = [
    ("no attack", None, 0),
    ("WebSocket flood (3,000 on one key)", ws_flood, 20),
    ("looping-plugin batches (4 x 100 calls)", loop_batches, 4),
    ("idle connection flood (2,000, no key)", idle_flood, 20),
    ("slow bodies (400 at 0.5 byte/s)", slow_bodies, 20),
    ("batch memory (2 x 40 answers of 6 MB)", batch_memory, 2),
    ("batch fan-out (3 x 1000 calls)", batch_fanout, 3),
    ("revoked-key slots (2 x 512, unbound)", revoked_slots, 1),
    ("same-source anonymous flood (600)", same_source_flood, 1),
]
# Scenarios whose quiet tenant opens a new connection per call (the attack takes slots).
FRESH = {"revoked-key slots (2 x 512, unbound)", "same-source anonymous flood (600)"}


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def probe_node(seconds, out):
    """The quiet tenant's calls straight to the node, beside the gateway's (see NODE_URL)."""
    out["latencies"], out["errors"] = quiet_run(seconds, target=NODE_URL)


def measure(seconds, fresh):
    """The quiet tenant through ovsb, and (with NODE_URL) straight to the node at the same time."""
    node = {}
    thread = threading.Thread(target=probe_node, args=(seconds, node), daemon=True) if NODE_URL else None
    if thread:
        thread.start()
    latencies, errors = quiet_run(seconds, fresh)
    if thread:
        thread.join(timeout=seconds + 30)
    return latencies, errors, node.get("latencies", [])


def main():
    rows = []
    only = set(a for a in os.environ.get("ABUSE_ONLY", "").split(",") if a)
    for name, step, threads in SCENARIOS:
        if only and step is not None and step.__name__ not in only:
            continue
        if step is revoked_slots and not BROKER_URL:
            continue
        fresh = name in FRESH
        with Sampler() as sampler:
            if step is None:
                latencies, errors, direct = measure(SECONDS, False)
                counts = {}
            else:
                with Attack(threads, step) as attack:
                    latencies, errors, direct = measure(SECONDS, fresh)
                    counts = dict(attack.counts)
        rows.append((name, latencies, errors, counts, sampler.rss, sampler.fds, direct, sampler.cpu))
        print(f"{name}: {len(latencies)} calls, {errors} errors, attack {counts}", file=sys.stderr)
    base = statistics.median(rows[0][1]) if rows[0][1] else float("nan")
    extra = f" {'node p50':>8} {'node p99':>8} {'ovsb cpu s':>10} {'node cpu s':>10}" if NODE_URL else ""
    print(f"{'scenario':42} {'calls':>7} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'RSS MiB':>7} {'fds':>5}{extra}  attack (accepted/refused/failed)")
    for name, latencies, errors, counts, rss, fds, direct, cpu in rows:
        attack = "" if not counts else f"{counts['sent']}/{counts['refused']}/{counts['failed']}"
        node = ""
        if NODE_URL:
            node = (
                f" {statistics.median(direct) if direct else float('nan'):>8.2f} {pct(direct, 0.99):>8.2f}"
                f" {cpu.get('ovsb', 0):>10.2f} {cpu.get('node', 0):>10.2f}"
            )
        print(
            f"{name:42} {len(latencies):>7} {errors:>6} {statistics.median(latencies) if latencies else float('nan'):>7.2f} "
            f"{pct(latencies, 0.99):>7.2f} {max(latencies) if latencies else float('nan'):>7.2f} {rss:>7} {fds:>5}{node}  {attack}"
        )
    worst = max(pct(r[1], 0.99) for r in rows)
    errors = sum(r[2] for r in rows)
    print(f"quiet tenant: baseline p50 {base:.2f} ms; worst p99 under attack {worst:.2f} ms (target < 10 ms); errors {errors} (target 0)")


if __name__ == "__main__":
    main()
