#!/usr/bin/env python3
"""The provider's view, driven by tests/load/tenants.sh: N instances of a plan whose chain is the
three first-party plugins, two bindings each, one call on every instance, and what it costs.

    tenants.py BROKER_URL PASSWORD ADMIN_URL OVSB_PID N IDLE_SECONDS [DATA_DIR]

Prints, as it goes and in a table at the end: provision and bind latency (median, p99) for a
batch of 100 when 10 instances exist and again when N do; RSS of ovsb idle after start, after all
provisions, after one call on every instance, and after the idle time has evicted the copies
(with the per-instance figure for each), and the heap bytes held at each (a `heap-stats` build
only); plugin copies alive; whether every call succeeded; and what one SQLite commit costs on
the disk of DATA_DIR around each measured batch (a provision's floor: its one durable commit).
Every loop is bounded by N; everything is on 127.0.0.1.
"""

import base64
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse

BROKER, PASSWORD, ADMIN, PID, N, IDLE = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
DATA = sys.argv[7] if len(sys.argv) > 7 else "."
AUTH = "Basic " + base64.b64encode(f"ovsb:{PASSWORD}".encode()).decode()
HEADERS = {"authorization": AUTH, "x-broker-api-version": "2.17", "content-type": "application/json"}
THREADS = 4
local = threading.local()


def conn(base):
    """This thread's keep-alive connection to `base`."""
    conns = local.__dict__.setdefault("conns", {})
    if base not in conns:
        u = urllib.parse.urlparse(base)
        conns[base] = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    return conns[base]


def request(base, method, path, body=None, headers=HEADERS):
    for attempt in range(3):
        c = conn(base)
        try:
            c.request(method, path, json.dumps(body) if body is not None else None, headers)
            r = c.getresponse()
            return r.status, r.read()
        except (OSError, http.client.HTTPException):
            c.close()
            local.conns.pop(base, None)
            if attempt == 2:
                raise
    raise RuntimeError("unreachable")


def provision(i):
    body = {"service_id": "svc", "plan_id": "chain3", "organization_guid": "o", "space_guid": "s"}
    started = time.perf_counter()
    status, answer = request(BROKER, "PUT", f"/v2/service_instances/t-{i}?accepts_incomplete=true", body)
    elapsed = (time.perf_counter() - started) * 1000
    assert status in (200, 201, 202), (status, answer)
    return elapsed


def wait_ready(i):
    for _ in range(600):
        status, answer = request(BROKER, "GET", f"/v2/service_instances/t-{i}/last_operation")
        state = json.loads(answer).get("state")
        if state == "succeeded":
            return
        assert state != "failed", answer
        time.sleep(0.05)
    raise AssertionError(f"t-{i} never became ready")


def bind(i, b):
    body = {"service_id": "svc", "plan_id": "chain3"}
    started = time.perf_counter()
    status, answer = request(BROKER, "PUT", f"/v2/service_instances/t-{i}/service_bindings/b{b}?accepts_incomplete=true", body)
    elapsed = (time.perf_counter() - started) * 1000
    assert status in (200, 201), (status, answer)
    return elapsed, json.loads(answer)["credentials"]["uri"]


def parallel(items, work):
    results = [None] * len(items)
    def run(k):
        for j in range(k, len(items), THREADS):
            results[j] = work(items[j])
    threads = [threading.Thread(target=run, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def rss_kib():
    for line in open(f"/proc/{PID}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def gauges(*names):
    """The values of these gauges in /metrics (-1 for one that is not there)."""
    status, text = request(ADMIN, "GET", "/metrics", headers={})
    found = dict.fromkeys(names, -1)
    for line in text.decode().splitlines():
        name, _, value = line.partition(" ")
        if name in found:
            found[name] = int(float(value))
    return found


def copies_alive():
    return gauges("ovsb_plugin_copies")["ovsb_plugin_copies"]


def heap_kib():
    """Heap bytes held, in KiB (only a `heap-stats` build exports it; else None, and it is not
    asked again: rendering /metrics for N instances takes memory of its own)."""
    live = gauges("ovsb_heap_live_bytes")["ovsb_heap_live_bytes"]
    return None if live < 0 else live // 1024


def commit_ms(directory, n=50):
    """Median time of one SQLite commit (WAL, synchronous=FULL, as ovsb's store) in `directory`:
    what one fsync costs on this disk now, the floor of a provision (one such commit)."""
    import os
    import sqlite3
    path = os.path.join(directory, "commit-probe.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT)")
    times = []
    for i in range(n):
        started = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (v) VALUES (?)", ("x" * 200,))
        db.execute("COMMIT")
        times.append((time.perf_counter() - started) * 1000)
    db.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    return statistics.median(times)


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def stats(values):
    return f"median {statistics.median(values):6.2f} ms, p99 {pct(values, 0.99):6.2f} ms"


uris = {}


def add(lo, hi):
    """Provisions t-lo..t-hi-1, waits until ready, binds b0 and b1 of each; returns latencies."""
    ids = list(range(lo, hi))
    prov = parallel(ids, provision)
    parallel(ids, wait_ready)
    binds = []
    for b in (0, 1):
        out = parallel(ids, lambda i: bind(i, b))
        for i, (ms, uri) in zip(ids, out):
            binds.append(ms)
            if b == 0:
                uris[i] = uri
    return prov, binds


def call(i):
    u = urllib.parse.urlparse(uris[i])
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}
    status, answer = request(f"http://{u.hostname}:{u.port}", "POST", u.path, body, {"content-type": "application/json"})
    return status == 200 and b'"result"' in answer


def main():
    heap = {}
    rss = {"idle after start": rss_kib()}
    heap["idle after start"] = heap_kib()
    print(f"RSS idle after start: {rss['idle after start']} KiB", file=sys.stderr)
    add(0, 10)
    commits = [commit_ms(DATA)]
    small_prov, small_bind = add(10, 110)
    commits.append(commit_ms(DATA))
    print(f"at 10 instances: provision {stats(small_prov)}; bind {stats(small_bind)}", file=sys.stderr)
    started = time.monotonic()
    step = 1000
    for lo in range(110, N - 100, step):
        add(lo, min(lo + step, N - 100))
        print(f"  {min(lo + step, N - 100)} instances ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    commits.append(commit_ms(DATA))
    big_prov, big_bind = add(N - 100, N)
    commits.append(commit_ms(DATA))
    print(f"at {N} instances: provision {stats(big_prov)}; bind {stats(big_bind)}", file=sys.stderr)
    rss["after all provisions"] = rss_kib()
    heap["after all provisions"] = heap_kib() if heap["idle after start"] is not None else None
    ok = parallel(list(range(N)), call)
    rss["after one call on every instance"] = rss_kib()
    heap["after one call on every instance"] = heap_kib() if heap["idle after start"] is not None else None
    alive_after_calls = copies_alive()
    time.sleep(IDLE + 3)
    rss["after the idle time"] = rss_kib()
    heap["after the idle time"] = heap_kib() if heap["idle after start"] is not None else None
    alive_after_idle = copies_alive()

    print(f"\n{N} instances, {2 * N} bindings, chain: method-filter, rate-limit, cache")
    print(f"provision at 10 instances:   {stats(small_prov)}")
    print(f"provision at {N} instances: {stats(big_prov)}")
    print(f"bind at 10 instances:        {stats(small_bind)}")
    print(f"bind at {N} instances:      {stats(big_bind)}")
    print(f"one SQLite commit on this disk (WAL, synchronous=FULL), median before and after each batch: "
          f"{' / '.join(f'{c:.2f}' for c in commits)} ms")
    base = rss["idle after start"]
    for name, kib in rss.items():
        per = "" if name == "idle after start" else f"  ({(kib - base) * 1024 / N / 1024:.1f} KiB per instance above the idle start)"
        print(f"RSS {name:34} {kib / 1024:8.1f} MiB{per}")
    if heap["idle after start"] is not None:
        for name, kib in heap.items():
            per = "" if name == "idle after start" else f"  ({(kib - heap['idle after start']) / N:.1f} KiB per instance)"
            print(f"heap held {name:28} {kib / 1024:8.1f} MiB{per}")
    print(f"plugin copies alive after the calls: {alive_after_calls}; after the idle time: {alive_after_idle}")
    print(f"calls that succeeded: {sum(ok)} of {N}")
    if sum(ok) != N:
        sys.exit(1)


if __name__ == "__main__":
    main()
