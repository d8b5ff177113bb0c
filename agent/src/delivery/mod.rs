//! Getting every row to Postgres or counting why not: the writer thread and its states
//! (`writer/`) and the on-disk spool it falls back to (`spool/`).
pub mod spool;
pub mod writer;

use tracing::{info, warn};

use crate::daemon::config::RunArgs;
use spool::Spool;

/// Opens the spool: None (memory only) when disabled. A spool that cannot be opened now (a
/// full disk, a directory not yet writable) is handed to the writer to open later, rows waiting
/// in memory meanwhile. Another agent holding the same spool is an error: two writers would
/// corrupt it.
pub fn open_spool(args: &RunArgs) -> anyhow::Result<writer::SpoolSlot> {
    if args.spool_dir.as_os_str() == "off" {
        info!("no spool (--spool-dir off): rows wait in memory while the database is away");
        return Ok(writer::SpoolSlot::Off);
    }
    match Spool::open(&args.spool_dir, args.spool_max_bytes) {
        Ok(s) => {
            info!(dir = %args.spool_dir.display(), max_bytes = args.spool_max_bytes, pending = s.pending_rows(), "spool ready");
            Ok(writer::SpoolSlot::Open(Box::new(s)))
        }
        Err(e @ crate::delivery::spool::SpoolError::Locked { .. }) => Err(e.into()),
        Err(e) => {
            warn!(error = %e, "the spool cannot be used now; rows wait in memory (--queue-max-rows) and it is tried again every 5 s");
            Ok(writer::SpoolSlot::Later { dir: args.spool_dir.clone(), max_bytes: args.spool_max_bytes })
        }
    }
}
