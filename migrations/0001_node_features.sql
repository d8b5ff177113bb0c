-- node_features: one row per node per sampling interval (shared/spec/features.md).
-- The parent is partitioned by LIST (node): each node gets its own partition, created by
-- ensure_node_partition() on that node's first write: the paper's "table per node", still
-- queryable as one table.

CREATE TABLE IF NOT EXISTS node_features (
    node              text             NOT NULL,
    ts                timestamptz      NOT NULL,
    interval_s        double precision,
    attack            smallint         NOT NULL DEFAULT 0 CHECK (attack IN (0, 1)),
    attack_type       text,

    -- The 24 features of the reference paper (Table 1), cumulative counters as the kernel
    -- reports them; gauges as sampled.
    cpu_sec_idle      double precision,
    disk_av_per       double precision,
    disk_read         bigint,
    disk_write        bigint,
    net_receive       bigint,
    mem_pressure      bigint,
    mem_av_per        double precision,
    forks_total       bigint,
    intr              bigint,
    load1             double precision,
    load5             double precision,
    load15            double precision,
    receive_drop      bigint,
    receive_errs      bigint,
    transmit_packets  bigint,
    tcp_sock_alloc    integer,
    tcp_sock_inuse    integer,
    tcp_sock_mem      integer,
    udp_sock_inuse    integer,
    udp_sock_mem      integer,
    ipv4_sock_inuse   integer,
    est_conn          integer,
    lis_conn          integer,
    open_fds          bigint,

    -- Exact kernel event counts during this row's interval (deltas), counted by eBPF.
    -- NULL when the program behind the column is not loaded, and on the first row after start.
    ebpf_forks        bigint,
    ebpf_execs        bigint,
    ebpf_exits        bigint,
    tcp_to_est        bigint,
    tcp_to_syn_sent   bigint,
    tcp_to_syn_recv   bigint,
    tcp_to_close      bigint,
    tcp_to_listen     bigint,
    tcp_conn_failed   bigint,
    tcp_rst_sent      bigint,
    tcp_rst_recv      bigint,
    sock_alloc_tcp    bigint,
    sock_alloc_udp    bigint,
    sock_alloc_unix   bigint,
    sock_alloc_raw    bigint,
    sock_alloc_other  bigint,

    PRIMARY KEY (node, ts)
) PARTITION BY LIST (node);

COMMENT ON TABLE node_features IS
    'One row per node per interval, written by feature-agent; see README "Schema".';
COMMENT ON COLUMN node_features.attack IS '0 = normal, 1 = attack; set by labelling tools, never by the agent';

-- The partition's table name: a readable, sanitised prefix of the node name plus a hash of the
-- whole name, so distinct nodes never share a partition and any node name gives a valid,
-- bounded identifier. The node name itself only ever reaches SQL as a parameter or via %L.
CREATE OR REPLACE FUNCTION node_features_partition_name(node_name text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT 'node_features_'
        || left(trim(both '_' from regexp_replace(lower(node_name), '[^a-z0-9]+', '_', 'g')), 32)
        || '_' || left(md5(node_name), 16)
$$;

-- Creates the node's partition if it does not exist yet; returns its name. Safe to call from
-- several agents of the same node at once.
CREATE OR REPLACE FUNCTION ensure_node_partition(node_name text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    part text := node_features_partition_name(node_name);
BEGIN
    IF node_name IS NULL OR node_name = '' THEN
        RAISE EXCEPTION 'node name must not be empty';
    END IF;
    IF to_regclass(quote_ident(part)) IS NULL THEN
        BEGIN
            EXECUTE format('CREATE TABLE %I PARTITION OF node_features FOR VALUES IN (%L)', part, node_name);
        EXCEPTION WHEN duplicate_table OR unique_violation THEN
            NULL; -- another agent of the same node created it first
        END;
    END IF;
    RETURN part;
END
$$;
