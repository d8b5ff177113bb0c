//! The detectors' baselines across restarts: started from the state file when it is usable
//! (`start_detectors`), saved every minute on a thread of its own and once more at the stop
//! (`StateSaver`), so a slow or hung disk delays neither the samples nor the stop. The file's
//! format is detector_state.rs.
use std::{
    path::PathBuf,
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant, SystemTime},
};

use tracing::{info, warn};

use crate::{
    daemon::{config::SamplingArgs, metrics::Metrics},
    judging::{
        detector::{Baselines, Detector, DetectorOptions},
        detector_state::{self, DetectorState, StateError},
        pod_detector::PodDetector,
    },
};

/// How often the detector's state file is saved while running (and once more at stop).
const STATE_SAVE_EVERY: Duration = Duration::from_secs(60);

/// How long a stopping agent waits for the detector state's last save (a disk that hangs
/// must not hang the stop).
const STATE_SAVE_AT_STOP: Duration = Duration::from_secs(2);

/// The node's and the workloads' detectors, started from the state file when it is usable.
pub fn start_detectors(
    args: &SamplingArgs,
    node: &str,
    state_file: Option<&std::path::Path>,
    now: SystemTime,
) -> (Detector, PodDetector) {
    let options = args.detector.options(args.interval);
    let mut detector = Detector::new(options);
    let mut pods = PodDetector::new(options, args.detector.pod_baselines as usize);
    let Some(path) = state_file else { return (detector, pods) };
    match detector_state::load(path, node, args.interval, now) {
        Ok(state) => {
            let node_warm = state.node.is_some();
            if let Some(saved) = state.node {
                detector = Detector::with_baselines(
                    options,
                    Baselines::restored(&feature_schema::FEATURES, "node", &options, &saved),
                );
            }
            let workloads = state.workloads.len();
            pods.restore(state.workloads);
            info!(file = %path.display(), node_warm, workloads, "detector baselines restored: known workloads are judged from the first interval");
        }
        Err(StateError::Missing) => {
            info!(file = %path.display(), "no detector state yet: the detector warms up (--detector-warmup)");
        }
        Err(e) => {
            warn!(file = %path.display(), reason = %e, "the detector state is not used: the detector warms up (--detector-warmup)");
        }
    }
    (detector, pods)
}

/// Saves the detector state every [`STATE_SAVE_EVERY`] on a thread of its own, so a slow or
/// hung disk delays neither the samples nor the stop.
pub struct StateSaver {
    path: Option<PathBuf>,
    node: String,
    interval_s: f64,
    due: Instant,
    saving: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    failing: bool,
}

impl StateSaver {
    pub fn new(path: Option<PathBuf>, node: &str, interval_s: f64) -> Self {
        Self {
            path,
            node: node.to_owned(),
            interval_s,
            due: Instant::now() + STATE_SAVE_EVERY,
            saving: None,
            failing: false,
        }
    }

    pub fn snapshot(options: &DetectorOptions, detector: &Detector, pods: &PodDetector) -> DetectorState {
        let owned = |v: Vec<(&'static str, crate::judging::detector::Baseline)>| {
            v.into_iter().map(|(c, b)| (c.to_owned(), b)).collect()
        };
        DetectorState {
            node: detector.baselines.is_warm(options).then(|| owned(detector.baselines.saved())),
            workloads: pods.saved().into_iter().map(|(w, b)| (w, owned(b))).collect(),
        }
    }

    /// Collects a finished save's result.
    fn collect(&mut self, metrics: &Metrics) {
        let Some(handle) = self.saving.take_if(|h| h.is_finished()) else { return };
        match handle.join() {
            Ok(Ok(())) => self.failing = false,
            Ok(Err(e)) => {
                metrics.detector_state_save_failures.fetch_add(1, Relaxed);
                if !std::mem::replace(&mut self.failing, true) {
                    warn!(file = ?self.path, error = %e, "cannot save the detector state; a restart will warm up again");
                }
            }
            Err(_) => {
                metrics.detector_state_save_failures.fetch_add(1, Relaxed);
            }
        }
    }

    fn start(&mut self, state: &DetectorState, now: SystemTime) {
        let Some(path) = self.path.clone() else { return };
        let bytes = detector_state::encode(state, &self.node, self.interval_s, now);
        self.saving = std::thread::Builder::new()
            .name("detector-state".into())
            .spawn(move || detector_state::save(&path, &bytes))
            .ok();
    }

    /// Saves when due and the previous save has finished.
    pub fn tick(&mut self, metrics: &Metrics, state: impl FnOnce() -> DetectorState, now: SystemTime) {
        self.collect(metrics);
        if self.path.is_none() || self.saving.is_some() || Instant::now() < self.due {
            return;
        }
        self.due = Instant::now() + STATE_SAVE_EVERY;
        self.start(&state(), now);
    }

    /// The last save, at stop: waited for at most [`STATE_SAVE_AT_STOP`].
    pub async fn finish(&mut self, metrics: &Metrics, state: DetectorState, now: SystemTime) {
        if self.path.is_none() {
            return;
        }
        let deadline = Instant::now() + STATE_SAVE_AT_STOP;
        while self.saving.is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.collect(metrics);
        }
        if self.saving.is_none() {
            self.start(&state, now);
        }
        while self.saving.is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.collect(metrics);
        }
        if self.saving.is_some() {
            metrics.detector_state_save_failures.fetch_add(1, Relaxed);
            warn!(file = ?self.path, "the detector state's last save did not finish in time; the file keeps its previous state");
        } else {
            info!(file = ?self.path, "detector state saved");
        }
    }
}
