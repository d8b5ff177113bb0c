-- Hands the column-listing part of the analysis layer to generated SQL. From this release on,
-- the feature catalog's rows and the views node_feature_deltas and node_feature_values come from
-- migrations/generated/analysis.sql, which `cargo xtask gen` writes from the one declaration of
-- the row (feature-schema/src/columns.rs) and `feature-agent migrate` re-applies, after the
-- numbered migrations, whenever it changes. Before, node_feature_deltas was `SELECT f.*`, which
-- Postgres expands when the view is created: a column added later never reached the views.
--
-- schema_generated records the generated SQL last applied, so migrate (and every agent at
-- start) can tell whether the database's views match the binary's declaration.
CREATE TABLE IF NOT EXISTS schema_generated (
    name       text PRIMARY KEY,
    sql        text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT ON schema_generated TO feature_writer, feature_labeller, feature_reader;

-- The catalog says what a feature is, not only how it is scored.
ALTER TABLE feature_catalog
    ADD COLUMN IF NOT EXISTS min_spread double precision,
    ADD COLUMN IF NOT EXISTS unit       text,
    ADD COLUMN IF NOT EXISTS meaning    text;
COMMENT ON COLUMN feature_catalog.min_spread IS
    'the smallest change of the scored value that counts: the agent detector''s spread floor';
