//! Deterministic synthetic e-commerce click log: the generative model behind `kiln gen events`.
//!
//! The model is documented in `docs/generator.md`; the constants in [`Model`] are the ones
//! quoted there. In short: sessions of views by Zipf-popular users over Zipf-popular items,
//! with diurnal start times; every view is clicked with
//! `p = sigmoid(b0 + a_user + b_item + hour + device + price + dwell)` where the user and item
//! latents are derived from `(seed, id)` and so persist across days; clicks may lead to a cart
//! and a purchase.
//!
//! Determinism: day `d` draws from its own ChaCha8 stream (`seed`, stream = days since
//! 0001-01-01 of `d`), the latents are pure hashes of `(seed, id)`, and the parquet writer
//! writes no timestamps, so the same arguments give the same bytes whatever the thread count.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{Datelike, NaiveDate};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// The default last day of the generated range (the example job's run date).
pub const DEFAULT_END_DATE: &str = "2026-11-21";

/// The `created_by` string written into every parquet footer (fixed, for identical bytes).
pub const PARQUET_CREATED_BY: &str = "kiln gen events (parquet-rs 59)";

/// Rows per Arrow batch and per parquet row group.
const BATCH_ROWS: usize = 128 * 1024;

const US_PER_SEC: i64 = 1_000_000;
const US_PER_HOUR: i64 = 3_600 * US_PER_SEC;
const US_PER_DAY: i64 = 24 * US_PER_HOUR;
/// The example job's label window: a click within `(view.ts, view.ts + 30 min]`.
pub const LABEL_WINDOW_US: i64 = 30 * 60 * US_PER_SEC;

/// Values of `event_type`.
pub const EVENT_TYPES: [&str; 4] = ["view", "click", "cart", "purchase"];
/// Values of `device`.
pub const DEVICES: [&str; 3] = ["mobile", "desktop", "tablet"];
/// Values of `city` (when not NULL); earlier cities are more common.
pub const CITIES: [&str; 24] = [
    "London",
    "Paris",
    "Berlin",
    "Madrid",
    "New York",
    "Chicago",
    "San Francisco",
    "Toronto",
    "Sao Paulo",
    "Mexico City",
    "Tokyo",
    "Seoul",
    "Singapore",
    "Sydney",
    "Mumbai",
    "Amsterdam",
    "Stockholm",
    "Warsaw",
    "Milan",
    "Lisbon",
    "Dublin",
    "Vienna",
    "Zurich",
    "Austin",
];

const VIEW: u8 = 0;
const CLICK: u8 = 1;
const CART: u8 = 2;
const PURCHASE: u8 = 3;
const NO_CITY: u16 = u16::MAX;

/// Output file format of the generated events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Apache Parquet, snappy, 128Ki-row row groups.
    Parquet,
    /// CSV with a header line; timestamps in RFC 3339, NULL as an empty field.
    Csv,
    /// One JSON object per line; NULLs written explicitly.
    Jsonl,
}

impl Format {
    /// File name extension (without dot).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }
}

/// Errors of the generator; each names the file or option concerned.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// An option value is out of range.
    #[error("invalid option {option}: {message}")]
    InvalidOption {
        /// The command-line option, e.g. `--rows`.
        option: &'static str,
        /// What was expected.
        message: String,
    },
    /// Writing, listing or deleting an output file failed.
    #[error("{op} {location}: {message}")]
    Io {
        /// What was attempted (write, list, delete, encode).
        op: &'static str,
        /// The file or directory (URL or path).
        location: String,
        /// The underlying error.
        message: String,
    },
}

/// Where generated files go: a local directory or an object store prefix.
pub trait Sink: Sync {
    /// Writes `data` to `rel` (e.g. `dt=2026-11-21/part-00000.parquet`) atomically.
    fn put(&self, rel: &str, data: Vec<u8>) -> Result<(), GenError>;
    /// File names (not paths) directly inside directory `rel_dir`; empty if it does not exist.
    fn list(&self, rel_dir: &str) -> Result<Vec<String>, GenError>;
    /// Deletes file `rel`.
    fn delete(&self, rel: &str) -> Result<(), GenError>;
    /// The full location of `rel`, for messages.
    fn describe(&self, rel: &str) -> String;
}

/// A [`Sink`] on the local filesystem: each file is written to a temporary name and renamed.
pub struct LocalSink {
    root: PathBuf,
}

impl LocalSink {
    /// A sink writing under directory `root` (created as needed).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn io(op: &'static str, path: &Path, e: std::io::Error) -> GenError {
        GenError::Io {
            op,
            location: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

impl Sink for LocalSink {
    fn put(&self, rel: &str, data: Vec<u8>) -> Result<(), GenError> {
        let path = self.root.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Self::io("create directory", dir, e))?;
        }
        let tmp = path.with_file_name(format!(
            ".{}.tmp-{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("part"),
            std::process::id()
        ));
        let mut f = std::fs::File::create(&tmp).map_err(|e| Self::io("create", &tmp, e))?;
        f.write_all(&data).map_err(|e| Self::io("write", &tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(|e| Self::io("rename into", &path, e))
    }

    fn list(&self, rel_dir: &str) -> Result<Vec<String>, GenError> {
        let dir = self.root.join(rel_dir);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Self::io("list", &dir, e)),
        };
        let mut names = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| Self::io("list", &dir, e))?;
            if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn delete(&self, rel: &str) -> Result<(), GenError> {
        let path = self.root.join(rel);
        std::fs::remove_file(&path).map_err(|e| Self::io("delete", &path, e))
    }

    fn describe(&self, rel: &str) -> String {
        self.root.join(rel).display().to_string()
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// Total number of events over all days (exact).
    pub rows: u64,
    /// Number of days, ending at `end_date` inclusive.
    pub days: u32,
    /// Seed of every random choice.
    pub seed: u64,
    /// The last day generated.
    pub end_date: NaiveDate,
    /// Files per day partition.
    pub files_per_day: u32,
    /// Output format.
    pub format: Format,
    /// Number of distinct user ids (popularity is Zipf-like over them).
    pub users: u64,
    /// Number of distinct item ids (popularity is Zipf-like over them).
    pub items: u64,
    /// Worker threads (days are generated in parallel); 0 = available parallelism.
    pub threads: usize,
    /// Keep `(event_id, p_click)` of every view for [`GenReport::truth`].
    pub keep_truth: bool,
    /// The day whose views the ceiling AUC is computed on (default: [`Self::ceiling_day`]).
    pub ceiling_date: Option<NaiveDate>,
    /// Defects planted on single days, to test data validation (none by default).
    pub plants: Vec<Plant>,
}

/// A defect planted on one day of generated events ([`GenConfig::plants`]), so that data
/// validation can be tested against a known drift or breakage. Which events it touches is a
/// hash of the event (seed, time, user, item), so the other days stay byte-identical to an
/// unplanted run and the planted day is reproducible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plant {
    /// What changes.
    pub kind: PlantKind,
    /// The day it changes on.
    pub date: NaiveDate,
}

/// The kinds of [`Plant`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantKind {
    /// Half of the day's events report `tablet` whatever their device: the tablet share
    /// goes from about a tenth to over a half.
    DeviceMix,
    /// 30 % of the day's events lose their price (NULL), on top of the usual missing prices.
    NullPrice,
}

impl PlantKind {
    /// The name used on the command line (`--plant NAME@DATE`).
    pub fn name(self) -> &'static str {
        match self {
            PlantKind::DeviceMix => "device-mix",
            PlantKind::NullPrice => "null-price",
        }
    }

    /// Every kind, in documentation order.
    pub const ALL: [PlantKind; 2] = [PlantKind::DeviceMix, PlantKind::NullPrice];
}

impl std::str::FromStr for Plant {
    type Err = String;

    /// Parses `KIND@YYYY-MM-DD`, e.g. `device-mix@2026-11-20`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let names = || {
            PlantKind::ALL
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (kind, date) = s
            .split_once('@')
            .ok_or_else(|| format!("`{s}`: expected KIND@YYYY-MM-DD (KIND: {})", names()))?;
        let kind = PlantKind::ALL
            .into_iter()
            .find(|k| k.name() == kind)
            .ok_or_else(|| format!("`{s}`: unknown kind `{kind}` (known: {})", names()))?;
        let date = NaiveDate::parse_from_str(date, "%Y-%m-%d")
            .map_err(|e| format!("`{s}`: bad date `{date}`: {e}"))?;
        Ok(Plant { kind, date })
    }
}

/// Applies the plants of `day` (days since the epoch) to its events.
fn apply_plants(plants: &[Plant], seed: u64, day: i64, events: &mut [Event]) {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
    for p in plants {
        if p.date.signed_duration_since(epoch).num_days() != day {
            continue;
        }
        for e in events.iter_mut() {
            let id = e.ts ^ e.user.rotate_left(21) ^ e.item.rotate_left(42);
            match p.kind {
                PlantKind::DeviceMix => {
                    if unit(h64(seed, TAG_PLANT_DEVICE, id)) < 0.5 {
                        e.device = 2;
                    }
                }
                PlantKind::NullPrice => {
                    if unit(h64(seed, TAG_PLANT_PRICE, id)) < 0.3 {
                        e.price = f64::NAN;
                    }
                }
            }
        }
    }
}

impl GenConfig {
    /// A configuration with the documented defaults for `rows` events over `days` days
    /// (users = rows/5, items = rows/10, one parquet file per day, ending 2026-11-21).
    pub fn new(rows: u64, days: u32, seed: u64) -> Self {
        Self {
            rows,
            days,
            seed,
            end_date: NaiveDate::parse_from_str(DEFAULT_END_DATE, "%Y-%m-%d")
                .expect("valid default date"),
            files_per_day: 1,
            format: Format::Parquet,
            users: (rows / 5).max(1),
            items: (rows / 10).max(1),
            threads: 0,
            keep_truth: false,
            ceiling_date: None,
            plants: Vec::new(),
        }
    }

    fn validate(&self) -> Result<(), GenError> {
        let bad = |option, message: &str| {
            Err(GenError::InvalidOption {
                option,
                message: message.to_string(),
            })
        };
        if self.rows == 0 {
            return bad("--rows", "must be at least 1");
        }
        if self.rows > (1 << 40) {
            return bad("--rows", "must be at most 2^40");
        }
        if self.days == 0 || self.days > 36_600 {
            return bad("--days", "must be between 1 and 36600");
        }
        if self.files_per_day == 0 || self.files_per_day > 100_000 {
            return bad("--files", "must be between 1 and 100000");
        }
        if self.users == 0 || self.users > (1 << 50) {
            return bad("--users", "must be between 1 and 2^50");
        }
        if self.items == 0 || self.items > (1 << 50) {
            return bad("--items", "must be between 1 and 2^50");
        }
        let Some(start) = self.start_date() else {
            return bad("--days", "the day range starts before the year 1");
        };
        for p in &self.plants {
            if p.date < start || p.date > self.end_date {
                return bad(
                    "--plant",
                    &format!(
                        "{}@{} is outside the generated days {start} .. {}",
                        p.kind.name(),
                        p.date,
                        self.end_date
                    ),
                );
            }
        }
        let c = self.ceiling_day();
        if c < start || c > self.end_date {
            return bad(
                "--ceiling-date",
                &format!(
                    "{c} is outside the generated days {start} .. {}",
                    self.end_date
                ),
            );
        }
        Ok(())
    }

    /// The day the ceiling is computed on: `ceiling_date`, else the day before `end_date`
    /// (so clicks after its midnight are generated, as in the example job run for
    /// 2026-11-20 on 9 days ending 2026-11-21), else `end_date` for a single day.
    pub fn ceiling_day(&self) -> NaiveDate {
        self.ceiling_date.unwrap_or_else(|| {
            if self.days >= 2 {
                self.end_date.pred_opt().unwrap_or(self.end_date)
            } else {
                self.end_date
            }
        })
    }

    /// First day of the range.
    pub fn start_date(&self) -> Option<NaiveDate> {
        self.end_date
            .checked_sub_days(chrono::Days::new(u64::from(self.days) - 1))
    }
}

/// Figures of one generated day partition.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DayReport {
    /// The partition date.
    pub date: String,
    /// Events in the partition.
    pub rows: u64,
    /// `view` events.
    pub views: u64,
    /// `click` events.
    pub clicks: u64,
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// The ceiling on one day: the AUC of the true click probability against the example
/// job's labels (a click by the same user on the same item within 30 minutes after the view).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Ceiling {
    /// The target day ([`GenConfig::ceiling_day`]).
    pub date: String,
    /// Views on the target day (the example job's examples).
    pub views: u64,
    /// Views labelled 1.
    pub positives: u64,
    /// ROC AUC of `p_click` against the labels (ties get half credit); `None` (`null`) when
    /// the day's views are all of one class.
    pub auc: Option<f64>,
}

/// The result of [`generate`].
#[derive(Clone, Debug)]
pub struct GenReport {
    /// Events written.
    pub rows: u64,
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Days written.
    pub days: u32,
    /// Wall time of the generation, seconds.
    pub seconds: f64,
    /// Per-day figures, in date order.
    pub per_day: Vec<DayReport>,
    /// The AUC ceiling on [`GenConfig::ceiling_day`].
    pub ceiling: Ceiling,
    /// `(event_id, p_click)` of every view, in event_id order, if `keep_truth`.
    pub truth: Option<Vec<(i64, f64)>>,
}

impl GenReport {
    /// Clicks / views over all days.
    pub fn ctr(&self) -> f64 {
        let views: u64 = self.per_day.iter().map(|d| d.views).sum();
        let clicks: u64 = self.per_day.iter().map(|d| d.clicks).sum();
        if views == 0 {
            0.0
        } else {
            clicks as f64 / views as f64
        }
    }
}

/// The Arrow schema of the click log (`docs/generator.md`, `specs/daily_ctr.md`).
pub fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Int64, false),
        Field::new("user_id", DataType::Int64, false),
        Field::new("item_id", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("price", DataType::Float64, true),
        Field::new("city", DataType::Utf8, true),
        Field::new("device", DataType::Utf8, false),
        Field::new("dwell_ms", DataType::Int32, false),
    ]))
}

/// The constants of the generative model (all documented in `docs/generator.md`).
#[derive(Clone, Debug)]
pub struct Model {
    /// Intercept of the click logit.
    pub b0: f64,
    /// Std-dev of the user click propensity `a_u`.
    pub sd_user: f64,
    /// Std-dev of the item attractiveness `b_i`.
    pub sd_item: f64,
    /// Amplitude of the hour term `amp * cos(2π (hour - peak) / 24)`.
    pub hour_amp: f64,
    /// Hour (UTC) at which the hour term peaks.
    pub hour_peak: f64,
    /// Logit term per device (mobile, desktop, tablet).
    pub device: [f64; 3],
    /// Coefficient of `ln(price / 25)`.
    pub price_coef: f64,
    /// Logit term when the view's price is NULL.
    pub price_null: f64,
    /// Coefficient of the standardised log dwell of the view, clipped to ±3.
    pub dwell_coef: f64,
    /// Zipf-like exponent of user popularity.
    pub user_s: f64,
    /// Offset of user popularity (flattens the head).
    pub user_k: f64,
    /// Zipf-like exponent of item popularity.
    pub item_s: f64,
    /// Offset of item popularity.
    pub item_k: f64,
    /// Probability that a session has one more view (views per session = 1 + geometric).
    pub more_views: f64,
    /// Probability that a click is followed by a cart.
    pub p_cart: f64,
    /// Probability that a cart is followed by a purchase.
    pub p_purchase: f64,
    /// Fraction of clicks arriving 30 min to 4 h after the view.
    pub late_click: f64,
    /// Fraction of items without a price.
    pub item_no_price: f64,
    /// Per-event probability of a missing price.
    pub event_no_price: f64,
    /// Per-session probability of a missing city.
    pub session_no_city: f64,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            b0: -3.2,
            sd_user: 0.8,
            sd_item: 0.7,
            hour_amp: 0.3,
            hour_peak: 21.0,
            device: [0.0, 0.25, -0.2],
            price_coef: -0.3,
            price_null: -0.15,
            dwell_coef: 0.35,
            user_s: 0.85,
            user_k: 20.0,
            item_s: 0.95,
            item_k: 10.0,
            more_views: 0.75,
            p_cart: 0.22,
            p_purchase: 0.35,
            late_click: 0.08,
            item_no_price: 0.03,
            event_no_price: 0.02,
            session_no_city: 0.10,
        }
    }
}

/// Median view dwell (ms) and the spread of its logarithm.
const DWELL_MEDIAN_MS: f64 = 8_000.0;
const DWELL_SIGMA: f64 = 0.7;
/// Median item price and the spread of its logarithm.
const PRICE_MEDIAN: f64 = 25.0;
const PRICE_SIGMA: f64 = 1.0;

/// One generated event (the event id is assigned after sorting).
#[derive(Clone, Copy, Debug)]
struct Event {
    ts: i64,
    user: i64,
    item: i64,
    /// NaN = NULL.
    price: f64,
    /// True click probability (views only).
    p: f64,
    dwell: i32,
    kind: u8,
    device: u8,
    city: u16,
}

// ---------------------------------------------------------------- hashing and latents

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A hash of `(seed, tag, id)`, the source of every persistent latent.
fn h64(seed: u64, tag: u64, id: i64) -> u64 {
    splitmix64(seed ^ splitmix64(tag.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ splitmix64(id as u64)))
}

/// Uniform in (0, 1) from a hash.
fn unit(h: u64) -> f64 {
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// Standard normal from two hashes (Box-Muller).
fn normal(seed: u64, tag: u64, id: i64) -> f64 {
    let u1 = unit(h64(seed, tag, id));
    let u2 = unit(h64(seed, tag ^ 0xA5A5, id));
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

const TAG_USER_A: u64 = 1;
const TAG_USER_DEVICE: u64 = 2;
const TAG_USER_CITY: u64 = 3;
const TAG_USER_DWELL: u64 = 4;
const TAG_ITEM_B: u64 = 11;
const TAG_ITEM_PRICE: u64 = 12;
const TAG_ITEM_HAS_PRICE: u64 = 13;
const TAG_ITEM_DWELL: u64 = 14;
const TAG_PLANT_DEVICE: u64 = 21;
const TAG_PLANT_PRICE: u64 = 22;

/// Persistent attributes of a user.
struct UserLatent {
    a: f64,
    device: u8,
    city: u16,
    dwell: f64,
}

fn user_latent(m: &Model, seed: u64, id: i64) -> UserLatent {
    let ud = unit(h64(seed, TAG_USER_DEVICE, id));
    let device = if ud < 0.60 {
        0
    } else if ud < 0.92 {
        1
    } else {
        2
    };
    UserLatent {
        a: m.sd_user * normal(seed, TAG_USER_A, id),
        device,
        city: city_from_unit(unit(h64(seed, TAG_USER_CITY, id))),
        dwell: 0.25 * normal(seed, TAG_USER_DWELL, id),
    }
}

/// Persistent attributes of an item.
struct ItemLatent {
    b: f64,
    /// NaN when the item has no price.
    price: f64,
    dwell: f64,
}

fn item_latent(m: &Model, seed: u64, id: i64) -> ItemLatent {
    let has_price = unit(h64(seed, TAG_ITEM_HAS_PRICE, id)) >= m.item_no_price;
    let price = if has_price {
        let p = PRICE_MEDIAN * (PRICE_SIGMA * normal(seed, TAG_ITEM_PRICE, id)).exp();
        ((p.max(0.5)) * 100.0).round() / 100.0
    } else {
        f64::NAN
    };
    ItemLatent {
        b: m.sd_item * normal(seed, TAG_ITEM_B, id),
        price,
        dwell: 0.3 * normal(seed, TAG_ITEM_DWELL, id),
    }
}

/// City index with weights proportional to `1 / (rank + 2)`.
fn city_from_unit(u: f64) -> u16 {
    let total: f64 = (0..CITIES.len()).map(|r| 1.0 / (r as f64 + 2.0)).sum();
    let mut acc = 0.0;
    for r in 0..CITIES.len() {
        acc += 1.0 / (r as f64 + 2.0) / total;
        if u < acc {
            return r as u16;
        }
    }
    (CITIES.len() - 1) as u16
}

/// Power-law ("Zipf with offset") sampler over ranks `0..n`: density ∝ `(x + k)^-s`.
struct PowerLaw {
    n: u64,
    a: f64,
    span: f64,
    inv: f64,
    k: f64,
}

impl PowerLaw {
    fn new(n: u64, s: f64, k: f64) -> Self {
        let e = 1.0 - s;
        let a = k.powf(e);
        let b = (n as f64 + k).powf(e);
        Self {
            n,
            a,
            span: b - a,
            inv: 1.0 / e,
            k,
        }
    }

    fn sample(&self, u: f64) -> u64 {
        let x = (self.a + u * self.span).powf(self.inv) - self.k;
        (x.max(0.0) as u64).min(self.n - 1)
    }
}

/// Maps a popularity rank to an id in `1..=n` (a bijection, so popular ids are scattered).
fn scramble(rank: u64, n: u64, mult: u64) -> i64 {
    (u128::from(rank) * u128::from(mult % n) % u128::from(n)) as i64 + 1
}

/// Primes larger than any id count, so `rank * p mod n` is a bijection on `0..n`.
const USER_MULT: u64 = (1 << 61) - 1;
const ITEM_MULT: u64 = 18_446_744_073_709_551_557;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Relative session-start intensity of each UTC hour: a lunch bump and an evening peak.
fn hour_weights() -> [f64; 24] {
    let bump = |h: f64, centre: f64, width: f64| {
        let d = (h - centre).abs();
        let d = d.min(24.0 - d);
        (-(d * d) / (2.0 * width * width)).exp()
    };
    let mut w = [0.0; 24];
    for (h, w) in w.iter_mut().enumerate() {
        let h = h as f64 + 0.5;
        *w = 0.25 + 0.55 * bump(h, 13.0, 3.0) + 1.0 * bump(h, 20.5, 2.5);
    }
    w
}

// ---------------------------------------------------------------- one day

struct Sampler<'a> {
    m: &'a Model,
    seed: u64,
    users: PowerLaw,
    items: PowerLaw,
    n_users: u64,
    n_items: u64,
    hour_cdf: [f64; 24],
    /// `hour_amp * cos(2π (hour - hour_peak) / 24)` per UTC hour.
    hour_term: [f64; 24],
}

impl<'a> Sampler<'a> {
    fn new(m: &'a Model, cfg: &GenConfig) -> Self {
        let w = hour_weights();
        let total: f64 = w.iter().sum();
        let mut hour_cdf = [0.0; 24];
        let mut acc = 0.0;
        for (h, c) in hour_cdf.iter_mut().enumerate() {
            acc += w[h] / total;
            *c = acc;
        }
        hour_cdf[23] = 1.0;
        let hour_term = std::array::from_fn(|h| {
            m.hour_amp * (std::f64::consts::TAU * (h as f64 - m.hour_peak) / 24.0).cos()
        });
        Self {
            m,
            seed: cfg.seed,
            users: PowerLaw::new(cfg.users, m.user_s, m.user_k),
            items: PowerLaw::new(cfg.items, m.item_s, m.item_k),
            n_users: cfg.users,
            n_items: cfg.items,
            hour_cdf,
            hour_term,
        }
    }

    /// Offset (µs) of a session start within its day.
    fn session_start(&self, rng: &mut ChaCha8Rng) -> i64 {
        let u: f64 = rng.random();
        let hour = self.hour_cdf.iter().position(|&c| u < c).unwrap_or(23) as i64;
        hour * US_PER_HOUR + rng.random_range(0..US_PER_HOUR)
    }

    /// The true click probability of a view.
    fn p_click(
        &self,
        u: &UserLatent,
        i: &ItemLatent,
        hour: i64,
        device: u8,
        price: f64,
        dwell: i32,
    ) -> f64 {
        let m = self.m;
        let hour_term = self.hour_term[hour as usize];
        let price_term = if price.is_nan() {
            m.price_null
        } else {
            m.price_coef * (price / PRICE_MEDIAN).ln()
        };
        let z = ((f64::from(dwell)).ln() - DWELL_MEDIAN_MS.ln()) / DWELL_SIGMA;
        let dwell_term = m.dwell_coef * z.clamp(-3.0, 3.0);
        sigmoid(m.b0 + u.a + i.b + hour_term + m.device[device as usize] + price_term + dwell_term)
    }

    /// Appends one session starting on the day beginning at `day_start` (µs) to `out`.
    fn session(&self, rng: &mut ChaCha8Rng, day_start: i64, out: &mut Vec<Event>) {
        let m = self.m;
        let user = scramble(self.users.sample(rng.random()), self.n_users, USER_MULT);
        let ul = user_latent(m, self.seed, user);
        let device = if rng.random::<f64>() < 0.85 {
            ul.device
        } else {
            (ul.device + rng.random_range(1..3u8)) % 3
        };
        let city = if rng.random::<f64>() < m.session_no_city {
            NO_CITY
        } else if rng.random::<f64>() < 0.05 {
            city_from_unit(rng.random())
        } else {
            ul.city
        };
        let mut t = day_start + self.session_start(rng);
        let mut first = true;
        loop {
            if !first {
                // Gap between views: log-normal, median 25 s.
                t += lognormal_us(rng, 25.0, 1.0);
            }
            first = false;
            let item = scramble(self.items.sample(rng.random()), self.n_items, ITEM_MULT);
            let il = item_latent(m, self.seed, item);
            let price = self.event_price(rng, il.price);
            let dwell_mu = DWELL_MEDIAN_MS.ln() + ul.dwell + il.dwell;
            let dwell = dwell_ms(rng, dwell_mu, DWELL_SIGMA);
            let hour = t.rem_euclid(US_PER_DAY) / US_PER_HOUR;
            let p = self.p_click(&ul, &il, hour, device, price, dwell);
            let base = Event {
                ts: t,
                user,
                item,
                price,
                p: 0.0,
                dwell: 0,
                kind: VIEW,
                device,
                city,
            };
            out.push(Event { p, dwell, ..base });
            if rng.random::<f64>() < p {
                let delay = if rng.random::<f64>() < m.late_click {
                    rng.random_range(LABEL_WINDOW_US + US_PER_SEC..4 * US_PER_HOUR)
                } else {
                    lognormal_us(rng, 20.0, 1.1).clamp(US_PER_SEC / 10, LABEL_WINDOW_US)
                };
                let tc = t + delay;
                out.push(Event {
                    ts: tc,
                    kind: CLICK,
                    price: self.event_price(rng, il.price),
                    dwell: dwell_ms(rng, 30_000f64.ln(), 0.9),
                    ..base
                });
                if rng.random::<f64>() < m.p_cart {
                    let ta = tc + lognormal_us(rng, 45.0, 0.8);
                    out.push(Event {
                        ts: ta,
                        kind: CART,
                        price: self.event_price(rng, il.price),
                        dwell: dwell_ms(rng, 5_000f64.ln(), 0.6),
                        ..base
                    });
                    if rng.random::<f64>() < m.p_purchase {
                        out.push(Event {
                            ts: ta + lognormal_us(rng, 90.0, 0.8),
                            kind: PURCHASE,
                            price: self.event_price(rng, il.price),
                            dwell: dwell_ms(rng, 60_000f64.ln(), 0.7),
                            ..base
                        });
                    }
                }
            }
            if rng.random::<f64>() >= m.more_views {
                break;
            }
        }
    }

    fn event_price(&self, rng: &mut ChaCha8Rng, item_price: f64) -> f64 {
        if rng.random::<f64>() < self.m.event_no_price {
            f64::NAN
        } else {
            item_price
        }
    }
}

/// A log-normal duration in µs with the given median (seconds) and log-spread.
fn lognormal_us(rng: &mut ChaCha8Rng, median_s: f64, sigma: f64) -> i64 {
    let z: f64 = rng.sample(StandardNormal);
    let s = median_s * (sigma * z.clamp(-6.0, 6.0)).exp();
    (s * US_PER_SEC as f64) as i64
}

/// A log-normal dwell time in ms, clipped to `[100, 600000]`.
fn dwell_ms(rng: &mut ChaCha8Rng, mu: f64, sigma: f64) -> i32 {
    let z: f64 = rng.sample(StandardNormal);
    (mu + sigma * z).exp().clamp(100.0, 600_000.0) as i32
}

/// The events generated for one day: those inside it, and those spilling into the next day.
struct DayDraw {
    own: Vec<Event>,
    spill: Vec<Event>,
}

/// Generates exactly `budget` events from sessions starting on day `day` (days since the
/// epoch). Events after midnight go to `spill`, or are dropped (and not counted) on the last
/// day of the range.
fn draw_day(s: &Sampler, seed: u64, day: i64, budget: u64, last: bool) -> DayDraw {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(day as u64);
    let day_start = day * US_PER_DAY;
    let day_end = day_start + US_PER_DAY;
    // Room for the spill of the previous day (well under 1%), appended before sorting.
    let mut own = Vec::with_capacity(budget as usize + budget as usize / 64 + 1024);
    let mut spill = Vec::new();
    let mut session = Vec::with_capacity(64);
    let mut produced = 0u64;
    while produced < budget {
        session.clear();
        s.session(&mut rng, day_start, &mut session);
        for e in &session {
            if produced == budget {
                break;
            }
            if e.ts < day_end {
                own.push(*e);
            } else if last {
                continue;
            } else {
                spill.push(*e);
            }
            produced += 1;
        }
    }
    DayDraw { own, spill }
}

// ---------------------------------------------------------------- encoding

fn to_batch(schema: &SchemaRef, events: &[Event], first_id: i64) -> RecordBatch {
    let n = events.len() as i64;
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(first_id..first_id + n)),
        Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.user))),
        Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.item))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(events.iter().map(|e| e.ts))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(
            events.iter().map(|e| EVENT_TYPES[e.kind as usize]),
        )),
        Arc::new(Float64Array::from_iter(
            events
                .iter()
                .map(|e| (!e.price.is_nan()).then_some(e.price)),
        )),
        Arc::new(StringArray::from_iter(
            events
                .iter()
                .map(|e| (e.city != NO_CITY).then(|| CITIES[e.city as usize])),
        )),
        Arc::new(StringArray::from_iter_values(
            events.iter().map(|e| DEVICES[e.device as usize]),
        )),
        Arc::new(Int32Array::from_iter_values(events.iter().map(|e| e.dwell))),
    ];
    RecordBatch::try_new(schema.clone(), cols).expect("columns match the events schema")
}

/// Parquet writer properties of generated files (fixed, so bytes are reproducible).
pub fn parquet_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(BATCH_ROWS))
        .set_created_by(PARQUET_CREATED_BY.to_string())
        .build()
}

/// Encodes `events` (ids from `first_id`) as one file of `format`.
fn encode(
    format: Format,
    schema: &SchemaRef,
    events: &[Event],
    first_id: i64,
) -> Result<Vec<u8>, String> {
    let per_row = match format {
        Format::Parquet => 32,
        Format::Csv => 96,
        Format::Jsonl => 192,
    };
    let mut buf = Vec::with_capacity(events.len() * per_row + 4096);
    let batches = events
        .chunks(BATCH_ROWS)
        .enumerate()
        .map(|(k, c)| to_batch(schema, c, first_id + (k * BATCH_ROWS) as i64));
    match format {
        Format::Parquet => {
            let mut w = ArrowWriter::try_new(&mut buf, schema.clone(), Some(parquet_properties()))
                .map_err(|e| e.to_string())?;
            for b in batches {
                w.write(&b).map_err(|e| e.to_string())?;
            }
            w.close().map_err(|e| e.to_string())?;
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut buf);
            if events.is_empty() {
                w.write(&RecordBatch::new_empty(schema.clone()))
                    .map_err(|e| e.to_string())?;
            }
            for b in batches {
                w.write(&b).map_err(|e| e.to_string())?;
            }
        }
        Format::Jsonl => {
            let mut w = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
            for b in batches {
                w.write(&b).map_err(|e| e.to_string())?;
            }
            w.finish().map_err(|e| e.to_string())?;
        }
    }
    Ok(buf)
}

// ---------------------------------------------------------------- labels and AUC

/// The example job's label of each view of `views`: 1 when the same user clicked the same
/// item at `view.ts < click.ts <= view.ts + 30 min`, among `clicks` (sorted by ts).
fn labels(views: &[Event], clicks: &[Event]) -> Vec<bool> {
    let mut by_pair: HashMap<(i64, i64), Vec<i64>> = HashMap::with_capacity(clicks.len());
    for e in clicks {
        by_pair.entry((e.user, e.item)).or_default().push(e.ts);
    }
    let clicks = by_pair;
    views
        .iter()
        .map(|v| {
            clicks.get(&(v.user, v.item)).is_some_and(|ts| {
                // ts is sorted: the first click after the view decides.
                let k = ts.partition_point(|&t| t <= v.ts);
                k < ts.len() && ts[k] <= v.ts + LABEL_WINDOW_US
            })
        })
        .collect()
}

// ---------------------------------------------------------------- the driver

/// Rendezvous of the events spilling from day `d - 1` into day `d`.
struct Slot {
    value: Mutex<Option<Vec<Event>>>,
    ready: Condvar,
}

struct DayOut {
    report: DayReport,
    truth: Vec<(i64, f64)>,
}

/// What the ceiling needs: the views of its day, and the clicks of that day and of the first
/// 30 minutes of the next.
#[derive(Default)]
struct CeilingInput {
    views: Vec<Event>,
    clicks: Vec<Event>,
    next_clicks: Vec<Event>,
}

/// Generates the click log described by `cfg` into `sink`: `dt=YYYY-MM-DD/part-NNNNN.EXT`,
/// `files_per_day` files per day, rows sorted by `ts` across a day's files, event ids
/// `1..=rows` in `ts` order. Stale `part-*` files of a written day are deleted.
pub fn generate(cfg: &GenConfig, sink: &dyn Sink) -> Result<GenReport, GenError> {
    cfg.validate()?;
    let started = Instant::now();
    let model = Model::default();
    let sampler = Sampler::new(&model, cfg);
    let schema = events_schema();
    let days = cfg.days as usize;
    let start = cfg.start_date().expect("validated");
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
    let first_day = start.signed_duration_since(epoch).num_days();
    let ceiling_day = cfg.ceiling_day().signed_duration_since(epoch).num_days();
    let ceiling_input = Mutex::new(CeilingInput::default());

    // Budgets: rows split evenly, the remainder to the first days.
    let budgets: Vec<u64> = (0..days as u64)
        .map(|d| cfg.rows / cfg.days as u64 + u64::from(d < cfg.rows % cfg.days as u64))
        .collect();
    let mut prefix = vec![0u64; days + 1];
    for d in 0..days {
        prefix[d + 1] = prefix[d] + budgets[d];
    }

    let threads = if cfg.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cfg.threads
    }
    .clamp(1, days);
    let slots: Vec<Slot> = (0..=days)
        .map(|_| Slot {
            value: Mutex::new(None),
            ready: Condvar::new(),
        })
        .collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<DayOut, GenError>>>> =
        Mutex::new((0..days).map(|_| None).collect());

    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    if failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let d = next.fetch_add(1, Ordering::SeqCst);
                    if d >= days {
                        break;
                    }
                    let day = first_day + d as i64;
                    let draw = draw_day(&sampler, cfg.seed, day, budgets[d], d + 1 == days);
                    // Publish the spill before anything can fail, so day d+1 never waits
                    // forever; days are claimed in order, so the wait below always ends.
                    {
                        let slot = &slots[d + 1];
                        *slot.value.lock().expect("spill lock") = Some(draw.spill);
                        slot.ready.notify_all();
                    }
                    let incoming = if d == 0 {
                        Vec::new()
                    } else {
                        let slot = &slots[d];
                        let mut v = slot.value.lock().expect("spill lock");
                        while v.is_none() {
                            v = slot.ready.wait(v).expect("spill lock");
                        }
                        v.take().expect("checked")
                    };
                    let first_id = (prefix[d] - incoming.len() as u64) as i64 + 1;
                    let mut events = draw.own;
                    events.extend_from_slice(&incoming);
                    drop(incoming);
                    apply_plants(&cfg.plants, cfg.seed, day, &mut events);
                    let out = finish_day(cfg, sink, &schema, day, events, first_id, |ev| {
                        if day == ceiling_day {
                            let mut c = ceiling_input.lock().expect("ceiling lock");
                            c.views = ev.iter().filter(|e| e.kind == VIEW).copied().collect();
                            c.clicks = ev.iter().filter(|e| e.kind == CLICK).copied().collect();
                        } else if day == ceiling_day + 1 {
                            let end = day * US_PER_DAY + LABEL_WINDOW_US;
                            ceiling_input.lock().expect("ceiling lock").next_clicks = ev
                                .iter()
                                .take_while(|e| e.ts <= end)
                                .filter(|e| e.kind == CLICK)
                                .copied()
                                .collect();
                        }
                    });
                    if out.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    results.lock().expect("results lock")[d] = Some(out);
                }
            });
        }
    });

    let mut per_day = Vec::with_capacity(days);
    let mut truth = cfg.keep_truth.then(Vec::new);
    for r in results.into_inner().expect("results lock") {
        match r {
            Some(Ok(out)) => {
                per_day.push(out.report);
                if let Some(t) = truth.as_mut() {
                    t.extend(out.truth);
                }
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    let CeilingInput {
        views,
        mut clicks,
        next_clicks,
    } = ceiling_input.into_inner().expect("ceiling lock");
    clicks.extend(next_clicks);
    let labels = labels(&views, &clicks);
    let scores: Vec<f64> = views.iter().map(|e| e.p).collect();
    let ceiling = Ceiling {
        date: day_name(ceiling_day),
        views: views.len() as u64,
        positives: labels.iter().filter(|&&l| l).count() as u64,
        auc: kiln_trainer::eval::roc_auc(&scores, &labels),
    };
    Ok(GenReport {
        rows: per_day.iter().map(|d| d.rows).sum(),
        files: per_day.iter().map(|d| d.files).sum(),
        bytes: per_day.iter().map(|d| d.bytes).sum(),
        days: cfg.days,
        seconds: started.elapsed().as_secs_f64(),
        per_day,
        ceiling,
        truth,
    })
}

/// Sorts, encodes and writes one day; `inspect` sees the sorted events.
fn finish_day(
    cfg: &GenConfig,
    sink: &dyn Sink,
    schema: &SchemaRef,
    day: i64,
    mut events: Vec<Event>,
    first_id: i64,
    inspect: impl FnOnce(&[Event]),
) -> Result<DayOut, GenError> {
    events.sort_by_key(|e| e.ts);
    inspect(&events);
    let date = day_name(day);
    let dir = format!("dt={date}");
    let ext = cfg.format.extension();
    let files = cfg.files_per_day as usize;
    let mut written = Vec::with_capacity(files);
    let mut bytes = 0u64;
    let n = events.len();
    for f in 0..files {
        let (lo, hi) = (n * f / files, n * (f + 1) / files);
        let name = format!("part-{f:05}.{ext}");
        let rel = format!("{dir}/{name}");
        let data = encode(cfg.format, schema, &events[lo..hi], first_id + lo as i64).map_err(
            |message| GenError::Io {
                op: "encode",
                location: sink.describe(&rel),
                message,
            },
        )?;
        bytes += data.len() as u64;
        sink.put(&rel, data)?;
        written.push(name);
    }
    for stale in sink.list(&dir)? {
        if stale.starts_with("part-") && !written.contains(&stale) {
            sink.delete(&format!("{dir}/{stale}"))?;
        }
    }
    let views = events.iter().filter(|e| e.kind == VIEW).count() as u64;
    let clicks = events.iter().filter(|e| e.kind == CLICK).count() as u64;
    let truth = if cfg.keep_truth {
        events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == VIEW)
            .map(|(k, e)| (first_id + k as i64, e.p))
            .collect()
    } else {
        Vec::new()
    };
    Ok(DayOut {
        report: DayReport {
            date,
            rows: n as u64,
            views,
            clicks,
            files: files as u64,
            bytes,
        },
        truth,
    })
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01).
fn day_name(day: i64) -> String {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
    let d = epoch + chrono::Duration::days(day);
    format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
}

/// Writes the truth file: parquet with `event_id` int64 and `p_click` float64, one row per
/// view, in event_id order.
pub fn write_truth(path: &Path, truth: &[(i64, f64)]) -> Result<u64, GenError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Int64, false),
        Field::new("p_click", DataType::Float64, false),
    ]));
    let io = |op, message: String| GenError::Io {
        op,
        location: path.display().to_string(),
        message,
    };
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, schema.clone(), Some(parquet_properties()))
        .map_err(|e| io("encode", e.to_string()))?;
    for chunk in truth.chunks(BATCH_ROWS) {
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(chunk.iter().map(|t| t.0))),
                Arc::new(Float64Array::from_iter_values(chunk.iter().map(|t| t.1))),
            ],
        )
        .map_err(|e| io("encode", e.to_string()))?;
        w.write(&b).map_err(|e| io("encode", e.to_string()))?;
    }
    w.close().map_err(|e| io("encode", e.to_string()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io("create directory", e.to_string()))?;
    }
    let len = buf.len() as u64;
    std::fs::write(path, buf).map_err(|e| io("write", e.to_string()))?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scramble_is_a_bijection() {
        for n in [1u64, 2, 7, 100, 1000] {
            let mut seen: Vec<i64> = (0..n).map(|r| scramble(r, n, USER_MULT)).collect();
            seen.sort();
            assert_eq!(seen, (1..=n as i64).collect::<Vec<_>>(), "n = {n}");
        }
    }

    #[test]
    fn power_law_is_skewed_and_in_range() {
        let p = PowerLaw::new(1000, 0.9, 10.0);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[p.sample(rng.random()) as usize] += 1;
        }
        let head: u32 = counts[..10].iter().sum();
        let tail: u32 = counts[990..].iter().sum();
        assert!(head > 10 * tail, "head {head} tail {tail}");
        assert_eq!(p.sample(0.0), 0);
        assert_eq!(p.sample(1.0 - 1e-16), 999);
    }

    #[test]
    fn labels_use_the_half_open_window() {
        let ev = |ts, kind, item| Event {
            ts,
            user: 1,
            item,
            price: 1.0,
            p: 0.5,
            dwell: 1,
            kind,
            device: 0,
            city: 0,
        };
        let views = [
            ev(0, VIEW, 1),
            ev(0, VIEW, 2),
            ev(10, VIEW, 3),
            ev(10, VIEW, 4),
        ];
        let clicks = [
            ev(-5, CLICK, 4),
            ev(LABEL_WINDOW_US, CLICK, 1),
            ev(LABEL_WINDOW_US + 1, CLICK, 2),
            ev(LABEL_WINDOW_US + 10, CLICK, 3),
        ];
        assert_eq!(labels(&views, &clicks), vec![true, false, true, false]);
        // A click at the view's own timestamp does not count.
        assert_eq!(labels(&[ev(5, VIEW, 1)], &[ev(5, CLICK, 1)]), vec![false]);
    }

    #[test]
    fn day_names() {
        assert_eq!(day_name(0), "1970-01-01");
        let d = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
        let n = d.signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1).unwrap());
        assert_eq!(day_name(n.num_days()), "2026-11-21");
    }
}
