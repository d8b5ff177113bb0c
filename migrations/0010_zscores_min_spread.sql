-- The node z-scores take each feature's floor on its spread from the catalog (min_spread, the
-- agent detector's floor, in the feature's scored unit), as the pod z-scores do. Before, a
-- feature whose baseline was flat (tcp_conn_failed on a quiet node: always 0) had a NULL z on
-- every row, so a port scan was never flagged on its main feature in SQL; now its z is the
-- change in units of its floor. A feature without a catalog floor keeps the old rule (no z
-- when its baseline standard deviation is within rounding of zero). Same signature and
-- columns, so the views over it (node_feature_zscore, node_anomalies, node_feature_flags)
-- stand as they are.
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
    ) z
$$;
