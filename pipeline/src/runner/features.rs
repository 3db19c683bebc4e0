//! `features`: `kiln features SPEC --date D --json`; output: the examples dataset and the
//! SHA-256 of its committed manifest.

use std::sync::Arc;

use anyhow::Context;
use kiln_engine::JobSpec;
use serde_json::{Value as Json, json};

use super::ctx::{Ctx, Upstream, sha};
use super::objects::manifest_sha256;
use crate::dag::{Attempt, Task};
use crate::task::{TaskId, TaskKind, TaskPolicy};

const KIND: TaskKind = TaskKind::Features;
/// The `kiln` subcommand the task runs.
const COMMAND: &str = "features";

/// `features`: runs after every sensor.
pub(super) struct FeaturesTask {
    /// The run.
    pub ctx: Arc<Ctx>,
    /// The sensors.
    pub deps: Vec<TaskId>,
}

/// The spec without `[train]` and `[pipeline]`: what the feature step depends on.
fn features_spec_text(spec: &JobSpec) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(&spec.path)
        .with_context(|| format!("reading {}", spec.path.display()))?;
    let mut t: toml::Table = toml::from_str(&text)?;
    t.remove("train");
    t.remove("pipeline");
    Ok(toml::to_string(&t)?)
}

impl Task<TaskId> for FeaturesTask {
    fn name(&self) -> TaskId {
        KIND.into()
    }
    fn deps(&self) -> Vec<TaskId> {
        self.deps.clone()
    }
    fn policy(&self) -> TaskPolicy {
        self.ctx.policy(KIND)
    }
    fn fingerprint(&self, _: &Upstream) -> anyhow::Result<String> {
        let text = features_spec_text(&self.ctx.spec)?;
        let date = self.ctx.date();
        // The overrides' Debug text: an input to the hash (not a name), kept as earlier
        // versions wrote it so recorded fingerprints stay valid.
        let sources = format!("{:?}", self.ctx.sources);
        let mut parts = vec![
            KIND.as_str(),
            &text,
            &date,
            &sources,
            self.ctx.out.as_deref().unwrap_or(""),
            env!("CARGO_PKG_VERSION"),
        ];
        // Expectations files are checked at commit: editing one reruns the task. (Added only
        // when there is one, so other specs keep their recorded fingerprints.)
        let files = self
            .ctx
            .spec
            .outputs
            .iter()
            .filter(|o| o.expect_file.is_some())
            .map(|o| serde_json::to_string(&o.expect))
            .collect::<Result<Vec<_>, _>>()?
            .join("\n");
        if !files.is_empty() {
            parts.push(&files);
        }
        Ok(sha(&parts))
    }
    fn still_valid(&self, out: &Json) -> bool {
        match (out["examples"].as_str(), out["manifest_sha256"].as_str()) {
            (Some(loc), Some(want)) => manifest_sha256(loc).ok().flatten().as_deref() == Some(want),
            _ => false,
        }
    }
    fn run(&mut self, a: &Attempt, _: &Upstream) -> anyhow::Result<Json> {
        let mut args = vec![COMMAND.to_string()];
        args.extend(self.ctx.spec_args());
        args.push("--json".into());
        let report = self.ctx.child(KIND, args, a)?;
        let outputs = report["outputs"].as_array().cloned().unwrap_or_default();
        let examples = outputs
            .iter()
            .find(|o| o["statement"] == "examples")
            .or_else(|| (outputs.len() == 1).then(|| &outputs[0]))
            .with_context(|| {
                format!(
                    "{}: no `examples` output to train on",
                    self.ctx.spec.path.display()
                )
            })?;
        let location = examples["location"]
            .as_str()
            .context("features report without a location")?
            .to_string();
        let manifest = manifest_sha256(&location)?
            .with_context(|| format!("{location}: no committed _manifest.json after features"))?;
        Ok(json!({
            "examples": location,
            "manifest_sha256": manifest,
            "rows": examples["rows"],
            "shards": examples["shards"],
            "feature_run_id": report["run_id"],
            "inputs": report["inputs"],
            "outputs": outputs
                .iter()
                .map(|o| json!({"statement": o["statement"], "location": o["location"]}))
                .collect::<Vec<_>>(),
        }))
    }
}
