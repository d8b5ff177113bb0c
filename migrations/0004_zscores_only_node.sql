-- Brings every database to the z-score functions with `only_node`. Migration 0002 shipped
-- first with four-argument node_feature_zscores / node_feature_flags; a later release changed
-- 0002 in place to add `only_node`, so databases migrated before it kept the old functions
-- (migrate never re-applies a version), and export, plot and evaluate, which pass only_node,
-- failed on them. This migration replaces the old overloads (and the views over them) with the
-- current ones; on a database that already has them it changes nothing. Shipped migrations are
-- never edited again: changes go into a new file.
DROP VIEW IF EXISTS node_anomalies;
DROP VIEW IF EXISTS node_feature_zscore;
DROP FUNCTION IF EXISTS node_feature_flags(double precision, timestamptz, timestamptz, boolean);
DROP FUNCTION IF EXISTS node_feature_zscores(double precision, timestamptz, timestamptz, boolean);

-- z-scores per node and feature against the node's baseline: its rows labelled normal
-- (attack = 0), all of them or those in [baseline_from, baseline_to]. The baseline is the mean
-- and sample standard deviation of the scored value. A feature whose baseline standard
-- deviation is zero (or within rounding of zero: below 1e-9 of max(1, |mean|)) has no z-score
-- (NULL) and is never flagged: it carries no information in that baseline. A row is flagged
-- on a feature when |z| > threshold. only_node restricts the answer (and the work) to one node.
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
LANGUAGE sql STABLE AS $$
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
               CASE WHEN b.sd > 1e-9 * greatest(1.0, abs(b.mean)) THEN (v.value - b.mean) / b.sd END AS z
        FROM v LEFT JOIN baseline b ON b.node = v.node AND b.feature = v.feature
    )
    SELECT s.node, s.ts, s.attack, s.attack_type, s.feature, s.kind, s.value, s.mean, s.sd,
           coalesce(s.n, 0), s.z, coalesce(abs(s.z) > threshold, false)
    FROM scored s
$$;

-- One line per row: its largest |z| and the features flagged at the threshold.
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
LANGUAGE sql STABLE AS $$
    SELECT z.node, z.ts, z.attack, z.attack_type, max(abs(z.z)),
           coalesce(array_agg(z.feature ORDER BY z.feature) FILTER (WHERE z.anomalous), '{}'),
           bool_or(z.anomalous)
    FROM node_feature_zscores(threshold, baseline_from, baseline_to, score_raw_counters, only_node) z
    GROUP BY z.node, z.ts, z.attack, z.attack_type
$$;

-- The defaults as views: every row's z-scores at threshold 2.0 over all normal rows, and the
-- rows flagged at that threshold.
CREATE VIEW node_feature_zscore AS SELECT * FROM node_feature_zscores();
CREATE VIEW node_anomalies AS SELECT * FROM node_feature_flags() WHERE anomalous;

-- The grants on the two views, as 0003 gave them (dropping a view drops its grants).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'feature_reader') THEN
        GRANT SELECT ON node_feature_zscore, node_anomalies TO feature_reader, feature_labeller;
    END IF;
END
$$;
