-- Pod rows get the pod's own network: whether it has a network namespace of its own (network =
-- 'own') or shares the host's ('host': hostNetwork pods and services), and, for its own, the
-- namespace's interface counters (cumulative, summed over its interfaces but lo, read through
-- one of its processes' /proc/<pid>/net/dev) and its established and listening TCP sockets
-- (the eBPF balance of that namespace, seeded from its own table). Column meanings:
-- feature-schema/src/pods.rs, docs/pod-rows.md. The analysis views are regenerated after the
-- migrations (migrations/generated/analysis.sql).

ALTER TABLE pod_features
    ADD COLUMN IF NOT EXISTS network          text CHECK (network IN ('own', 'host')),
    ADD COLUMN IF NOT EXISTS net_receive      bigint,
    ADD COLUMN IF NOT EXISTS receive_packets  bigint,
    ADD COLUMN IF NOT EXISTS receive_drop     bigint,
    ADD COLUMN IF NOT EXISTS receive_errs     bigint,
    ADD COLUMN IF NOT EXISTS net_transmit     bigint,
    ADD COLUMN IF NOT EXISTS transmit_packets bigint,
    ADD COLUMN IF NOT EXISTS est_conn         bigint,
    ADD COLUMN IF NOT EXISTS lis_conn         bigint;

COMMENT ON COLUMN pod_features.network IS 'own: the pod has its own network namespace, which its network columns describe; host: it shares the host''s (its network columns are NULL)';
