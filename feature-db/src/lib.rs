//! What both binaries (the `feature-agent` daemon and the `feature-lab` research tools) need of
//! the database: its options ([`args`]), connecting with TLS and clear errors ([`connect`]), and
//! the schema ([`migrate`]: the numbered migrations in migrations/, found by build.rs, and the
//! SQL generated from the column declaration), and the binaries' shared entry point
//! ([`entry::main`]: arguments, logging, runtime, exit status).
pub mod args;
pub mod connect;
pub mod deadline;
pub mod migrate;

pub use args::{
    boolish, parse_interval, parse_positive, refuse_secrets_on_command_line, validate_node_name, DatabaseArgs,
    NodeArgs, NODE_NAME_MAX_BYTES,
};
pub use connect::{connect, describe, ensure_day_partitions, open, tls_connector, utc_day, Target};
