-- Three columns from /proc/stat, which the agent already reads each interval: threads runnable
-- and blocked at the sample (gauges), and context switches since boot (a counter). NULL in rows
-- written before this migration. The views pick them up from the generated SQL.
ALTER TABLE node_features
    ADD COLUMN IF NOT EXISTS procs_running integer,
    ADD COLUMN IF NOT EXISTS procs_blocked integer,
    ADD COLUMN IF NOT EXISTS ctxt          bigint;
