#!/usr/bin/env python3
"""Cost of a change with two replicas, driven by tests/load/replicas.sh.

    replicas.py BROKER_A GATEWAY_B PASSWORD N

Provisions instances on replica A up to 1,000 and then up to N; at each size, makes 100 binds
on A and, for each, measures the bind's latency on A and the time until replica B's gateway
serves the new key (B follows A through the store's change log, polled every
operations.sync_interval_ms). Prints median and p99 of both at both sizes. Bounded by N.
"""

import base64
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse

BROKER, GATEWAY_B, PASSWORD, N = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
HEADERS = {
    "authorization": "Basic " + base64.b64encode(f"ovsb:{PASSWORD}".encode()).decode(),
    "x-broker-api-version": "2.17",
    "content-type": "application/json",
}
local = threading.local()


def request(base, method, path, body=None, headers=HEADERS):
    conns = local.__dict__.setdefault("conns", {})
    for attempt in range(3):
        if base not in conns:
            u = urllib.parse.urlparse(base)
            conns[base] = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        try:
            conns[base].request(method, path, json.dumps(body) if body is not None else None, headers)
            r = conns[base].getresponse()
            return r.status, r.read()
        except (OSError, http.client.HTTPException):
            conns.pop(base).close()
            if attempt == 2:
                raise
    raise RuntimeError("unreachable")


def provision(i):
    body = {"service_id": "svc", "plan_id": "plain", "organization_guid": "o", "space_guid": "s"}
    status, answer = request(BROKER, "PUT", f"/v2/service_instances/r-{i}?accepts_incomplete=true", body)
    assert status in (200, 201, 202), (status, answer)
    for _ in range(600):
        _, answer = request(BROKER, "GET", f"/v2/service_instances/r-{i}/last_operation")
        if json.loads(answer).get("state") == "succeeded":
            return
        time.sleep(0.02)
    raise AssertionError(f"r-{i} never became ready")


def parallel(items, work, threads=4):
    def run(k):
        for j in range(k, len(items), threads):
            work(items[j])
    ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def bind_and_follow(i, b):
    body = {"service_id": "svc", "plan_id": "plain"}
    started = time.perf_counter()
    status, answer = request(BROKER, "PUT", f"/v2/service_instances/r-{i}/service_bindings/{b}?accepts_incomplete=true", body)
    bound = time.perf_counter()
    assert status in (200, 201), (status, answer)
    key = json.loads(answer)["credentials"]["uri"].rsplit("/", 1)[1]
    call = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
    for _ in range(1000):
        status, _ = request(GATEWAY_B, "POST", f"/v1/{key}", call, {"content-type": "application/json"})
        if status == 200:
            return (bound - started) * 1000, (time.perf_counter() - bound) * 1000
        time.sleep(0.005)
    raise AssertionError("B never served the key")


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def measure(size):
    results = [bind_and_follow(i, f"m{size}") for i in range(100)]
    binds, follows = [r[0] for r in results], [r[1] for r in results]
    line = (f"at {size:>6} instances: bind on A median {statistics.median(binds):6.2f} ms, p99 {pct(binds, 0.99):6.2f} ms; "
            f"served by B after median {statistics.median(follows):6.1f} ms, p99 {pct(follows, 0.99):6.1f} ms")
    print(line, file=sys.stderr)
    return line


def main():
    lines = []
    have = 0
    for size in (1000, N):
        parallel(list(range(have, size)), provision)
        have = size
        lines.append(measure(size))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
