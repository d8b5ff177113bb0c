-- node_features and pod_features become partitioned by RANGE of ts: one partition per UTC day,
-- shared by every node, with node leading every key (node_features (node, ts), pod_features
-- (node, ts, kind, owner)). Before, each node had a LIST partition of its own (and pod_features
-- a day partition under it), which a Citus coordinator cannot distribute (it does not shard a
-- partitioned table whose partitions are partitioned, and it would make one distributed table
-- per node). Now the same schema serves one PostgreSQL server and a Citus cluster, where both
-- tables are distributed by node, colocated (distribute_feature_tables() below, which
-- `feature-agent migrate` calls when the citus extension is installed), and retention is the
-- same DROP of old day partitions on both.
--
-- The rows are kept: the old tables are renamed, the new ones created with the same columns,
-- constraints, defaults and comments, the rows copied into day partitions made for every day
-- they cover, and the old tables dropped. The analysis views, which name the tables, are
-- dropped first and regenerated after the migrations (migrations/generated/analysis.sql).
-- Node names never reach an identifier any more: a partition is named after its day.

DROP VIEW IF EXISTS node_feature_values, node_feature_deltas, pod_feature_zscores, pod_feature_values,
    pod_feature_deltas;
DELETE FROM schema_generated WHERE name = 'analysis';

ALTER TABLE node_features RENAME TO node_features_by_node;
ALTER TABLE node_features_by_node RENAME CONSTRAINT node_features_pkey TO node_features_by_node_pkey;
ALTER TABLE pod_features RENAME TO pod_features_by_node;
ALTER TABLE pod_features_by_node RENAME CONSTRAINT pod_features_pkey TO pod_features_by_node_pkey;

CREATE TABLE node_features (
    LIKE node_features_by_node INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING COMMENTS,
    PRIMARY KEY (node, ts)
) PARTITION BY RANGE (ts);
CREATE TABLE pod_features (
    LIKE pod_features_by_node INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING COMMENTS,
    PRIMARY KEY (node, ts, kind, owner)
) PARTITION BY RANGE (ts);
COMMENT ON TABLE node_features IS
    'One row per node per interval, written by feature-agent; partitioned by UTC day; see README "Schema".';
COMMENT ON TABLE pod_features IS
    'one row per pod, host service and other, per node per interval; partitioned by UTC day; see docs/pod-rows.md';

-- A day partition's name: its parent's and the day's, e.g. pod_features_20260304.
CREATE OR REPLACE FUNCTION feature_day_partition_name(parent text, day date) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT parent || '_' || to_char(day, 'YYYYMMDD')
$$;

-- Creates the partitions of node_features and of pod_features for the UTC day holding `at`,
-- where missing; returns the day. Safe to call from several agents at once. The agent calls it
-- once per day its rows fall in, before writing them.
CREATE OR REPLACE FUNCTION ensure_day_partitions(at timestamptz) RETURNS date
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    day date;
    parent text;
    part text;
BEGIN
    IF at IS NULL OR NOT isfinite(at) THEN
        RAISE EXCEPTION 'a row''s time must be a finite timestamp, not %', at;
    END IF;
    day := (at AT TIME ZONE 'UTC')::date;
    FOREACH parent IN ARRAY ARRAY['node_features', 'pod_features'] LOOP
        part := feature_day_partition_name(parent, day);
        IF to_regclass(quote_ident(part)) IS NULL THEN
            BEGIN
                EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)', part, parent,
                               day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
            EXCEPTION WHEN duplicate_table OR unique_violation THEN
                NULL; -- another agent created it first
            END;
        END IF;
    END LOOP;
    RETURN day;
END
$$;
REVOKE ALL ON FUNCTION ensure_day_partitions(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ensure_day_partitions(timestamptz) TO feature_writer;

-- The functions agents older than this schema call before writing, kept so that a rolling
-- update (the database migrated, old agents still writing) loses nothing: the node's call makes
-- sure of the days from a week ago to tomorrow (an older agent's spool replays at most that far
-- back unless it was down longer), the pod call of the day of its rows.
CREATE OR REPLACE FUNCTION ensure_node_partition(node_name text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF node_name IS NULL OR node_name = '' THEN
        RAISE EXCEPTION 'node name must not be empty';
    END IF;
    PERFORM ensure_day_partitions(now() + d * interval '1 day') FROM generate_series(-7, 1) AS d;
    RETURN 'node_features';
END
$$;
CREATE OR REPLACE FUNCTION ensure_pod_partition(node_name text, at timestamptz) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF node_name IS NULL OR node_name = '' THEN
        RAISE EXCEPTION 'node name must not be empty';
    END IF;
    RETURN feature_day_partition_name('pod_features', ensure_day_partitions(at));
END
$$;
DROP FUNCTION IF EXISTS node_features_partition_name(text);
DROP FUNCTION IF EXISTS pod_features_partition_name(text);

-- The rows, into the partitions of their days.
SELECT ensure_day_partitions(day)
FROM (SELECT date_trunc('day', ts, 'UTC') AS day FROM node_features_by_node
      UNION SELECT date_trunc('day', ts, 'UTC') FROM pod_features_by_node) AS days;
INSERT INTO node_features SELECT * FROM node_features_by_node;
INSERT INTO pod_features SELECT * FROM pod_features_by_node;
DROP TABLE node_features_by_node, pod_features_by_node;

-- Retention: drops every day partition of `parent` (node_features or pod_features) that ends at
-- or before `cutoff`, and returns how many it dropped. Rows are never deleted one by one.
CREATE OR REPLACE FUNCTION drop_day_partitions_before(parent regclass, cutoff timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    p record;
    dropped integer := 0;
BEGIN
    IF parent NOT IN ('node_features'::regclass, 'pod_features'::regclass) THEN
        RAISE EXCEPTION 'only node_features and pod_features are partitioned by day, not %', parent;
    END IF;
    FOR p IN
        SELECT c.oid::regclass AS part, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = parent
    LOOP
        IF (regexp_match(p.bound, 'TO \(''([^'']+)''\)'))[1]::timestamptz <= cutoff THEN
            EXECUTE format('DROP TABLE %s', p.part);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END
$$;
CREATE OR REPLACE FUNCTION drop_pod_features_before(cutoff timestamptz) RETURNS integer
LANGUAGE sql AS $$
    SELECT drop_day_partitions_before('pod_features', cutoff)
$$;
REVOKE ALL ON FUNCTION drop_day_partitions_before(regclass, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION drop_pod_features_before(timestamptz) FROM PUBLIC;

-- The same least privilege as before, on the new tables.
GRANT INSERT ON node_features, pod_features TO feature_writer;
GRANT SELECT (node, ts) ON node_features TO feature_writer;
GRANT SELECT (node, ts, kind, owner) ON pod_features TO feature_writer;
GRANT SELECT ON node_features, pod_features TO feature_reader, feature_labeller;
GRANT UPDATE (attack, attack_type) ON node_features, pod_features TO feature_labeller;

-- The node z-score functions, in PL/pgSQL: Citus cannot plan a SQL-language function whose
-- parameterized query reads a distributed table, and plans each query of a PL/pgSQL function
-- like any other. Same signatures, columns and results as 0010's (the views over them,
-- node_feature_zscore and node_anomalies, stand as they are).
CREATE OR REPLACE FUNCTION node_feature_zscores(
    threshold          double precision DEFAULT 2.0,
    baseline_from      timestamptz      DEFAULT NULL,
    baseline_to        timestamptz      DEFAULT NULL,
    score_raw_counters boolean          DEFAULT false,
    only_node          text             DEFAULT NULL
) RETURNS TABLE (
    node            text,
    ts              timestamptz,
    attack          smallint,
    attack_type     text,
    feature         text,
    kind            text,
    value           double precision,
    baseline_mean   double precision,
    baseline_stddev double precision,
    baseline_rows   bigint,
    z               double precision,
    anomalous       boolean
)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH v AS (
        SELECT fv.node, fv.ts, fv.attack, fv.attack_type, fv.feature, fv.kind,
               CASE WHEN score_raw_counters THEN fv.raw ELSE fv.scored END AS value
        FROM node_feature_values fv
        -- A per-node question reads only that node (the filter reaches the partition and
        -- the per-node window below it).
        WHERE only_node IS NULL OR fv.node = only_node
    ),
    baseline AS (
        SELECT v.node, v.feature, avg(v.value) AS mean, stddev_samp(v.value) AS sd, count(v.value) AS n
        FROM v
        WHERE v.attack = 0
          AND (baseline_from IS NULL OR v.ts >= baseline_from)
          AND (baseline_to IS NULL OR v.ts <= baseline_to)
        GROUP BY v.node, v.feature
    ),
    scored AS (
        SELECT v.*, b.mean, b.sd, b.n,
               greatest(coalesce(b.sd, 0), coalesce(c.min_spread, 0)) AS spread
        FROM v
        LEFT JOIN baseline b ON b.node = v.node AND b.feature = v.feature
        LEFT JOIN feature_catalog c ON c.feature = v.feature
    )
    SELECT s.node, s.ts, s.attack, s.attack_type, s.feature, s.kind, s.value, s.mean, s.sd,
           coalesce(s.n, 0), z.z, coalesce(abs(z.z) > threshold, false)
    FROM scored s
    CROSS JOIN LATERAL (
        SELECT CASE WHEN s.n > 0 AND s.spread > 1e-9 * greatest(1.0, abs(s.mean))
                    THEN (s.value - s.mean) / s.spread END AS z
    ) z;
END
$$;

CREATE OR REPLACE FUNCTION node_feature_flags(
    threshold          double precision DEFAULT 2.0,
    baseline_from      timestamptz      DEFAULT NULL,
    baseline_to        timestamptz      DEFAULT NULL,
    score_raw_counters boolean          DEFAULT false,
    only_node          text             DEFAULT NULL
) RETURNS TABLE (
    node               text,
    ts                 timestamptz,
    attack             smallint,
    attack_type        text,
    max_abs_z          double precision,
    anomalous_features text[],
    anomalous          boolean
)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT z.node, z.ts, z.attack, z.attack_type, max(abs(z.z)),
           coalesce(array_agg(z.feature ORDER BY z.feature) FILTER (WHERE z.anomalous), '{}'),
           bool_or(z.anomalous)
    FROM node_feature_zscores(threshold, baseline_from, baseline_to, score_raw_counters, only_node) z
    GROUP BY z.node, z.ts, z.attack, z.attack_type;
END
$$;

-- On a Citus coordinator: distributes node_features and pod_features by node, colocated (a
-- node's row and its pod rows of one interval land on one worker, in one transaction), makes
-- the small tables (the feature catalog, the scenario runs) reference tables, copied to every
-- worker, and creates counter_delta() on the workers (the views' queries run there). Idempotent;
-- a no-op without the citus extension. `feature-agent migrate` calls it after the migrations,
-- before it makes the views.
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
