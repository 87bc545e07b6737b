-- Replicas and the nodes they run. A `process` plan's node runs on exactly one replica (its
-- owner): every other replica's gateway forwards that instance's calls to the recorded URLs,
-- and the instance's operations run on the owner. A replica whose heartbeat is older than the
-- operation lease is dead: its nodes are taken over by one other replica, by a conditional
-- update of node_owners.
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    node_host TEXT NOT NULL,
    heartbeat_ms BIGINT NOT NULL
);

CREATE TABLE node_owners (
    instance_id TEXT PRIMARY KEY,
    replica_id TEXT NOT NULL,
    http_url TEXT,
    ws_url TEXT,
    claimed_ms BIGINT NOT NULL
);

CREATE INDEX node_owners_by_replica ON node_owners (replica_id);
