-- Per-pod rows: one row per pod, host service (systemd unit) and "other" per node per interval,
-- with the eBPF events counted in the pod's cgroups and the pod's cgroup v2 resource files.
-- Partitioned like node_features (a partition per node), and each node's partition by day, so
-- that retention drops whole day partitions (drop_pod_features_before): time proportional to
-- the number of partitions, not rows. Column meanings: feature-schema/src/pods.rs, README.

CREATE TABLE IF NOT EXISTS pod_features (
    node              text             NOT NULL,
    ts                timestamptz      NOT NULL,
    interval_s        double precision,
    kind              text             NOT NULL CHECK (kind IN ('pod', 'service', 'other')),
    owner             text             NOT NULL,
    namespace         text,
    pod               text,
    qos               text,
    cgroups           integer,
    attack            smallint         NOT NULL DEFAULT 0 CHECK (attack IN (0, 1)),
    attack_type       text,
    -- eBPF events in the interval (the node row's columns of the same names are their sums).
    ebpf_forks            bigint,
    ebpf_execs            bigint,
    ebpf_exits            bigint,
    tcp_to_est            bigint,
    tcp_to_syn_sent       bigint,
    tcp_to_syn_recv       bigint,
    tcp_to_close          bigint,
    tcp_to_listen         bigint,
    tcp_conn_failed       bigint,
    tcp_rst_sent          bigint,
    tcp_rst_recv          bigint,
    sock_alloc_tcp        bigint,
    sock_alloc_udp        bigint,
    sock_alloc_unix       bigint,
    sock_alloc_raw        bigint,
    sock_alloc_other      bigint,
    -- The pod's cgroup v2 files; NULL where the file is absent.
    cpu_usage_usec        bigint,
    cpu_pressure_usec     bigint,
    memory_pressure_usec  bigint,
    io_pressure_usec      bigint,
    memory_current        bigint,
    oom_kills             bigint,
    pids_current          bigint,
    io_read_bytes         bigint,
    io_write_bytes        bigint,
    PRIMARY KEY (node, ts, kind, owner)
) PARTITION BY LIST (node);

COMMENT ON TABLE pod_features IS 'one row per pod, host service and other, per node per interval; see the README "Per-pod rows"';
COMMENT ON COLUMN pod_features.owner IS 'the pod''s UID, the service''s systemd unit, or other';

CREATE OR REPLACE FUNCTION pod_features_partition_name(node_name text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT 'pod_features_'
        || left(trim(both '_' from regexp_replace(lower(node_name), '[^a-z0-9]+', '_', 'g')), 24)
        || '_' || left(md5(node_name), 16)
$$;

-- Creates the node's partition and the day partition holding `at`, if missing; returns the day
-- partition's name. Safe to call from several agents at once.
CREATE OR REPLACE FUNCTION ensure_pod_partition(node_name text, at timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    part text := pod_features_partition_name(node_name);
    day date := (at AT TIME ZONE 'UTC')::date;
    day_part text := part || '_' || to_char(day, 'YYYYMMDD');
BEGIN
    IF node_name IS NULL OR node_name = '' THEN
        RAISE EXCEPTION 'node name must not be empty';
    END IF;
    IF to_regclass(quote_ident(part)) IS NULL THEN
        BEGIN
            EXECUTE format('CREATE TABLE %I PARTITION OF pod_features FOR VALUES IN (%L) PARTITION BY RANGE (ts)',
                           part, node_name);
        EXCEPTION WHEN duplicate_table OR unique_violation THEN
            NULL;
        END;
    END IF;
    IF to_regclass(quote_ident(day_part)) IS NULL THEN
        BEGIN
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)', day_part, part,
                           (day::timestamp AT TIME ZONE 'UTC'), ((day + 1)::timestamp AT TIME ZONE 'UTC'));
        EXCEPTION WHEN duplicate_table OR unique_violation THEN
            NULL;
        END;
    END IF;
    RETURN day_part;
END
$$;

-- Retention: drops every day partition of pod_features that ends at or before `cutoff`, and
-- returns how many it dropped. Rows are never deleted one by one.
CREATE OR REPLACE FUNCTION drop_pod_features_before(cutoff timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    p record;
    dropped integer := 0;
BEGIN
    FOR p IN
        SELECT c.oid::regclass AS part, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_inherits ni ON ni.inhrelid = i.inhparent
        WHERE ni.inhparent = 'pod_features'::regclass
    LOOP
        IF (regexp_match(p.bound, 'TO \(''([^'']+)''\)'))[1]::timestamptz <= cutoff THEN
            EXECUTE format('DROP TABLE %s', p.part);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END
$$;

GRANT INSERT ON pod_features TO feature_writer;
GRANT SELECT (node, ts, kind, owner) ON pod_features TO feature_writer;
ALTER FUNCTION ensure_pod_partition(text, timestamptz) SECURITY DEFINER SET search_path = public, pg_temp;
REVOKE ALL ON FUNCTION ensure_pod_partition(text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ensure_pod_partition(text, timestamptz) TO feature_writer;
REVOKE ALL ON FUNCTION drop_pod_features_before(timestamptz) FROM PUBLIC;
GRANT SELECT ON pod_features TO feature_reader, feature_labeller;
GRANT UPDATE (attack, attack_type) ON pod_features TO feature_labeller;
