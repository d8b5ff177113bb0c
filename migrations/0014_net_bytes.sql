-- Every byte a pod sends, counted in the kernel, on node and pod rows: twelve exact counts per
-- interval from cgroup socket-buffer programs (the agent's --count-bytes), bytes and packets in
-- each direction, split by where the peer is: this node (loopback, the node's own addresses,
-- its pod range), the cluster's pod and service ranges, or outside. They are counted under the
-- socket owner's cgroup, so a pod that lives less than an interval keeps its bytes and a
-- hostNetwork pod has its own; the node row's counts are the sum of its pod rows'. NULL in rows
-- written before this migration and without --count-bytes. The paper's net_receive and
-- net_transmit stay /proc/net/dev's. The analysis views pick the columns up from the generated
-- SQL.
ALTER TABLE node_features
    ADD COLUMN IF NOT EXISTS tx_node_bytes bigint,
    ADD COLUMN IF NOT EXISTS tx_node_packets bigint,
    ADD COLUMN IF NOT EXISTS tx_cluster_bytes bigint,
    ADD COLUMN IF NOT EXISTS tx_cluster_packets bigint,
    ADD COLUMN IF NOT EXISTS tx_outside_bytes bigint,
    ADD COLUMN IF NOT EXISTS tx_outside_packets bigint,
    ADD COLUMN IF NOT EXISTS rx_node_bytes bigint,
    ADD COLUMN IF NOT EXISTS rx_node_packets bigint,
    ADD COLUMN IF NOT EXISTS rx_cluster_bytes bigint,
    ADD COLUMN IF NOT EXISTS rx_cluster_packets bigint,
    ADD COLUMN IF NOT EXISTS rx_outside_bytes bigint,
    ADD COLUMN IF NOT EXISTS rx_outside_packets bigint;
ALTER TABLE pod_features
    ADD COLUMN IF NOT EXISTS tx_node_bytes bigint,
    ADD COLUMN IF NOT EXISTS tx_node_packets bigint,
    ADD COLUMN IF NOT EXISTS tx_cluster_bytes bigint,
    ADD COLUMN IF NOT EXISTS tx_cluster_packets bigint,
    ADD COLUMN IF NOT EXISTS tx_outside_bytes bigint,
    ADD COLUMN IF NOT EXISTS tx_outside_packets bigint,
    ADD COLUMN IF NOT EXISTS rx_node_bytes bigint,
    ADD COLUMN IF NOT EXISTS rx_node_packets bigint,
    ADD COLUMN IF NOT EXISTS rx_cluster_bytes bigint,
    ADD COLUMN IF NOT EXISTS rx_cluster_packets bigint,
    ADD COLUMN IF NOT EXISTS rx_outside_bytes bigint,
    ADD COLUMN IF NOT EXISTS rx_outside_packets bigint;
