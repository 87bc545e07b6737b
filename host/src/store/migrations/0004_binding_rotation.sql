-- Binding rotation and expiring credentials (OSB 2.17). Portable SQL: runs unchanged on SQLite
-- and PostgreSQL.

-- The binding a rotation replaced (`predecessor_binding_id`, of the same instance); NULL for a
-- plain bind. Kept as given: the predecessor may be unbound later, a replay still compares equal.
ALTER TABLE bindings ADD COLUMN predecessor_id TEXT;
-- When the credentials stop working (ms since the Unix epoch; the plan's binding_ttl after the
-- bind); NULL: they work until the unbind.
ALTER TABLE bindings ADD COLUMN expires_ms BIGINT;
