-- The analysis layer: the agent's own verdict columns, the feature catalog, per-interval deltas
-- and rates of the cumulative counters, z-scores per node against a baseline of rows labelled
-- normal, anomaly flags, and the record of scenario runs (labelled attack-like workloads).
--
-- Scoring rule: gauges (and the eBPF columns, which already are per-interval counts) are scored
-- as they are; cumulative counters are scored on their per-interval deltas, because a z-score of
-- a running total only measures uptime. The paper's way (raw counters) stays available with
-- score_raw_counters => true, for comparison.

-- The agent's real-time verdict on each row: max |z| over the features (NULL during its
-- warm-up, and for rows of agents older than this migration) and the features above threshold.
ALTER TABLE node_features
    ADD COLUMN IF NOT EXISTS anomaly_score      double precision,
    ADD COLUMN IF NOT EXISTS anomalous_features text[];

COMMENT ON COLUMN node_features.anomaly_score IS
    'feature-agent''s streaming detector: max |z| over the features; NULL during warm-up';
COMMENT ON COLUMN node_features.anomalous_features IS
    'feature-agent''s streaming detector: the columns whose |z| exceeded its threshold';

-- Every scored feature and how it is scored: 'gauge' (as sampled), 'counter' (cumulative since
-- boot; scored on its delta) or 'events' (eBPF per-interval counts; scored as they are).
CREATE TABLE IF NOT EXISTS feature_catalog (
    feature  text PRIMARY KEY,
    kind     text NOT NULL CHECK (kind IN ('gauge', 'counter', 'events')),
    ordinal  integer NOT NULL UNIQUE
);

INSERT INTO feature_catalog (feature, kind, ordinal) VALUES
    ('cpu_sec_idle', 'counter', 1), ('disk_av_per', 'gauge', 2), ('disk_read', 'counter', 3),
    ('disk_write', 'counter', 4), ('net_receive', 'counter', 5), ('mem_pressure', 'counter', 6),
    ('mem_av_per', 'gauge', 7), ('forks_total', 'counter', 8), ('intr', 'counter', 9),
    ('load1', 'gauge', 10), ('load5', 'gauge', 11), ('load15', 'gauge', 12),
    ('receive_drop', 'counter', 13), ('receive_errs', 'counter', 14), ('transmit_packets', 'counter', 15),
    ('tcp_sock_alloc', 'gauge', 16), ('tcp_sock_inuse', 'gauge', 17), ('tcp_sock_mem', 'gauge', 18),
    ('udp_sock_inuse', 'gauge', 19), ('udp_sock_mem', 'gauge', 20), ('ipv4_sock_inuse', 'gauge', 21),
    ('est_conn', 'gauge', 22), ('lis_conn', 'gauge', 23), ('open_fds', 'gauge', 24),
    ('ebpf_forks', 'events', 25), ('ebpf_execs', 'events', 26), ('ebpf_exits', 'events', 27),
    ('tcp_to_est', 'events', 28), ('tcp_to_syn_sent', 'events', 29), ('tcp_to_syn_recv', 'events', 30),
    ('tcp_to_close', 'events', 31), ('tcp_to_listen', 'events', 32), ('tcp_conn_failed', 'events', 33),
    ('tcp_rst_sent', 'events', 34), ('tcp_rst_recv', 'events', 35), ('sock_alloc_tcp', 'events', 36),
    ('sock_alloc_udp', 'events', 37), ('sock_alloc_unix', 'events', 38), ('sock_alloc_raw', 'events', 39),
    ('sock_alloc_other', 'events', 40)
ON CONFLICT (feature) DO NOTHING;

-- The change of a cumulative counter over one interval, or NULL when either end is missing or
-- the counter went backwards (a reboot or a counter reset): never a negative spike.
CREATE OR REPLACE FUNCTION counter_delta(cur bigint, prev bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN cur >= prev THEN cur - prev END
$$;

CREATE OR REPLACE FUNCTION counter_delta(cur double precision, prev double precision) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN cur >= prev THEN cur - prev END
$$;

-- Every row with the per-interval delta (<counter>_delta) and per-second rate (<counter>_rate)
-- of each cumulative counter, against the previous row of the same node. elapsed_s is the time
-- since that row. cpu_sec_idle_rate is the fraction of time the CPUs were idle (0..1).
CREATE OR REPLACE VIEW node_feature_deltas AS
WITH paired AS (
    SELECT f.*,
           extract(epoch FROM f.ts - lag(f.ts) OVER w)::double precision AS elapsed_s,
           counter_delta(f.cpu_sec_idle, lag(f.cpu_sec_idle) OVER w)         AS cpu_sec_idle_delta,
           counter_delta(f.disk_read, lag(f.disk_read) OVER w)               AS disk_read_delta,
           counter_delta(f.disk_write, lag(f.disk_write) OVER w)             AS disk_write_delta,
           counter_delta(f.net_receive, lag(f.net_receive) OVER w)           AS net_receive_delta,
           counter_delta(f.mem_pressure, lag(f.mem_pressure) OVER w)         AS mem_pressure_delta,
           counter_delta(f.forks_total, lag(f.forks_total) OVER w)           AS forks_total_delta,
           counter_delta(f.intr, lag(f.intr) OVER w)                         AS intr_delta,
           counter_delta(f.receive_drop, lag(f.receive_drop) OVER w)         AS receive_drop_delta,
           counter_delta(f.receive_errs, lag(f.receive_errs) OVER w)         AS receive_errs_delta,
           counter_delta(f.transmit_packets, lag(f.transmit_packets) OVER w) AS transmit_packets_delta
    FROM node_features f
    WINDOW w AS (PARTITION BY f.node ORDER BY f.ts)
)
SELECT p.*,
       p.cpu_sec_idle_delta / nullif(p.elapsed_s, 0)     AS cpu_sec_idle_rate,
       p.disk_read_delta / nullif(p.elapsed_s, 0)        AS disk_read_rate,
       p.disk_write_delta / nullif(p.elapsed_s, 0)       AS disk_write_rate,
       p.net_receive_delta / nullif(p.elapsed_s, 0)      AS net_receive_rate,
       p.mem_pressure_delta / nullif(p.elapsed_s, 0)     AS mem_pressure_rate,
       p.forks_total_delta / nullif(p.elapsed_s, 0)      AS forks_total_rate,
       p.intr_delta / nullif(p.elapsed_s, 0)             AS intr_rate,
       p.receive_drop_delta / nullif(p.elapsed_s, 0)     AS receive_drop_rate,
       p.receive_errs_delta / nullif(p.elapsed_s, 0)     AS receive_errs_rate,
       p.transmit_packets_delta / nullif(p.elapsed_s, 0) AS transmit_packets_rate
FROM paired p;

-- One line per row and feature: the raw value, and the value that is scored (the delta for a
-- cumulative counter, the value itself otherwise).
CREATE OR REPLACE VIEW node_feature_values AS
SELECT d.node, d.ts, d.attack, d.attack_type, v.feature, c.kind, v.raw, v.scored
FROM node_feature_deltas d
CROSS JOIN LATERAL (VALUES
    ('cpu_sec_idle', d.cpu_sec_idle, d.cpu_sec_idle_delta),
    ('disk_av_per', d.disk_av_per, d.disk_av_per),
    ('disk_read', d.disk_read::float8, d.disk_read_delta::float8),
    ('disk_write', d.disk_write::float8, d.disk_write_delta::float8),
    ('net_receive', d.net_receive::float8, d.net_receive_delta::float8),
    ('mem_pressure', d.mem_pressure::float8, d.mem_pressure_delta::float8),
    ('mem_av_per', d.mem_av_per, d.mem_av_per),
    ('forks_total', d.forks_total::float8, d.forks_total_delta::float8),
    ('intr', d.intr::float8, d.intr_delta::float8),
    ('load1', d.load1, d.load1),
    ('load5', d.load5, d.load5),
    ('load15', d.load15, d.load15),
    ('receive_drop', d.receive_drop::float8, d.receive_drop_delta::float8),
    ('receive_errs', d.receive_errs::float8, d.receive_errs_delta::float8),
    ('transmit_packets', d.transmit_packets::float8, d.transmit_packets_delta::float8),
    ('tcp_sock_alloc', d.tcp_sock_alloc::float8, d.tcp_sock_alloc::float8),
    ('tcp_sock_inuse', d.tcp_sock_inuse::float8, d.tcp_sock_inuse::float8),
    ('tcp_sock_mem', d.tcp_sock_mem::float8, d.tcp_sock_mem::float8),
    ('udp_sock_inuse', d.udp_sock_inuse::float8, d.udp_sock_inuse::float8),
    ('udp_sock_mem', d.udp_sock_mem::float8, d.udp_sock_mem::float8),
    ('ipv4_sock_inuse', d.ipv4_sock_inuse::float8, d.ipv4_sock_inuse::float8),
    ('est_conn', d.est_conn::float8, d.est_conn::float8),
    ('lis_conn', d.lis_conn::float8, d.lis_conn::float8),
    ('open_fds', d.open_fds::float8, d.open_fds::float8),
    ('ebpf_forks', d.ebpf_forks::float8, d.ebpf_forks::float8),
    ('ebpf_execs', d.ebpf_execs::float8, d.ebpf_execs::float8),
    ('ebpf_exits', d.ebpf_exits::float8, d.ebpf_exits::float8),
    ('tcp_to_est', d.tcp_to_est::float8, d.tcp_to_est::float8),
    ('tcp_to_syn_sent', d.tcp_to_syn_sent::float8, d.tcp_to_syn_sent::float8),
    ('tcp_to_syn_recv', d.tcp_to_syn_recv::float8, d.tcp_to_syn_recv::float8),
    ('tcp_to_close', d.tcp_to_close::float8, d.tcp_to_close::float8),
    ('tcp_to_listen', d.tcp_to_listen::float8, d.tcp_to_listen::float8),
    ('tcp_conn_failed', d.tcp_conn_failed::float8, d.tcp_conn_failed::float8),
    ('tcp_rst_sent', d.tcp_rst_sent::float8, d.tcp_rst_sent::float8),
    ('tcp_rst_recv', d.tcp_rst_recv::float8, d.tcp_rst_recv::float8),
    ('sock_alloc_tcp', d.sock_alloc_tcp::float8, d.sock_alloc_tcp::float8),
    ('sock_alloc_udp', d.sock_alloc_udp::float8, d.sock_alloc_udp::float8),
    ('sock_alloc_unix', d.sock_alloc_unix::float8, d.sock_alloc_unix::float8),
    ('sock_alloc_raw', d.sock_alloc_raw::float8, d.sock_alloc_raw::float8),
    ('sock_alloc_other', d.sock_alloc_other::float8, d.sock_alloc_other::float8)
) AS v(feature, raw, scored)
JOIN feature_catalog c USING (feature);

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
CREATE OR REPLACE VIEW node_feature_zscore AS SELECT * FROM node_feature_zscores();
CREATE OR REPLACE VIEW node_anomalies AS SELECT * FROM node_feature_flags() WHERE anomalous;

-- Scenario runs: bounded attack-like workloads run by `feature-agent scenario`, with the window
-- they covered. Rows whose interval overlaps a window are labelled attack = 1,
-- attack_type = name, by the scenario command itself.
CREATE TABLE IF NOT EXISTS scenario_runs (
    id          bigserial PRIMARY KEY,
    node        text        NOT NULL,
    name        text        NOT NULL,
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz NOT NULL CHECK (ended_at >= started_at),
    interval_s  double precision NOT NULL CHECK (interval_s > 0),
    labelled    integer     NOT NULL DEFAULT 0,
    details     jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS scenario_runs_node_time ON scenario_runs (node, started_at);
