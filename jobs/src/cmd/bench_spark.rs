//! `kiln bench spark`: rows/s of a Spark table read through Spark Connect as an Arrow stream
//! (`read = "arrow"`) and as its files (`read = "files"`), next to the same events read as
//! plain Parquet, in one run, with the query results checked equal.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::bail;
use chrono::NaiveDate;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};

/// Arguments of `kiln bench spark`.
#[derive(clap::Args)]
pub struct BenchSparkArgs {
    /// The Spark Connect server, sc://HOST:PORT (e.g. the one `scripts/lib/spark.sh` starts).
    #[arg(long)]
    pub spark: String,
    /// Events (generated once as Parquet, then written by Spark into table
    /// `kiln_bench_events_ROWS` partitioned by dt, once).
    #[arg(long, default_value_t = 2_000_000)]
    pub rows: u64,
    /// Timed reads of each (interleaved); the best is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Working directory (the Parquet copy of the events, the spec).
    #[arg(long, default_value = "bench-spark")]
    pub work: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The query every read answers: every column is decoded, the answers must agree.
const QUERY: &str = "SELECT COUNT(*) AS events, SUM(CAST(dwell_ms AS BIGINT)) AS dwell, \
                     COUNT(DISTINCT user_id) AS users, MAX(ts) AS last_ts, \
                     COUNT(DISTINCT dt) AS days FROM events";

/// The last day of the generated events; the sources read its 9 days.
const END_DATE: &str = "2026-11-21";

/// A spec whose only source is the Spark table, read in `read` mode.
fn spec_text(url: &str, table: &str, read: &str, schema: &[String]) -> String {
    let schema = schema
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "name = \"bench_spark_{read}\"\n\n[[sources]]\nname = \"events\"\nurl = \"{url}\"\n\
         format = \"spark\"\npartition_column = \"dt\"\ndays = [-8, 0]\nschema = [{schema}]\n\n\
         [sources.spark]\ntable = \"{table}\"\nread = \"{read}\"\ntimeout_secs = 120\n\n\
         [[features]]\nname = \"q\"\nsql = \"{QUERY}\"\n\n[[outputs]]\nstatement = \"q\"\n\
         location = \"out\"\nkey = \"events\"\nshards = 1\nformats = [\"parquet\"]\n"
    )
}

/// Runs `kiln bench spark`.
pub fn run(a: BenchSparkArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    std::fs::create_dir_all(&a.work)?;
    let work = std::path::absolute(&a.work)?;
    let events = work.join(format!("events-{}", a.rows));
    if !events.exists() {
        eprintln!("generating {} events into {}", a.rows, events.display());
        let status = Command::new(&exe)
            .args([
                "gen",
                "events",
                "--rows",
                &a.rows.to_string(),
                "--days",
                "9",
            ])
            .args([
                "--end-date",
                END_DATE,
                "--seed",
                "42",
                "--format",
                "parquet",
            ])
            .arg("--out")
            .arg(&events)
            .status()?;
        if !status.success() {
            bail!("kiln gen events --out {} failed", events.display());
        }
    }
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/daily_ctr/job.toml");
    let schema = kiln_engine::JobSpec::load(&example)?.sources[0]
        .schema
        .clone()
        .unwrap_or_default();
    let table = format!("kiln_bench_events_{}", a.rows);
    let date: NaiveDate = END_DATE.parse()?;
    let runtime = super::runtime()?;
    let (best, answer) = runtime.block_on(async {
        let session = kiln_engine::spark::open_session(&a.spark, Some(120.0)).await?;
        let t = Instant::now();
        session
            .execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} USING parquet PARTITIONED BY (dt) AS \
                 SELECT * FROM parquet.`file://{}`",
                events.display()
            ))
            .await?;
        eprintln!(
            "Spark {} table {table} ready in {:.1} s",
            session.version(),
            t.elapsed().as_secs_f64()
        );
        let mut specs = Vec::new();
        for read in ["arrow", "files"] {
            let path = work.join(format!("spark_{read}.toml"));
            std::fs::write(&path, spec_text(&a.spark, &table, read, &schema))?;
            specs.push((read, kiln_engine::JobSpec::load(&path)?));
        }
        // Best seconds per mode: arrow, files, parquet.
        let mut best = [f64::INFINITY; 3];
        let mut answers: Vec<String> = Vec::new();
        for _ in 0..a.repeat.max(1) {
            let mut round = Vec::new();
            for (i, (_, spec)) in specs.iter().enumerate() {
                let t = Instant::now();
                let planned =
                    kiln_engine::job::plan_job(spec, date, &kiln_engine::Overrides::default())
                        .await?;
                let got = planned.ctx.sql(QUERY).await?.collect().await?;
                best[i] = best[i].min(t.elapsed().as_secs_f64());
                round.push(pretty_format_batches(&got)?.to_string());
            }
            let ctx = SessionContext::new_with_config(SessionConfig::new());
            let t = Instant::now();
            ctx.register_parquet(
                "events",
                events.display().to_string(),
                ParquetReadOptions::default().table_partition_cols(vec![(
                    "dt".into(),
                    datafusion::arrow::datatypes::DataType::Utf8,
                )]),
            )
            .await?;
            let got = ctx.sql(QUERY).await?.collect().await?;
            best[2] = best[2].min(t.elapsed().as_secs_f64());
            round.push(pretty_format_batches(&got)?.to_string());
            if round.iter().any(|r| r != &round[2]) {
                bail!(
                    "the reads disagree:\narrow:\n{}\nfiles:\n{}\nparquet:\n{}",
                    round[0],
                    round[1],
                    round[2]
                );
            }
            answers = round;
        }
        Ok::<_, anyhow::Error>((best, answers.pop().unwrap_or_default()))
    })?;
    let rows = a.rows as f64;
    let [arrow_s, files_s, parquet_s] = best;
    let r = serde_json::json!({
        "rows": a.rows,
        "repeat": a.repeat,
        "arrow_seconds": arrow_s,
        "files_seconds": files_s,
        "parquet_seconds": parquet_s,
        "arrow_rows_per_sec": rows / arrow_s,
        "files_rows_per_sec": rows / files_s,
        "parquet_rows_per_sec": rows / parquet_s,
    });
    if a.json {
        println!("{r}");
        return Ok(());
    }
    println!("{answer}");
    let line = |name: &str, s: f64| {
        println!(
            "{name:<44}: {s:.2} s = {:>10.0} rows/s ({:.1}x plain Parquet's time)",
            rows / s,
            s / parquet_s
        );
    };
    line("spark, read = \"arrow\" (Spark streams Arrow)", arrow_s);
    line("spark, read = \"files\" (Kiln reads the files)", files_s);
    line("plain Parquet (the same events)", parquet_s);
    println!(
        "(best of {}; each Spark read includes connecting, the schema and the file list)",
        a.repeat
    );
    Ok(())
}
