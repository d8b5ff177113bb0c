-- The agent judges every pod row against its workload's baseline, and the node row names the
-- pods it flagged. Pod rows get the workload the pod is an instance of (its name without the
-- controller's generated suffix) and the verdict (anomaly_score, anomalous_features, as the
-- node row's); node rows get the flagged pods and their workloads. Column meanings:
-- feature-schema/src/pods.rs and columns.rs, docs/detection.md. The analysis views are
-- regenerated after the migrations (migrations/generated/analysis.sql).

ALTER TABLE pod_features
    ADD COLUMN IF NOT EXISTS workload           text,
    ADD COLUMN IF NOT EXISTS anomaly_score      double precision,
    ADD COLUMN IF NOT EXISTS anomalous_features text[];

ALTER TABLE node_features
    ADD COLUMN IF NOT EXISTS anomalous_pods      text[],
    ADD COLUMN IF NOT EXISTS anomalous_workloads text[];

COMMENT ON COLUMN pod_features.workload IS 'namespace/name of what the pod is an instance of: its name without the controller''s generated suffix; a service''s unit; other';
COMMENT ON COLUMN node_features.anomalous_pods IS 'pods (namespace/pod) whose own rows the agent flagged in this interval, most anomalous first';
