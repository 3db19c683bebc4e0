//! `sensor:<name>`: waits until a path (prefix or committed manifest) exists.

use std::time::Instant;

use anyhow::bail;
use serde_json::{Value as Json, json};

use super::ctx::{Upstream, sha};
use super::objects::{manifest_sha256, prefix_exists};
use crate::config::{SensorConfig, SensorKind};
use crate::dag::{Attempt, Task};
use crate::task::{TaskId, TaskPolicy};

/// `sensor:<name>`: polls every `poke_seconds` until its input appears or its timeout.
pub(super) struct SensorTask {
    /// The sensor as written.
    pub cfg: SensorConfig,
    /// Its path, rendered for the run date and made absolute.
    pub url: String,
}

/// The kind as earlier versions spelled it in the fingerprint (`Prefix`, `Manifest`): kept
/// so that recorded fingerprints stay valid.
fn fingerprint_kind(kind: SensorKind) -> &'static str {
    match kind {
        SensorKind::Prefix => "Prefix",
        SensorKind::Manifest => "Manifest",
    }
}

impl SensorTask {
    fn present(&self) -> anyhow::Result<bool> {
        match self.cfg.kind {
            SensorKind::Prefix => prefix_exists(&self.url),
            SensorKind::Manifest => Ok(manifest_sha256(&self.url)?.is_some()),
        }
    }
}

impl Task<TaskId> for SensorTask {
    fn name(&self) -> TaskId {
        TaskId::Sensor(self.cfg.name.clone())
    }
    fn deps(&self) -> Vec<TaskId> {
        Vec::new()
    }
    fn policy(&self) -> TaskPolicy {
        // The sensor's own timeout bounds the wait; retries follow the task defaults.
        TaskPolicy {
            retries: 0,
            backoff_seconds: 0.0,
            timeout_seconds: Some(self.cfg.timeout_seconds),
        }
    }
    fn fingerprint(&self, _: &Upstream) -> anyhow::Result<String> {
        Ok(sha(&["sensor", &self.url, fingerprint_kind(self.cfg.kind)]))
    }
    fn still_valid(&self, _: &Json) -> bool {
        self.present().unwrap_or(false)
    }
    fn run(&mut self, _: &Attempt, _: &Upstream) -> anyhow::Result<Json> {
        let start = Instant::now();
        let mut pokes = 0u64;
        loop {
            pokes += 1;
            if self.present()? {
                return Ok(json!({
                    "path": self.url,
                    "kind": self.cfg.kind,
                    "waited_seconds": start.elapsed().as_secs_f64(),
                    "pokes": pokes,
                }));
            }
            if start.elapsed().as_secs_f64() >= self.cfg.timeout_seconds {
                bail!(
                    "sensor `{}`: {} {} did not appear within {:.0} s ({pokes} checks every {} s)",
                    self.cfg.name,
                    match self.cfg.kind {
                        SensorKind::Prefix => "input",
                        SensorKind::Manifest => "the committed manifest of",
                    },
                    self.url,
                    self.cfg.timeout_seconds,
                    self.cfg.poke_seconds
                );
            }
            let left = self.cfg.timeout_seconds - start.elapsed().as_secs_f64();
            std::thread::sleep(crate::dag::seconds(self.cfg.poke_seconds.min(left)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fingerprints recorded by earlier versions still match (a rerun skips the sensor).
    #[test]
    fn fingerprint_is_unchanged() {
        for (kind, debug) in [
            (SensorKind::Prefix, "Prefix"),
            (SensorKind::Manifest, "Manifest"),
        ] {
            assert_eq!(fingerprint_kind(kind), debug);
            assert_eq!(fingerprint_kind(kind), format!("{kind:?}"));
        }
    }
}
