-- One more exact kernel count, on node and pod rows: ebpf_folios_dirtied, the page-cache folios
-- that file writes made dirty during the interval (writeback:writeback_dirty_folio, counted in
-- the writing task's context). A pod's disk writes show in its own row even where its cgroup has
-- no io controller (cgroup v1 hosts, where io_write_bytes is NULL), and the node row's count is
-- the sum of its pod rows'. NULL in rows written before this migration, and where the hook
-- cannot attach. The analysis views pick the column up from the generated SQL.
ALTER TABLE node_features ADD COLUMN IF NOT EXISTS ebpf_folios_dirtied bigint;
ALTER TABLE pod_features ADD COLUMN IF NOT EXISTS ebpf_folios_dirtied bigint;
