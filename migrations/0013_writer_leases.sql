-- One writer per node name, kept in a table instead of a session advisory lock, so that it holds
-- through a transaction pooler (PgBouncer with pool_mode = transaction), where a session lock
-- lands on whichever server connection the pooler lends and guards nothing.
--
-- An agent takes its node's lease when it opens a session (a row here naming it as the holder,
-- expiring a lease length later), renews it in the same transaction as every batch it writes,
-- and deletes it when it stops. A batch whose renewal finds another holder is rolled back. A lease
-- whose holder vanished (a crash, a lost network) expires, and the next agent takes it.
-- Times are the database's own clock (now()), so agents' clocks never decide who holds a lease.
CREATE TABLE IF NOT EXISTS node_writers (
    node    text PRIMARY KEY,
    -- The holding agent process's application_name (feature-agent/<pid>.<nonce>).
    holder  text NOT NULL,
    -- Where it connects from, as the server sees it (a pooler's address through a pooler).
    client  text NOT NULL,
    since   timestamptz NOT NULL,
    expires timestamptz NOT NULL
);
COMMENT ON TABLE node_writers IS
    'The writer lease of each node name: one agent writes per node; see docs/durability.md "One writer per node name".';

GRANT SELECT, INSERT, UPDATE, DELETE ON node_writers TO feature_writer;
GRANT SELECT ON node_writers TO feature_reader, feature_labeller;

-- On a Citus coordinator the leases are distributed by node, colocated with the rows, so a
-- batch's renewal and its rows are one single-shard transaction on one worker; and the schema's
-- bookkeeping (schema_migrations, schema_generated) becomes reference tables, on every node, so
-- agents may write through the workers (docs/citus.md, "Sizing a fleet").
CREATE OR REPLACE FUNCTION distribute_feature_tables() RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    done text[] := '{}';
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RETURN 'plain';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = 'node_features'::regclass) THEN
        PERFORM create_distributed_table('node_features', 'node');
        done := done || 'node_features'::text;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = 'pod_features'::regclass) THEN
        PERFORM create_distributed_table('pod_features', 'node', colocate_with => 'node_features');
        done := done || 'pod_features'::text;
    END IF;
    IF to_regclass('node_writers') IS NOT NULL
       AND NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = 'node_writers'::regclass) THEN
        PERFORM create_distributed_table('node_writers', 'node', colocate_with => 'node_features');
        done := done || 'node_writers'::text;
    END IF;
    -- The schema's bookkeeping on every node, so an agent that writes through a worker (Citus
    -- routes its rows) finds the schema current there.
    IF NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = 'schema_migrations'::regclass) THEN
        PERFORM create_reference_table('schema_migrations');
        done := done || 'schema_migrations'::text;
    END IF;
    IF to_regclass('schema_generated') IS NOT NULL
       AND NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = 'schema_generated'::regclass) THEN
        PERFORM create_reference_table('schema_generated');
        done := done || 'schema_generated'::text;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = 'feature_catalog'::regclass) THEN
        PERFORM create_reference_table('feature_catalog');
        done := done || 'feature_catalog'::text;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = 'scenario_runs'::regclass) THEN
        PERFORM create_reference_table('scenario_runs');
        done := done || 'scenario_runs'::text;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_dist_object WHERE objid = 'counter_delta(bigint, bigint)'::regprocedure) THEN
        PERFORM create_distributed_function('counter_delta(bigint, bigint)');
        PERFORM create_distributed_function('counter_delta(double precision, double precision)');
        done := done || 'counter_delta()'::text;
    END IF;
    RETURN 'citus' || CASE WHEN cardinality(done) > 0 THEN ': distributed ' || array_to_string(done, ', ') ELSE '' END;
END
$$;
REVOKE ALL ON FUNCTION distribute_feature_tables() FROM PUBLIC;
