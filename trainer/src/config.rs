//! Training configuration: the job spec's `[train]` table.

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::device::ComputeDevice;

/// Which model to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Logistic regression: a linear model over hashed categoricals and numeric features.
    Logistic,
    /// Embeddings + numeric features into an MLP.
    Mlp,
    /// Wide (linear over hashed categoricals) plus deep (embeddings + numeric into an MLP).
    #[default]
    WideDeep,
}

/// How a categorical column becomes ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoricalFeature {
    /// Column name in the dataset (integer or string column).
    pub column: String,
    /// Hash the value (xxh3 of its canonical bytes) into this many buckets.
    #[serde(default)]
    pub hash_buckets: Option<u64>,
    /// Build a vocabulary from the training rows instead of hashing.
    #[serde(default)]
    pub vocabulary: Option<VocabularyConfig>,
}

/// Vocabulary built from the training rows: values seen at least `min_count` times, the
/// `max_size` most frequent (ties by value); everything else maps to the out-of-vocabulary id 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VocabularyConfig {
    /// Minimum number of training rows a value must appear in.
    #[serde(default = "one")]
    pub min_count: u64,
    /// Maximum number of values kept.
    #[serde(default = "default_vocab_size")]
    pub max_size: usize,
}

/// Optimizer of all parameters (embeddings use the lazy variant by default: only touched rows
/// move).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum OptimizerConfig {
    /// Adam (lazy on embedding rows, like TF's LazyAdam, unless `lazy = false`).
    Adam {
        /// Base learning rate.
        #[serde(default = "default_adam_lr")]
        lr: f64,
        /// First-moment decay.
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// Second-moment decay.
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Denominator epsilon.
        #[serde(default = "default_eps")]
        epsilon: f64,
        /// Embedding rows: `true` (default) moves only the rows a step touched, like TF's
        /// LazyAdam; `false` is Keras's plain Adam, whose moments decay and whose update
        /// applies to every row at every step (slower: the whole tables each step).
        #[serde(default = "default_true")]
        lazy: bool,
    },
    /// SGD with (heavy-ball) momentum.
    Sgd {
        /// Base learning rate.
        #[serde(default = "default_sgd_lr")]
        lr: f64,
        /// Momentum (0 = plain SGD).
        #[serde(default)]
        momentum: f64,
    },
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig::Adam {
            lr: default_adam_lr(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            epsilon: default_eps(),
            lazy: true,
        }
    }
}

impl OptimizerConfig {
    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Adam { lr, .. } | OptimizerConfig::Sgd { lr, .. } => *lr,
        }
    }
}

/// Shape of the decay after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DecayKind {
    /// Linear from the base rate to `final_fraction * base` at the last step.
    #[default]
    Linear,
    /// Half cosine from the base rate to `final_fraction * base` at the last step.
    Cosine,
}

/// Learning-rate schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    /// The base rate at every step.
    #[default]
    Constant,
    /// Linear warmup from 0 over `warmup_steps`, then decay to `final_fraction * base`.
    WarmupDecay {
        /// Steps of linear warmup.
        #[serde(default)]
        warmup_steps: u64,
        /// Decay shape.
        #[serde(default)]
        decay: DecayKind,
        /// Final rate as a fraction of the base rate.
        #[serde(default)]
        final_fraction: f64,
    },
}

impl LrSchedule {
    /// Multiplier of the base rate at 0-based `step` of `total` steps.
    pub fn factor(&self, step: u64, total: u64) -> f64 {
        match self {
            LrSchedule::Constant => 1.0,
            LrSchedule::WarmupDecay {
                warmup_steps,
                decay,
                final_fraction,
            } => {
                if step < *warmup_steps {
                    return (step + 1) as f64 / *warmup_steps as f64;
                }
                let span = total.saturating_sub(*warmup_steps).max(1) as f64;
                let t = ((step - warmup_steps) as f64 / span).clamp(0.0, 1.0);
                let shape = match decay {
                    DecayKind::Linear => 1.0 - t,
                    DecayKind::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
                };
                final_fraction + (1.0 - final_fraction) * shape
            }
        }
    }
}

/// Which rows are held out for evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, tag = "by", rename_all = "snake_case")]
pub enum EvalSplit {
    /// No held-out split: every row trains, no metrics.
    #[default]
    None,
    /// Rows whose key hashes (xxh3 of the canonical bytes) into the first `fraction` of
    /// 1,000,000 slots are held out.
    Hash {
        /// Key column (integer or string).
        key: String,
        /// Held-out fraction in (0, 1).
        fraction: f64,
    },
    /// Rows with `column >= cutoff` are held out. `cutoff` is an RFC 3339 time or a date
    /// (`YYYY-MM-DD`) for timestamp columns, or an integer for integer columns.
    Time {
        /// Time (or integer) column.
        column: String,
        /// First held-out value.
        cutoff: String,
    },
}

/// The `[train]` table of a job spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Model family.
    #[serde(default)]
    pub model: ModelKind,
    /// Label column (0/1, integer or float).
    #[serde(default = "default_label")]
    pub label: String,
    /// Categorical columns (embedded in the deep part, linear in the wide part).
    #[serde(default)]
    pub categorical: Vec<CategoricalFeature>,
    /// Numeric columns (normalised with training mean/std; null -> 0 plus an is-null input).
    #[serde(default)]
    pub numeric: Vec<String>,
    /// Embedding width of every categorical column.
    #[serde(default = "default_embedding_dim")]
    pub embedding_dim: usize,
    /// Hidden layer widths of the MLP (ReLU); the output layer (1) is implied.
    #[serde(default = "default_hidden")]
    pub hidden: Vec<usize>,
    /// Optimizer.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Global batch size (split evenly over the workers).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Passes over the training rows (ignored when `steps` is set). Default 1.
    #[serde(default)]
    pub epochs: Option<u64>,
    /// Exact number of optimizer steps.
    #[serde(default)]
    pub steps: Option<u64>,
    /// Seed of initialisation, shard order and shuffling.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Held-out split.
    #[serde(default)]
    pub eval: EvalSplit,
    /// Checkpoint every K steps (0 = only at the end).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Compare a parameter checksum across ranks every K steps (0 = only at the end).
    #[serde(default = "default_checksum_every")]
    pub checksum_every: u64,
    /// Rows in each worker's shuffle buffer.
    #[serde(default = "default_shuffle_buffer")]
    pub shuffle_buffer: usize,
    /// Batches decoded ahead of the training step.
    #[serde(default = "default_read_ahead")]
    pub read_ahead: usize,
    /// Log progress every K steps.
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Device of the dense network: `cpu` (default), `cuda[:N]`, `wgpu[:N]` (GPU builds).
    #[serde(default)]
    pub device: ComputeDevice,
}

impl Default for TrainConfig {
    fn default() -> Self {
        toml_default()
    }
}

fn toml_default() -> TrainConfig {
    TrainConfig {
        model: ModelKind::default(),
        label: default_label(),
        categorical: Vec::new(),
        numeric: Vec::new(),
        embedding_dim: default_embedding_dim(),
        hidden: default_hidden(),
        optimizer: OptimizerConfig::default(),
        lr_schedule: LrSchedule::default(),
        batch_size: default_batch(),
        epochs: None,
        steps: None,
        seed: default_seed(),
        eval: EvalSplit::default(),
        checkpoint_every: default_checkpoint_every(),
        checksum_every: default_checksum_every(),
        shuffle_buffer: default_shuffle_buffer(),
        read_ahead: default_read_ahead(),
        log_every: default_log_every(),
        device: ComputeDevice::default(),
    }
}

impl TrainConfig {
    /// Checks the values that serde cannot.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if self.categorical.is_empty() && self.numeric.is_empty() {
            return bad("[train] needs at least one categorical or numeric column".into());
        }
        for c in &self.categorical {
            match (&c.hash_buckets, &c.vocabulary) {
                (Some(0), _) => {
                    return bad(format!(
                        "[train] categorical `{}`: hash_buckets must be > 0",
                        c.column
                    ));
                }
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return bad(format!(
                        "[train] categorical `{}`: set exactly one of hash_buckets or vocabulary",
                        c.column
                    ));
                }
            }
        }
        // Every column owns `hash_buckets + 1` table rows (the extra one for null), or at
        // least one (out of vocabulary) for a vocabulary; row ids are u32.
        let rows: u128 = self
            .categorical
            .iter()
            .map(|c| c.hash_buckets.map_or(1, |b| u128::from(b) + 1))
            .sum();
        if rows > crate::transform::MAX_TABLE_ROWS {
            let buckets: Vec<String> = self
                .categorical
                .iter()
                .filter_map(|c| c.hash_buckets.map(|b| format!("`{}`: {b}", c.column)))
                .collect();
            return bad(format!(
                "[train] categorical hash_buckets add up to {rows} embedding-table rows (one \
                 more per column, for null) over {} columns ({}): more than the 2^32 ids a \
                 table row id addresses, so ids would alias; lower hash_buckets",
                self.categorical.len(),
                buckets.join(", ")
            ));
        }
        if self.model != ModelKind::Logistic
            && !self.categorical.is_empty()
            && self.embedding_dim == 0
        {
            return bad("[train] embedding_dim must be > 0".into());
        }
        if self.hidden.contains(&0) {
            return bad("[train] hidden layer widths must be > 0".into());
        }
        if self.batch_size == 0 {
            return bad("[train] batch_size must be > 0".into());
        }
        if self.steps == Some(0) || self.epochs == Some(0) {
            return bad("[train] steps/epochs must be > 0".into());
        }
        if self.optimizer.lr() <= 0.0 || !self.optimizer.lr().is_finite() {
            return bad("[train] optimizer.lr must be a positive number".into());
        }
        if let EvalSplit::Hash { fraction, .. } = &self.eval
            && !(*fraction > 0.0 && *fraction < 1.0)
        {
            return bad(format!(
                "[train] eval.fraction must be in (0, 1), got {fraction}"
            ));
        }
        if self.shuffle_buffer == 0 || self.read_ahead == 0 {
            return bad("[train] shuffle_buffer and read_ahead must be > 0".into());
        }
        Ok(())
    }
}

/// Keys of the `[train]` table that do not change what a run computes (progress output,
/// read-ahead, how often to checkpoint or compare checksums, the device of the dense
/// network): `--resume` may change them.
pub const RESUMABLE_KEYS: [&str; 5] = [
    "log_every",
    "read_ahead",
    "checkpoint_every",
    "checksum_every",
    "device",
];

impl TrainConfig {
    /// The settings that shape a run (every key but [`RESUMABLE_KEYS`]) as a JSON object,
    /// and the SHA-256 (hex) of its canonical bytes (keys sorted). A checkpoint records both,
    /// so `--resume` can say which keys changed.
    pub fn run_fingerprint(&self) -> (serde_json::Value, String) {
        let mut v = serde_json::to_value(self).expect("a config serialises to JSON");
        if let Some(o) = v.as_object_mut() {
            for k in RESUMABLE_KEYS {
                o.remove(k);
            }
        }
        let hash = sha256_hex(canonical_json(&v).as_bytes());
        (v, hash)
    }
}

/// JSON text with every object's keys in sorted order (whatever map serde_json is built with).
pub(crate) fn canonical_json(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&o[k])))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => {
            let parts: Vec<String> = a.iter().map(canonical_json).collect();
            format!("[{}]", parts.join(","))
        }
        v => v.to_string(),
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

fn one() -> u64 {
    1
}
fn default_vocab_size() -> usize {
    100_000
}
fn default_adam_lr() -> f64 {
    1e-3
}
fn default_sgd_lr() -> f64 {
    0.05
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_true() -> bool {
    true
}
fn default_eps() -> f64 {
    1e-7
}
fn default_label() -> String {
    "label".into()
}
fn default_embedding_dim() -> usize {
    16
}
fn default_hidden() -> Vec<usize> {
    vec![256, 128]
}
fn default_batch() -> usize {
    1024
}
fn default_seed() -> u64 {
    42
}
fn default_checkpoint_every() -> u64 {
    1000
}
fn default_checksum_every() -> u64 {
    100
}
fn default_shuffle_buffer() -> usize {
    16_384
}
fn default_read_ahead() -> usize {
    8
}
fn default_log_every() -> u64 {
    100
}
