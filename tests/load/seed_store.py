#!/usr/bin/env python3
"""Writes N ready instances of one plan, with two bindings each, into an ovsb SQLite store (made
by a first `ovsb serve`, which applied the migrations): the rows N provisions and 2N binds leave
(instance, operation, bindings, plan count), without making them one by one. For start-up
timings (tests/load/startup.sh); the keys are random digests, so no call can use them.

    seed_store.py DB N PLAN_ID SERVICE_ID
"""

import os
import sqlite3
import sys
import time

DB, N, PLAN, SERVICE = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
now = int(time.time() * 1000)
db = sqlite3.connect(DB, isolation_level=None)
db.execute("BEGIN")
for i in range(N):
    iid, op = f"t-{i}", f"provision-seed-{i}"
    db.execute(
        "INSERT INTO instances (id, service_id, plan_id, organization_guid, space_guid, parameters, context, "
        "maintenance_version, state, operation_id, created_ms, updated_ms) "
        "VALUES (?, ?, ?, 'o', 's', NULL, NULL, NULL, 'ready', ?, ?, ?)",
        (iid, SERVICE, PLAN, op, now, now),
    )
    db.execute(
        "INSERT INTO operations (id, instance_id, kind, state, description, request, deadline_ms, lease_owner, "
        "lease_until_ms, created_ms, updated_ms) VALUES (?, ?, 'provision', 'succeeded', 'provisioned', '{}', ?, "
        "'seed', 0, ?, ?)",
        (op, iid, now, now, now),
    )
    for b in (0, 1):
        db.execute(
            "INSERT INTO bindings (instance_id, id, service_id, plan_id, key_salt, key_sha256, created_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (iid, f"b{b}", SERVICE, PLAN, os.urandom(16).hex(), os.urandom(32).hex(), now),
        )
db.execute(
    "INSERT INTO plan_instances (plan_id, live) VALUES (?, ?) "
    "ON CONFLICT (plan_id) DO UPDATE SET live = plan_instances.live + excluded.live",
    (PLAN, N),
)
db.execute("COMMIT")
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
db.close()
