-- The broker's state. Portable SQL: runs unchanged on SQLite and PostgreSQL.
-- Timestamps are milliseconds since the Unix epoch; JSON is stored as text.

-- One row; every change that affects routes or instances bumps it inside its own transaction.
-- This serializes the broker's writes across replicas (PostgreSQL row lock) and tells other
-- replicas when to reload their routing snapshot.
CREATE TABLE changes (
    id BIGINT PRIMARY KEY,
    generation BIGINT NOT NULL
);
INSERT INTO changes (id, generation) VALUES (1, 0);

-- Settings that every replica must agree on (e.g. a check value of the secret key).
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    service_id TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    organization_guid TEXT NOT NULL,
    space_guid TEXT NOT NULL,
    parameters TEXT,
    context TEXT,
    maintenance_version TEXT,
    -- provisioning | ready | updating | deprovisioning | failed | deleted (a tombstone)
    state TEXT NOT NULL,
    operation_id TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE INDEX instances_plan ON instances (plan_id, state);

CREATE TABLE operations (
    id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    -- provision | update | deprovision
    kind TEXT NOT NULL,
    -- in progress | succeeded | failed
    state TEXT NOT NULL,
    description TEXT NOT NULL,
    -- JSON: what the operation applies (plan_id, parameters, maintenance_version)
    request TEXT NOT NULL,
    deadline_ms BIGINT NOT NULL,
    lease_owner TEXT NOT NULL,
    lease_until_ms BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE INDEX operations_running ON operations (state, lease_until_ms);
CREATE INDEX operations_instance ON operations (instance_id);

CREATE TABLE bindings (
    instance_id TEXT NOT NULL,
    id TEXT NOT NULL,
    service_id TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    parameters TEXT,
    bind_resource TEXT,
    context TEXT,
    -- The key is derived from the broker's secret key and this salt; only its SHA-256 is kept.
    key_salt TEXT NOT NULL,
    key_sha256 TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (instance_id, id)
);

-- Who changed what: one row per accepted change, written in the change's transaction.
CREATE TABLE audit (
    id TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    action TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    binding_id TEXT,
    request_identity TEXT,
    platform TEXT,
    identity TEXT
);
CREATE INDEX audit_instance ON audit (instance_id, at_ms);
