-- How many instances of each plan are not deleted, kept up to date by every write of an
-- instance row (in its transaction): a provision checks a plan's max_instances by reading one
-- row, not by counting the plan's instances (work that grew with the number of instances).
CREATE TABLE plan_instances (
    plan_id TEXT PRIMARY KEY,
    live BIGINT NOT NULL
);
INSERT INTO plan_instances (plan_id, live)
    SELECT plan_id, COUNT(*) FROM instances WHERE state <> 'deleted' GROUP BY plan_id;
