#!/usr/bin/env python3
"""The attacks of tests/load/abuse.sh, and the quiet tenant that is measured during each.

    abuse.py GATEWAY_HOST:PORT QUIET_URL HOSTILE_KEY SECONDS

QUIET_URL is the quiet tenant's endpoint (http://host:port/v1/<key>); HOSTILE_KEY is the key of
the hostile tenant's instance, whose chain runs the test plugin in `hostile` mode (`test_loop`
spins until the plugin's time budget ends). For each scenario (none, then each attack) the quiet
tenant makes sequential eth_chainId calls on one keep-alive connection for SECONDS, and the script
prints its p50, p99, max and errors. Every loop is bounded in count and time, every socket is on
127.0.0.0/8, and every attack stops at the end of its scenario.
"""

import http.client
import json
import socket
import statistics
import sys
import threading
import time
import urllib.parse

GATEWAY, QUIET_URL, HOSTILE_KEY, SECONDS = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
HOST, PORT = GATEWAY.rsplit(":", 1)
PORT = int(PORT)
# Attackers come from other loopback addresses than the quiet tenant (127.0.0.1).
ATTACK_SOURCES = [f"127.0.0.{i}" for i in range(10, 30)]


def quiet_run(seconds):
    """Sequential calls on one keep-alive connection; latencies in ms and the error count."""
    url = urllib.parse.urlparse(QUIET_URL)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    headers = {"content-type": "application/json"}
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    latencies, errors = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(latencies) + errors < 200_000:
        started = time.perf_counter()
        try:
            conn.request("POST", url.path, body, headers)
            response = conn.getresponse()
            answer = response.read()
            ok = response.status == 200 and b'"result":"0x7a69"' in answer
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        elapsed = (time.perf_counter() - started) * 1000
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


def idle_flood(attack, i):
    """Connections that never send a byte (100 per thread), reopened as the gateway closes them."""
    held = []
    for n in range(100):
        try:
            held.append(connect(i * 100 + n))
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
                    held[k] = connect(i * 100 + k)
                except OSError:
                    attack.count("failed")
        attack.stop.wait(0.5)
    for s in held:
        s.close()


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
    end = time.monotonic() + SECONDS + 5
    while not attack.stop.is_set() and time.monotonic() < end:
        for s in list(held):
            try:
                s.sendall(b" ")
            except OSError:
                attack.count("refused")
                held.remove(s)
                s.close()
        attack.stop.wait(2)
    for s in held:
        s.close()


SCENARIOS = [
    ("no attack", None, 0),
    ("WebSocket flood (3,000 on one key)", ws_flood, 20),
    ("looping-plugin batches (4 x 100 calls)", loop_batches, 4),
    ("idle connection flood (2,000, no key)", idle_flood, 20),
    ("slow bodies (400 at 0.5 byte/s)", slow_bodies, 20),
]


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main():
    rows = []
    for name, step, threads in SCENARIOS:
        if step is None:
            latencies, errors = quiet_run(SECONDS)
            counts = {}
        else:
            with Attack(threads, step) as attack:
                latencies, errors = quiet_run(SECONDS)
                counts = dict(attack.counts)
        rows.append((name, latencies, errors, counts))
        print(f"{name}: {len(latencies)} calls, {errors} errors, attack {counts}", file=sys.stderr)
    base = statistics.median(rows[0][1]) if rows[0][1] else float("nan")
    print(f"{'scenario':42} {'calls':>7} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}  attack (accepted/refused/failed)")
    for name, latencies, errors, counts in rows:
        attack = "" if not counts else f"{counts['sent']}/{counts['refused']}/{counts['failed']}"
        print(
            f"{name:42} {len(latencies):>7} {errors:>6} {statistics.median(latencies) if latencies else float('nan'):>7.2f} "
            f"{pct(latencies, 0.99):>7.2f} {max(latencies) if latencies else float('nan'):>7.2f}  {attack}"
        )
    worst = max(pct(r[1], 0.99) for r in rows)
    errors = sum(r[2] for r in rows)
    print(f"quiet tenant: baseline p50 {base:.2f} ms; worst p99 under attack {worst:.2f} ms (target < 10 ms); errors {errors} (target 0)")


if __name__ == "__main__":
    main()
