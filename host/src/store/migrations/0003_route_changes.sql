-- Which instance each change (each bump of changes.generation) touched, so that replicas apply
-- other replicas' changes one instance at a time instead of reloading every route. Rows older
-- than the window ovsb keeps are pruned; a replica that falls behind the window reloads all.
CREATE TABLE route_changes (
    generation BIGINT PRIMARY KEY,
    instance_id TEXT NOT NULL
);
