//! `kiln bench kafka`: events/s read from a Kafka topic on loopback (Kiln's Kafka table:
//! librdkafka fetches, JSON values checked against the schema) next to the same events read
//! as Parquet, in one run, with the query results checked equal.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use kiln_connectors::kafka::{KafkaAddress, KafkaClient};
use kiln_engine::kafka::{DEFAULT_SPLIT_RECORDS, KafkaScanSpec, KafkaTable};
use kiln_engine::spec::{BadRowPolicy, ValueFormat};
use kiln_engine::text::BadRowLedger;

/// Arguments of `kiln bench kafka`.
#[derive(clap::Args)]
pub struct BenchKafkaArgs {
    /// The broker, HOST:PORT (e.g. the one `scripts/lib/kafka.sh` starts).
    #[arg(long)]
    pub broker: String,
    /// Events (generated once into topic `kiln-bench-events-ROWS` and as Parquet).
    #[arg(long, default_value_t = 2_000_000)]
    pub rows: u64,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Timed reads of each (interleaved); the best is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Working directory (the Parquet copy of the events).
    #[arg(long, default_value = "bench-kafka")]
    pub work: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The query both reads answer: every column is decoded, the answers must agree.
const QUERY: &str = "SELECT COUNT(*) AS events, SUM(CAST(dwell_ms AS BIGINT)) AS dwell, \
                     COUNT(DISTINCT user_id) AS users, MAX(ts) AS last_ts FROM events";

fn gen_events(exe: &std::path::Path, rows: u64, out: &str, extra: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(exe)
        .args(["gen", "events", "--rows", &rows.to_string(), "--days", "9"])
        .args(["--end-date", "2026-11-21", "--seed", "42", "--out", out])
        .args(extra)
        .status()?;
    if !status.success() {
        bail!("kiln gen events --out {out} failed");
    }
    Ok(())
}

/// Runs `kiln bench kafka`.
pub fn run(a: BenchKafkaArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let topic = format!("kiln-bench-events-{}", a.rows);
    let url = format!("kafka://{}/{topic}", a.broker);
    let client = KafkaClient::new(KafkaAddress::parse(&url)?, &Default::default(), None)?;
    let held = |c: &KafkaClient| -> anyhow::Result<i64> {
        Ok(c.window_closed(i64::MAX)?
            .iter()
            .map(|p| p.high_watermark)
            .sum())
    };
    match client.partitions() {
        Ok(_) if held(&client)? == a.rows as i64 => {}
        Ok(_) => bail!(
            "topic `{topic}` on {} holds {} records, not {}: delete it or pick other --rows",
            a.broker,
            held(&client)?,
            a.rows
        ),
        Err(kiln_connectors::kafka::KafkaError::NoTopic { .. }) => {
            eprintln!("producing {} events to {url}", a.rows);
            gen_events(
                &exe,
                a.rows,
                &url,
                &["--partitions", &a.partitions.to_string()],
            )?;
        }
        Err(e) => return Err(e.into()),
    }
    std::fs::create_dir_all(&a.work)?;
    let events = std::path::absolute(a.work.join(format!("events-{}", a.rows)))?;
    if !events.exists() {
        eprintln!("generating {} events into {}", a.rows, events.display());
        gen_events(
            &exe,
            a.rows,
            &events.display().to_string(),
            &["--format", "parquet"],
        )?;
    }
    let spec_path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/daily_ctr/job.toml");
    let spec = kiln_engine::JobSpec::load(&spec_path)?;
    let schema = spec.sources[0].schema.clone().unwrap_or_default();
    let ranges = client.resolve_window(0, i64::MAX / 2)?.ranges;
    let scan = KafkaScanSpec {
        source: "events".into(),
        address: client.address().clone(),
        properties: Default::default(),
        timeout_secs: None,
        value_format: ValueFormat::Json,
        value_schema: schema,
        splits: ranges
            .iter()
            .flat_map(|r| r.split(DEFAULT_SPLIT_RECORDS))
            .collect(),
        on_bad_rows: BadRowPolicy::Fail,
        one_partition: false,
    };
    let runtime = super::runtime()?;
    let (kafka_s, parquet_s, answer) = runtime.block_on(async {
        let mut kafka_best = f64::INFINITY;
        let mut parquet_best = f64::INFINITY;
        let mut answers = Vec::new();
        for _ in 0..a.repeat.max(1) {
            let ctx = SessionContext::new_with_config(SessionConfig::new());
            let ledger = Arc::new(BadRowLedger::new(BadRowPolicy::Fail));
            ctx.register_table(
                "events",
                Arc::new(KafkaTable::try_new(scan.clone(), ledger)?),
            )?;
            let t = Instant::now();
            let k = ctx.sql(QUERY).await?.collect().await?;
            kafka_best = kafka_best.min(t.elapsed().as_secs_f64());

            let ctx = SessionContext::new_with_config(SessionConfig::new());
            ctx.register_parquet(
                "events",
                events.display().to_string(),
                ParquetReadOptions::default(),
            )
            .await?;
            let t = Instant::now();
            let p = ctx.sql(QUERY).await?.collect().await?;
            parquet_best = parquet_best.min(t.elapsed().as_secs_f64());
            let (k, p) = (
                pretty_format_batches(&k)?.to_string(),
                pretty_format_batches(&p)?.to_string(),
            );
            if k != p {
                bail!("the Kafka and Parquet reads disagree:\nkafka:\n{k}\nparquet:\n{p}");
            }
            answers.push(k);
        }
        Ok::<_, anyhow::Error>((kafka_best, parquet_best, answers.pop().unwrap_or_default()))
    })?;
    let rows = a.rows as f64;
    let r = serde_json::json!({
        "rows": a.rows,
        "partitions": ranges.len(),
        "repeat": a.repeat,
        "kafka_seconds": kafka_s,
        "parquet_seconds": parquet_s,
        "kafka_events_per_sec": rows / kafka_s,
        "parquet_events_per_sec": rows / parquet_s,
        "parquet_over_kafka": kafka_s / parquet_s,
    });
    if a.json {
        println!("{r}");
        return Ok(());
    }
    println!("{answer}");
    println!(
        "kafka   ({} partitions, JSON values): {:.2} s = {:.0} events/s (best of {})",
        ranges.len(),
        kafka_s,
        rows / kafka_s,
        a.repeat
    );
    println!(
        "parquet (same events)              : {:.2} s = {:.0} events/s; Kafka takes {:.1}x \
         as long",
        parquet_s,
        rows / parquet_s,
        kafka_s / parquet_s
    );
    Ok(())
}
