-- Usage per binding, method and minute (minutes since the Unix epoch), as each replica metered
-- it: a replica adds to its own rows only (keyed by its id), and readers sum over replicas.
-- The outcome columns count calls by class (see `call::OUTCOME_CLASSES`).
CREATE TABLE usage_minutes (
    replica_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    binding_id TEXT NOT NULL,
    minute BIGINT NOT NULL,
    method TEXT NOT NULL,
    calls BIGINT NOT NULL,
    compute_units BIGINT NOT NULL,
    bytes_out BIGINT NOT NULL,
    n_ok BIGINT NOT NULL,
    n_error BIGINT NOT NULL,
    n_refused BIGINT NOT NULL,
    n_limit BIGINT NOT NULL,
    n_plugin_failure BIGINT NOT NULL,
    n_upstream_error BIGINT NOT NULL,
    n_internal BIGINT NOT NULL,
    PRIMARY KEY (replica_id, instance_id, binding_id, minute, method)
);

CREATE INDEX usage_minutes_by_instance ON usage_minutes (instance_id, minute);
