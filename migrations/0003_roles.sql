-- Least-privilege roles. Group roles (NOLOGIN): grant them to login users, e.g.
--   CREATE ROLE agent LOGIN PASSWORD '...' IN ROLE feature_writer;
-- feature_writer   what the agent runs as: insert rows, create its node's partition through
--                  ensure_node_partition() (which runs as its owner), read schema_migrations
--                  and the (node, ts) keys. It cannot read features, update, delete, truncate
--                  or drop anything.
-- feature_labeller label rows (UPDATE of attack and attack_type only), record scenario runs,
--                  read everything. It cannot insert or delete rows.
-- feature_reader   read the rows, the catalog, the scenario runs and the analysis views.
-- Roles are cluster-wide: creating them needs CREATEROLE (the migrating user normally has it);
-- they are created once and shared by every database of the cluster.

-- Several databases of one cluster may migrate at once (the advisory lock is per database), so
-- a role created meanwhile by another is not an error.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['feature_writer', 'feature_labeller', 'feature_reader'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA public TO feature_writer, feature_labeller, feature_reader;
GRANT SELECT ON schema_migrations TO feature_writer, feature_labeller, feature_reader;

-- Writer: INSERT, and SELECT on the two key columns only, which INSERT ... ON CONFLICT
-- (node, ts) DO NOTHING needs to check for the row it may already have written; it cannot read
-- any feature. And the partition function.
GRANT INSERT ON node_features TO feature_writer;
GRANT SELECT (node, ts) ON node_features TO feature_writer;
ALTER FUNCTION ensure_node_partition(text) SECURITY DEFINER SET search_path = public, pg_temp;
REVOKE ALL ON FUNCTION ensure_node_partition(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ensure_node_partition(text) TO feature_writer;

-- Reader and labeller: read everything.
GRANT SELECT ON node_features, feature_catalog, scenario_runs,
                node_feature_deltas, node_feature_values, node_feature_zscore, node_anomalies
    TO feature_reader, feature_labeller;

-- Labeller: the labels, and the scenario runs it records.
GRANT UPDATE (attack, attack_type) ON node_features TO feature_labeller;
GRANT INSERT, UPDATE (labelled) ON scenario_runs TO feature_labeller;
GRANT USAGE ON SEQUENCE scenario_runs_id_seq TO feature_labeller;
