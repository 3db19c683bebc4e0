//! `kiln gen`: deterministic synthetic data (`kiln gen events ...`, see `docs/generator.md`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use chrono::NaiveDate;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use kiln_gen::{self as generator, Format, GenConfig, GenError, LocalSink, Sink};

/// Subcommands of `kiln gen`.
#[derive(clap::Subcommand)]
pub enum GenCommand {
    /// Generate a synthetic e-commerce click log, one Hive-style partition per day
    /// (OUT/dt=YYYY-MM-DD/part-00000.parquet). Same arguments, same bytes.
    Events(EventsArgs),
}

/// Output format of `kiln gen events`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum FormatArg {
    /// Apache Parquet (snappy).
    Parquet,
    /// CSV with a header.
    Csv,
    /// JSON lines.
    Jsonl,
}

/// Arguments of `kiln gen events`.
#[derive(clap::Args)]
pub struct EventsArgs {
    /// Total number of events (exact), split evenly over the days.
    #[arg(long, default_value_t = 10_000_000)]
    pub rows: u64,
    /// Number of days, ending at --end-date inclusive (the example job run for D reads
    /// D-7 .. D+1: 9 days).
    #[arg(long, default_value_t = 9)]
    pub days: u32,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output location: a local directory, file:///abs/dir, s3://bucket/prefix,
    /// hdfs://namenode:port/path, or kafka://HOST:PORT[,...]/TOPIC (JSON messages keyed by
    /// user_id, record timestamp = event time, produced day by day; --format is ignored).
    #[arg(long)]
    pub out: String,
    /// Partitions of the topic when `--out kafka://...` creates it (an existing topic keeps
    /// its own).
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// File format.
    #[arg(long, value_enum, default_value = "parquet")]
    pub format: FormatArg,
    /// Files per day partition.
    #[arg(long, default_value_t = 1)]
    pub files: u32,
    /// Last day of the range (UTC), YYYY-MM-DD.
    #[arg(long, default_value = generator::DEFAULT_END_DATE)]
    pub end_date: NaiveDate,
    /// Distinct users (default: rows / 5).
    #[arg(long)]
    pub users: Option<u64>,
    /// Distinct items (default: rows / 10).
    #[arg(long)]
    pub items: Option<u64>,
    /// Worker threads (default: available cores). The output does not depend on it.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Print one JSON object instead of a human summary.
    #[arg(long)]
    pub json: bool,
    /// The day whose views the reported ceiling AUC is computed on (default: the day before
    /// --end-date, the example job's run date; --end-date itself when --days is 1).
    #[arg(long)]
    pub ceiling_date: Option<NaiveDate>,
    /// Plant a defect on one day, to test data validation: `device-mix@YYYY-MM-DD` (half of
    /// that day's events report `tablet`) or `null-price@YYYY-MM-DD` (30% more NULL prices).
    /// Repeatable. The other days are byte-identical to a run without it.
    #[arg(long = "plant", value_name = "KIND@DATE")]
    pub plants: Vec<generator::Plant>,
    /// Also write (event_id, p_click) of every view, as parquet, to this local path.
    #[arg(long, hide = true)]
    pub truth: Option<PathBuf>,
}

/// Runs `kiln gen ...`.
pub fn run(c: GenCommand) -> anyhow::Result<()> {
    match c {
        GenCommand::Events(a) => events(a),
    }
}

fn events(a: EventsArgs) -> anyhow::Result<()> {
    let mut cfg = GenConfig::new(a.rows, a.days, a.seed);
    cfg.end_date = a.end_date;
    cfg.files_per_day = a.files;
    cfg.format = match a.format {
        FormatArg::Parquet => Format::Parquet,
        FormatArg::Csv => Format::Csv,
        FormatArg::Jsonl => Format::Jsonl,
    };
    if let Some(u) = a.users {
        cfg.users = u;
    }
    if let Some(i) = a.items {
        cfg.items = i;
    }
    cfg.threads = a.threads;
    cfg.keep_truth = a.truth.is_some();
    cfg.ceiling_date = a.ceiling_date;
    cfg.plants = a.plants;

    let mut produced = None;
    let report = if a.out.starts_with("kafka://") {
        // Generated as JSON lines into a scratch directory, then produced file by file in day
        // order, so every partition's timestamps advance day by day.
        cfg.format = Format::Jsonl;
        let scratch = tempfile::tempdir().context("creating a scratch directory")?;
        let report = generator::generate(&cfg, &LocalSink::new(scratch.path()))
            .with_context(|| format!("kiln gen events --out {}", a.out))?;
        produced = Some(produce_to_kafka(&a.out, a.partitions, scratch.path())?);
        report
    } else {
        let sink = open_sink(&a.out)?;
        generator::generate(&cfg, sink.as_ref())
            .with_context(|| format!("kiln gen events --out {}", a.out))?
    };
    let truth_bytes = match (&a.truth, &report.truth) {
        (Some(path), Some(truth)) => Some(generator::write_truth(path, truth)?),
        _ => None,
    };

    if a.json {
        let obj = serde_json::json!({
            "rows": report.rows,
            "files": report.files,
            "bytes": report.bytes,
            "days": report.days,
            "seconds": report.seconds,
            "out": a.out,
            "format": cfg.format.extension(),
            "seed": cfg.seed,
            "start_date": cfg.start_date().map(|d| d.to_string()),
            "end_date": cfg.end_date.to_string(),
            "users": cfg.users,
            "items": cfg.items,
            "ctr": report.ctr(),
            "ceiling": report.ceiling,
            "truth": a.truth.as_ref().map(|p| p.display().to_string()),
            "truth_bytes": truth_bytes,
            "kafka_records": produced,
            "per_day": report.per_day,
        });
        println!("{obj}");
    } else {
        let c = &report.ceiling;
        println!(
            "kiln gen events: {} rows in {} day(s) ({} files, {:.1} MB) to {} in {:.2} s; \
             CTR {:.2}%; ceiling AUC {} on {} ({} views, {:.2}% labelled 1)",
            report.rows,
            report.days,
            report.files,
            report.bytes as f64 / 1e6,
            a.out,
            report.seconds,
            100.0 * report.ctr(),
            c.auc
                .map_or_else(|| "undefined".into(), |a| format!("{a:.4}")),
            c.date,
            c.views,
            100.0 * c.positives as f64 / c.views.max(1) as f64,
        );
        if let Some(n) = produced {
            println!(
                "kiln gen events: {n} records produced to {} (JSON values)",
                a.out
            );
        }
    }
    Ok(())
}

/// Produces every `*.jsonl` file under `dir` (sorted by path: day by day) to the topic of
/// `url`, one record per line: key = `user_id`, timestamp = `ts` (milliseconds). Creates the
/// topic with `partitions` partitions if it does not exist. Returns the records delivered.
fn produce_to_kafka(url: &str, partitions: i32, dir: &std::path::Path) -> anyhow::Result<u64> {
    use std::io::BufRead;
    let address = kiln_connectors::kafka::KafkaAddress::parse(url)?;
    let client = kiln_connectors::kafka::KafkaClient::new(address, &Default::default(), None)?;
    client.ensure_topic(partitions, 1)?;
    let mut files = Vec::new();
    for day in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let day = day?.path();
        for f in std::fs::read_dir(&day).with_context(|| format!("listing {}", day.display()))? {
            let f = f?.path();
            if f.extension().is_some_and(|e| e == "jsonl") {
                files.push(f);
            }
        }
    }
    files.sort();
    let mut producer = client.producer()?;
    for f in &files {
        let reader = std::io::BufReader::new(
            std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?,
        );
        for (i, line) in reader.lines().enumerate() {
            let line = line.with_context(|| format!("{}:{}", f.display(), i + 1))?;
            let event: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("{}:{}", f.display(), i + 1))?;
            let user = event["user_id"].as_i64();
            let ts = event["ts"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            let (Some(user), Some(ts)) = (user, ts) else {
                anyhow::bail!("{}:{}: no user_id or ts in {line}", f.display(), i + 1);
            };
            producer.send(
                user.to_string().as_bytes(),
                line.as_bytes(),
                ts.timestamp_millis(),
            )?;
        }
    }
    Ok(producer.finish()?)
}

/// The sink for `--out`: local paths and `file://` URLs on the filesystem (written with
/// std::fs, temporary name + rename), any other URL (`s3://bucket/prefix`, configured from the
/// usual `AWS_*` variables) through `kiln_connectors::store`, like every other command.
fn open_sink(out: &str) -> anyhow::Result<Box<dyn Sink>> {
    if !out.contains("://") {
        return Ok(Box::new(LocalSink::new(out)));
    }
    let url = url::Url::parse(out).with_context(|| format!("--out {out}: not a valid URL"))?;
    if url.scheme() == "file" {
        let path = url
            .to_file_path()
            .map_err(|()| anyhow::anyhow!("--out {out}: not an absolute file:// path"))?;
        return Ok(Box::new(LocalSink::new(path)));
    }
    let (store, prefix): (Arc<dyn ObjectStore>, StorePath) =
        kiln_connectors::store::resolve_url(out).with_context(|| format!("--out {out}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    Ok(Box::new(StoreSink {
        store,
        prefix,
        base: out.trim_end_matches('/').to_string(),
        rt,
    }))
}

/// A [`Sink`] on an object store (S3 and friends); puts are atomic by nature.
struct StoreSink {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    base: String,
    rt: tokio::runtime::Runtime,
}

impl StoreSink {
    fn path(&self, rel: &str) -> StorePath {
        rel.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |p, part| p.join(part))
    }

    fn err(&self, op: &'static str, rel: &str, e: object_store::Error) -> GenError {
        GenError::Io {
            op,
            location: self.describe(rel),
            message: e.to_string(),
        }
    }
}

impl Sink for StoreSink {
    fn put(&self, rel: &str, data: Vec<u8>) -> Result<(), GenError> {
        let path = self.path(rel);
        self.rt
            .block_on(self.store.put(&path, PutPayload::from(data)))
            .map(|_| ())
            .map_err(|e| self.err("write", rel, e))
    }

    fn list(&self, rel_dir: &str) -> Result<Vec<String>, GenError> {
        let dir = self.path(rel_dir);
        let listing = self
            .rt
            .block_on(async { self.store.list(Some(&dir)).try_collect::<Vec<_>>().await })
            .map_err(|e| self.err("list", rel_dir, e))?;
        let mut names: Vec<String> = listing
            .into_iter()
            .filter_map(|m| {
                let rest = m.location.prefix_match(&dir)?.collect::<Vec<_>>();
                (rest.len() == 1).then(|| rest[0].as_ref().to_string())
            })
            .collect();
        names.sort();
        Ok(names)
    }

    fn delete(&self, rel: &str) -> Result<(), GenError> {
        let path = self.path(rel);
        self.rt
            .block_on(self.store.delete(&path))
            .map_err(|e| self.err("delete", rel, e))
    }

    fn describe(&self, rel: &str) -> String {
        format!("{}/{rel}", self.base)
    }
}
