-- Validator keys. Portable SQL: runs unchanged on SQLite and PostgreSQL.

-- Which instance's client a validator key is loaded in (or being loaded in). A key has at most
-- one row: it is never loaded in two clients at once. The row goes only after the key's
-- slashing-protection history was exported and stored below.
CREATE TABLE validator_keys (
    pubkey TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    claimed_ms BIGINT NOT NULL
);
CREATE INDEX validator_keys_instance ON validator_keys (instance_id);

-- EIP-3076 slashing-protection history, one row per key per export (a key removed from a client).
-- Never deleted by ovsb: it is what keeps a key from signing twice when it moves.
CREATE TABLE slashing_protection (
    id TEXT PRIMARY KEY,
    pubkey TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    -- The interchange document (JSON text) holding this key's entry only.
    interchange TEXT NOT NULL,
    exported_ms BIGINT NOT NULL
);
CREATE INDEX slashing_protection_pubkey ON slashing_protection (pubkey, exported_ms);
