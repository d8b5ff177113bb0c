//! Stopping the writer thread within the promised time. Closing its channel starts its drain
//! (--shutdown-timeout). A second SIGTERM or SIGINT ends it at once (what is in memory is
//! spooled, or counted); so does the timeout itself passing with a margin, should the writer be
//! stuck in a call that ignores it. A writer that does not stop even then (a disk that never
//! returns from fdatasync) is left behind: the process exits without it.
use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use tokio::sync::watch;
use tracing::{error, warn};

use crate::{
    daemon::{metrics::Metrics, signals::Signals},
    delivery::writer::WriterReport,
};

/// How long a stopping writer has after being told to stop now before the process leaves it.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What the writer thread returned, once it has stopped.
pub type Joined = Result<std::thread::Result<anyhow::Result<WriterReport>>, tokio::task::JoinError>;

/// Waits for the writer (whose channel the caller has closed) to finish its drain, telling it
/// to stop now on a second signal or when the drain overruns `shutdown_timeout`.
pub async fn stop_writer(
    writer: std::thread::JoinHandle<anyhow::Result<WriterReport>>,
    signals: &mut Signals,
    stop_now: watch::Sender<bool>,
    shutdown_timeout: Duration,
    metrics: &Metrics,
) -> Joined {
    let mut join = tokio::task::spawn_blocking(move || writer.join());
    let backstop = tokio::time::sleep(shutdown_timeout + STOP_GRACE);
    tokio::pin!(backstop);
    let mut abandon_at: Option<tokio::time::Instant> = None;
    loop {
        let abandon = async {
            match abandon_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut join => break r,
            s = signals.next() => {
                warn!(signal = s, "second signal: stopping now; rows not yet in the database go to the spool");
                let _ = stop_now.send(true);
                abandon_at.get_or_insert(tokio::time::Instant::now() + STOP_GRACE);
            }
            () = &mut backstop, if !*stop_now.borrow() => {
                warn!("the writer did not finish within --shutdown-timeout; stopping it now");
                let _ = stop_now.send(true);
                abandon_at.get_or_insert(tokio::time::Instant::now() + STOP_GRACE);
            }
            () = abandon => {
                error!(
                    in_memory = metrics.rows_queued.load(Relaxed),
                    "the writer did not stop (stuck in the disk?); exiting without it: the rows it held in memory are lost"
                );
                // The runtime would wait for the stuck thread on its way out: leave at once.
                std::process::exit(1);
            }
        }
    }
}
