//! End-to-end tests of `kiln gen events`: they run the `kiln` binary and read its files back.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use arrow::array::{
    Array, AsArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sha2::{Digest, Sha256};

const US_PER_DAY: i64 = 86_400_000_000;
const WINDOW_US: i64 = 30 * 60 * 1_000_000;

/// Runs `kiln gen events ARGS --json` and returns its JSON report.
fn kiln_gen(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["gen", "events", "--json"])
        .args(args)
        .output()
        .expect("run kiln");
    assert!(
        out.status.success(),
        "kiln gen events {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

/// All files under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn sha256_of_tree(dir: &Path) -> Vec<(PathBuf, String)> {
    files(dir)
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(&f)).unwrap();
            (f, format!("{:x}", Sha256::digest(&bytes)))
        })
        .collect()
}

fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let f = std::fs::File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// The events of a generated directory, column by column, in file order.
#[derive(Default)]
struct Events {
    event_id: Vec<i64>,
    user_id: Vec<i64>,
    item_id: Vec<i64>,
    ts: Vec<i64>,
    event_type: Vec<String>,
    price: Vec<Option<f64>>,
    city: Vec<Option<String>>,
    device: Vec<String>,
    dwell_ms: Vec<i32>,
    /// The partition date (days since the epoch) of each row.
    dt: Vec<i64>,
}

fn day_number(date: &str) -> i64 {
    let d = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
    d.signed_duration_since(chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap())
        .num_days()
}

fn read_events(dir: &Path) -> Events {
    let mut ev = Events::default();
    for f in files(dir) {
        let part = f.parent().unwrap().to_str().unwrap();
        let date = part.strip_prefix("dt=").expect("dt=YYYY-MM-DD partition");
        let day = day_number(date);
        for b in read_parquet(&dir.join(&f)) {
            let col = |name: &str| b.column_by_name(name).unwrap().clone();
            let i64s = |name: &str| {
                col(name)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            };
            let strs = |name: &str| -> Vec<Option<String>> {
                let c = col(name);
                let s = c.as_any().downcast_ref::<StringArray>().unwrap();
                s.iter().map(|v| v.map(str::to_string)).collect()
            };
            ev.event_id.extend(i64s("event_id"));
            ev.user_id.extend(i64s("user_id"));
            ev.item_id.extend(i64s("item_id"));
            let ts = col("ts");
            let ts = ts
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap();
            ev.ts.extend(ts.values().iter());
            ev.event_type
                .extend(strs("event_type").into_iter().map(Option::unwrap));
            let price = col("price");
            let price = price.as_any().downcast_ref::<Float64Array>().unwrap();
            ev.price.extend(price.iter());
            ev.city.extend(strs("city"));
            ev.device
                .extend(strs("device").into_iter().map(Option::unwrap));
            let dwell = col("dwell_ms");
            ev.dwell_ms.extend(
                dwell
                    .as_any()
                    .downcast_ref::<Int32Array>()
                    .unwrap()
                    .values()
                    .iter(),
            );
            ev.dt.extend(std::iter::repeat_n(day, b.num_rows()));
        }
    }
    ev
}

/// Labels of the example job for views with `ts` in `[day, day+1)`, recomputed from the files:
/// the same user clicked the same item at `view.ts < click.ts <= view.ts + 30 min`.
/// Returns `(event_id, label)` per view.
fn labels_for_day(ev: &Events, day: i64) -> Vec<(i64, bool)> {
    let mut clicks: HashMap<(i64, i64), Vec<i64>> = HashMap::new();
    for k in 0..ev.ts.len() {
        if ev.event_type[k] == "click" {
            clicks
                .entry((ev.user_id[k], ev.item_id[k]))
                .or_default()
                .push(ev.ts[k]);
        }
    }
    let (lo, hi) = (day * US_PER_DAY, (day + 1) * US_PER_DAY);
    (0..ev.ts.len())
        .filter(|&k| ev.event_type[k] == "view" && ev.ts[k] >= lo && ev.ts[k] < hi)
        .map(|k| {
            let t = ev.ts[k];
            let hit = clicks
                .get(&(ev.user_id[k], ev.item_id[k]))
                .is_some_and(|c| c.iter().any(|&c| c > t && c <= t + WINDOW_US));
            (ev.event_id[k], hit)
        })
        .collect()
}

/// ROC AUC by brute-force pair counting over score buckets (independent of the generator's).
fn auc(scored: &[(f64, bool)]) -> f64 {
    let mut v = scored.to_vec();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut neg_below, mut wins) = (0f64, 0f64);
    let mut i = 0;
    let pos: f64 = v.iter().filter(|x| x.1).count() as f64;
    let neg = v.len() as f64 - pos;
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let p = v[i..j].iter().filter(|x| x.1).count() as f64;
        let n = (j - i) as f64 - p;
        wins += p * (neg_below + n / 2.0);
        neg_below += n;
        i = j;
    }
    wins / (pos * neg)
}

#[test]
fn same_arguments_give_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let args = |out: &Path, seed: &str, threads: &str| {
        kiln_gen(&[
            "--rows",
            "120000",
            "--days",
            "3",
            "--seed",
            seed,
            "--files",
            "2",
            "--threads",
            threads,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    args(&a, "7", "1");
    args(&b, "7", "3");
    args(&c, "8", "2");
    let (ha, hb, hc) = (sha256_of_tree(&a), sha256_of_tree(&b), sha256_of_tree(&c));
    assert_eq!(ha.len(), 6, "3 days x 2 files: {ha:?}");
    assert_eq!(ha, hb, "same seed, different thread counts: same bytes");
    assert_eq!(
        ha.iter().map(|x| &x.0).collect::<Vec<_>>(),
        hc.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    for (x, y) in ha.iter().zip(&hc) {
        assert_ne!(x.1, y.1, "another seed changes {}", x.0.display());
    }
}

#[test]
fn schema_layout_counts_and_domains() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("events");
    let rows = 300_000u64;
    let report = kiln_gen(&[
        "--rows",
        &rows.to_string(),
        "--days",
        "4",
        "--seed",
        "3",
        "--end-date",
        "2026-03-02",
        "--out",
        &format!("file://{}", out.display()),
    ]);
    assert_eq!(report["rows"], rows);
    assert_eq!(report["files"], 4);
    assert_eq!(report["days"], 4);
    assert!(report["seconds"].as_f64().unwrap() > 0.0);
    let names: Vec<String> = files(&out)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    // 2026-02-27 .. 2026-03-02 inclusive: the range crosses the end of February.
    assert_eq!(
        names,
        [
            "dt=2026-02-27/part-00000.parquet",
            "dt=2026-02-28/part-00000.parquet",
            "dt=2026-03-01/part-00000.parquet",
            "dt=2026-03-02/part-00000.parquet"
        ]
    );
    let total_bytes: u64 = names
        .iter()
        .map(|n| std::fs::metadata(out.join(n)).unwrap().len())
        .sum();
    assert_eq!(report["bytes"], total_bytes);

    // Schema, exactly as specs/daily_ctr.md.
    let batches = read_parquet(&out.join(&names[0]));
    let schema = batches[0].schema();
    let fields: Vec<(String, DataType, bool)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
        .collect();
    assert_eq!(
        fields,
        vec![
            ("event_id".into(), DataType::Int64, false),
            ("user_id".into(), DataType::Int64, false),
            ("item_id".into(), DataType::Int64, false),
            (
                "ts".into(),
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false
            ),
            ("event_type".into(), DataType::Utf8, false),
            ("price".into(), DataType::Float64, true),
            ("city".into(), DataType::Utf8, true),
            ("device".into(), DataType::Utf8, false),
            ("dwell_ms".into(), DataType::Int32, false),
        ]
    );
    assert_eq!(
        batches[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .null_count(),
        0
    );

    let ev = read_events(&out);
    let n = ev.event_id.len();
    assert_eq!(n as u64, rows);
    // Per-day rows as reported, each close to rows / days.
    let per_day = report["per_day"].as_array().unwrap();
    for d in per_day {
        let r = d["rows"].as_u64().unwrap();
        assert!(r.abs_diff(rows / 4) < rows / 40, "day {d}");
    }
    // Unique ids 1..=rows, increasing in file order (files are read in date order).
    assert!(ev.event_id.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(ev.event_id[0], 1);
    assert_eq!(*ev.event_id.last().unwrap(), rows as i64);
    let unique: HashSet<i64> = ev.event_id.iter().copied().collect();
    assert_eq!(unique.len(), n);
    // ts inside its partition day, sorted.
    for k in 0..n {
        assert_eq!(ev.ts[k].div_euclid(US_PER_DAY), ev.dt[k], "row {k}");
    }
    assert!(ev.ts.windows(2).all(|w| w[0] <= w[1]), "sorted by ts");

    // Domains.
    let mut types: HashMap<&str, usize> = HashMap::new();
    for t in &ev.event_type {
        *types.entry(t.as_str()).or_default() += 1;
    }
    let keys: HashSet<&str> = types.keys().copied().collect();
    assert_eq!(keys, HashSet::from(["view", "click", "cart", "purchase"]));
    assert!(
        ev.device
            .iter()
            .all(|d| ["mobile", "desktop", "tablet"].contains(&d.as_str()))
    );
    assert!(ev.dwell_ms.iter().all(|&d| (100..=600_000).contains(&d)));
    assert!(ev.price.iter().flatten().all(|&p| (0.5..1e6).contains(&p)));
    assert!(ev.user_id.iter().all(|&u| (1..=60_000).contains(&u)));
    assert!(ev.item_id.iter().all(|&i| (1..=30_000).contains(&i)));
    assert!(ev.city.iter().flatten().all(|c| !c.is_empty()));

    // Null fractions and the event mix.
    let frac = |c: usize| c as f64 / n as f64;
    let null_city = frac(ev.city.iter().filter(|c| c.is_none()).count());
    let null_price = frac(ev.price.iter().filter(|p| p.is_none()).count());
    assert!((0.07..0.13).contains(&null_city), "null city {null_city}");
    assert!(
        (0.03..0.08).contains(&null_price),
        "null price {null_price}"
    );
    let ctr = types["click"] as f64 / types["view"] as f64;
    assert!((0.05..0.10).contains(&ctr), "CTR {ctr}");
    assert!((report["ctr"].as_f64().unwrap() - ctr).abs() < 1e-12);
    assert!(types["cart"] < types["click"] && types["purchase"] < types["cart"]);
    assert!(frac(types["view"]) > 0.85, "views {:?}", types);

    // Popularity is skewed: the top 1% of users have far more than 1% of the events.
    let mut per_user: HashMap<i64, usize> = HashMap::new();
    for &u in &ev.user_id {
        *per_user.entry(u).or_default() += 1;
    }
    let mut counts: Vec<usize> = per_user.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let top: usize = counts[..600].iter().sum();
    assert!(frac(top) > 0.05, "top 1% of users: {}", frac(top));

    // Diurnal: evening (18-22 UTC) busier than night (2-6 UTC).
    let hour_count = |lo: i64, hi: i64| {
        ev.ts
            .iter()
            .filter(|&&t| (lo..hi).contains(&(t.rem_euclid(US_PER_DAY) / 3_600_000_000)))
            .count()
    };
    assert!(hour_count(18, 22) > 2 * hour_count(2, 6));

    // Sessions: a user's consecutive views are often seconds to minutes apart.
    let mut last: HashMap<i64, i64> = HashMap::new();
    let (mut close, mut total) = (0usize, 0usize);
    for k in 0..n {
        if ev.event_type[k] != "view" {
            continue;
        }
        if let Some(prev) = last.insert(ev.user_id[k], ev.ts[k]) {
            total += 1;
            if ev.ts[k] - prev < 10 * 60 * 1_000_000 {
                close += 1;
            }
        }
    }
    assert!(close as f64 > 0.5 * total as f64, "{close} of {total}");
}

#[test]
fn clicks_follow_the_documented_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("events");
    let truth = tmp.path().join("truth.parquet");
    let report = kiln_gen(&[
        "--rows",
        "900000",
        "--days",
        "9",
        "--seed",
        "42",
        "--out",
        out.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
    ]);
    let ev = read_events(&out);
    // The example job's run date: the day before --end-date, with 7 history days before it.
    let target = day_number("2026-11-20");
    assert_eq!(report["ceiling"]["date"], "2026-11-20");

    // The truth file: one p_click per view.
    let mut p_of: HashMap<i64, f64> = HashMap::new();
    for b in read_parquet(&truth) {
        let ids = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
        let ps = b.column(1).as_primitive::<arrow::datatypes::Float64Type>();
        for k in 0..b.num_rows() {
            p_of.insert(ids.value(k), ps.value(k));
        }
    }
    let views = ev.event_type.iter().filter(|t| *t == "view").count();
    assert_eq!(p_of.len(), views);
    assert!(p_of.values().all(|p| *p > 0.0 && *p < 1.0));

    // The ceiling, recomputed from the files: it matches the generator's figure.
    let labelled = labels_for_day(&ev, target);
    assert_eq!(report["ceiling"]["views"], labelled.len());
    let positives = labelled.iter().filter(|x| x.1).count();
    assert_eq!(report["ceiling"]["positives"], positives);
    let scored: Vec<(f64, bool)> = labelled.iter().map(|(id, l)| (p_of[id], *l)).collect();
    let a = auc(&scored);
    let reported = report["ceiling"]["auc"].as_f64().unwrap();
    assert!(
        (a - reported).abs() < 1e-9,
        "AUC {a} vs reported {reported}"
    );
    assert!((0.70..0.90).contains(&a), "ceiling AUC {a}");

    // Calibration: the label rate rises with p, and is close to p (minus late clicks).
    let mut by_p = scored.clone();
    by_p.sort_by(|x, y| x.0.total_cmp(&y.0));
    let tenth = by_p.len() / 10;
    let rate = |s: &[(f64, bool)]| s.iter().filter(|x| x.1).count() as f64 / s.len() as f64;
    let mean_p = |s: &[(f64, bool)]| s.iter().map(|x| x.0).sum::<f64>() / s.len() as f64;
    let (low, high) = (&by_p[..tenth], &by_p[by_p.len() - tenth..]);
    assert!(
        rate(high) > 4.0 * rate(low),
        "{} vs {}",
        rate(high),
        rate(low)
    );
    assert!((rate(high) / mean_p(high) - 0.92).abs() < 0.1);

    // Context: CTR by device and hour as the model says (desktop > mobile > tablet, evening >
    // morning), measured on all views through their clicks.
    let mut by: HashMap<String, (f64, f64)> = HashMap::new();
    for k in 0..ev.ts.len() {
        let key_dev = ev.device[k].clone();
        let h = ev.ts[k].rem_euclid(US_PER_DAY) / 3_600_000_000;
        let key_hour = if (19..24).contains(&h) {
            "evening"
        } else if (6..12).contains(&h) {
            "morning"
        } else {
            "other"
        };
        for key in [key_dev, key_hour.to_string()] {
            let e = by.entry(key).or_default();
            match ev.event_type[k].as_str() {
                "view" => e.0 += 1.0,
                "click" => e.1 += 1.0,
                _ => {}
            }
        }
    }
    let ctr = |k: &str| by[k].1 / by[k].0;
    assert!(
        ctr("desktop") > ctr("mobile") && ctr("mobile") > ctr("tablet"),
        "{by:?}"
    );
    assert!(ctr("evening") > ctr("morning"), "{by:?}");

    // Persistent user propensity: users with a high CTR on the 7 history days click more on
    // the target day than users with a low one.
    let mut hist: HashMap<i64, (u32, u32)> = HashMap::new();
    for k in 0..ev.ts.len() {
        if ev.dt[k] < target && ev.dt[k] >= target - 7 {
            let e = hist.entry(ev.user_id[k]).or_default();
            match ev.event_type[k].as_str() {
                "view" => e.0 += 1,
                "click" => e.1 += 1,
                _ => {}
            }
        }
    }
    let user_of: HashMap<i64, i64> = (0..ev.ts.len())
        .map(|k| (ev.event_id[k], ev.user_id[k]))
        .collect();
    let (mut hi, mut lo) = ((0u32, 0u32), (0u32, 0u32));
    for (id, label) in &labelled {
        let Some(&(v, c)) = hist.get(&user_of[id]) else {
            continue;
        };
        if v < 10 {
            continue;
        }
        let bucket = if c as f64 / v as f64 > 0.12 {
            &mut hi
        } else if (c as f64 / v as f64) < 0.04 {
            &mut lo
        } else {
            continue;
        };
        bucket.0 += 1;
        bucket.1 += u32::from(*label);
    }
    let (r_hi, r_lo) = (hi.1 as f64 / hi.0 as f64, lo.1 as f64 / lo.0 as f64);
    assert!(hi.0 > 1000 && lo.0 > 1000, "{hi:?} {lo:?}");
    assert!(r_hi > 2.0 * r_lo, "history CTR > 12%: {r_hi}, < 4%: {r_lo}");

    // Some clicks arrive after the 30-minute window, so labels are not "all clicks".
    let on_target_views = labelled.len();
    let clicks_of_target_views = ev
        .event_type
        .iter()
        .zip(&ev.dt)
        .filter(|(t, d)| *t == "click" && **d == target)
        .count();
    assert!(
        positives < clicks_of_target_views,
        "{positives} {clicks_of_target_views}"
    );
    assert!(on_target_views > 80_000);
}

#[test]
fn csv_and_jsonl_formats() {
    let tmp = tempfile::tempdir().unwrap();
    for (format, ext) in [("csv", "csv"), ("jsonl", "jsonl")] {
        let out = tmp.path().join(format);
        let report = kiln_gen(&[
            "--rows",
            "5000",
            "--days",
            "2",
            "--files",
            "2",
            "--format",
            format,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(report["files"], 4);
        let names = files(&out);
        assert_eq!(names.len(), 4);
        let mut lines = 0;
        for f in &names {
            assert_eq!(f.extension().unwrap(), ext);
            let text = std::fs::read_to_string(out.join(f)).unwrap();
            let mut it = text.lines();
            if format == "csv" {
                assert_eq!(
                    it.next().unwrap(),
                    "event_id,user_id,item_id,ts,event_type,price,city,device,dwell_ms"
                );
                let first = it.clone().next().unwrap();
                assert!(
                    first.contains("T") && first.contains('Z') || first.contains("+00:00"),
                    "{first}"
                );
            } else {
                let first: serde_json::Value =
                    serde_json::from_str(text.lines().next().unwrap()).unwrap();
                assert!(first["event_id"].is_i64());
                assert!(first.get("city").is_some() && first.get("price").is_some());
            }
            lines += it.count();
        }
        assert_eq!(lines, 5000, "{format}");
    }
}

#[test]
fn rerun_replaces_a_days_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ev");
    let o = out.to_str().unwrap();
    kiln_gen(&["--rows", "3000", "--days", "1", "--files", "3", "--out", o]);
    assert_eq!(files(&out).len(), 3);
    std::fs::write(out.join("dt=2026-11-21/notes.txt"), "kept").unwrap();
    kiln_gen(&["--rows", "3000", "--days", "1", "--files", "1", "--out", o]);
    let names: Vec<String> = files(&out)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "dt=2026-11-21/notes.txt",
            "dt=2026-11-21/part-00000.parquet"
        ]
    );
}

#[test]
fn bad_arguments_are_named() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["gen", "events"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let tmp = tempfile::tempdir().unwrap();
    let o = tmp.path().to_str().unwrap();
    assert!(run(&["--rows", "0", "--out", o]).contains("--rows"));
    assert!(run(&["--files", "0", "--rows", "10", "--out", o]).contains("--files"));
    assert!(run(&["--end-date", "2026-13-01", "--out", o]).contains("--end-date"));
    assert!(run(&["--format", "xml", "--out", o]).contains("--format"));
    // An output path below a regular file cannot be created: the error names it.
    let file = tmp.path().join("plain");
    std::fs::write(&file, "x").unwrap();
    let err = run(&[
        "--rows",
        "10",
        "--days",
        "1",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(err.contains("plain"), "{err}");
}

/// The figures quoted in `docs/generator.md`, for the example setup (10M rows, 9 days ending
/// 2026-11-21, seed 42, run date 2026-11-20). Slow; run explicitly:
/// `cargo test -p kiln-jobs --test gen -- --ignored --nocapture example_figures`
/// (`KILN_GEN_ROWS` overrides the row count).
#[test]
#[ignore]
fn example_figures() {
    let rows: u64 = std::env::var("KILN_GEN_ROWS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("events");
    let truth = tmp.path().join("truth.parquet");
    let report = kiln_gen(&[
        "--rows",
        &rows.to_string(),
        "--days",
        "9",
        "--seed",
        "42",
        "--end-date",
        "2026-11-21",
        "--out",
        out.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
    ]);
    println!(
        "generated {} rows, {} bytes in {:.2} s (this build)",
        report["rows"], report["bytes"], report["seconds"]
    );
    for d in report["per_day"].as_array().unwrap() {
        println!(
            "  {} rows {} views {} clicks {} bytes {}",
            d["date"], d["rows"], d["views"], d["clicks"], d["bytes"]
        );
    }
    let ev = read_events(&out);
    let n = ev.ts.len() as f64;
    let mut types: HashMap<&str, usize> = HashMap::new();
    for t in &ev.event_type {
        *types.entry(t.as_str()).or_default() += 1;
    }
    println!(
        "event mix: view {:.4} click {:.4} cart {:.4} purchase {:.4}; CTR {:.4}",
        types["view"] as f64 / n,
        types["click"] as f64 / n,
        types["cart"] as f64 / n,
        types["purchase"] as f64 / n,
        types["click"] as f64 / types["view"] as f64
    );
    println!(
        "null price {:.4}, null city {:.4}",
        ev.price.iter().filter(|p| p.is_none()).count() as f64 / n,
        ev.city.iter().filter(|c| c.is_none()).count() as f64 / n
    );
    let share = |ids: &[i64]| {
        let mut c: HashMap<i64, usize> = HashMap::new();
        for &i in ids {
            *c.entry(i).or_default() += 1;
        }
        let mut v: Vec<usize> = c.values().copied().collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        let top = v[..v.len().div_ceil(100)].iter().sum::<usize>() as f64 / n;
        (v.len(), top, v[0], v[v.len() / 2])
    };
    let (u, ut, umax, umed) = share(&ev.user_id);
    let (i, it, imax, imed) = share(&ev.item_id);
    println!("users active {u}, top 1% have {ut:.3} of events, max {umax}, median {umed}");
    println!("items active {i}, top 1% have {it:.3} of events, max {imax}, median {imed}");

    // The example's run date: views of 2026-11-20, history 2026-11-13 .. 2026-11-19.
    let target = day_number("2026-11-20");
    let labelled = labels_for_day(&ev, target);
    let mut p_of: HashMap<i64, f64> = HashMap::new();
    for b in read_parquet(&truth) {
        let ids = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
        let ps = b.column(1).as_primitive::<arrow::datatypes::Float64Type>();
        for k in 0..b.num_rows() {
            p_of.insert(ids.value(k), ps.value(k));
        }
    }
    let pos = labelled.iter().filter(|x| x.1).count();
    let ceiling = auc(&labelled
        .iter()
        .map(|(id, l)| (p_of[id], *l))
        .collect::<Vec<_>>());
    println!(
        "run date 2026-11-20: {} examples, label rate {:.4}, ceiling AUC {:.4} (reported {})",
        labelled.len(),
        pos as f64 / labelled.len() as f64,
        ceiling,
        report["ceiling"]["auc"]
    );

    // A model-free baseline on history features: smoothed 7-day user CTR and item CTR.
    let mut u7: HashMap<i64, (f64, f64)> = HashMap::new();
    let mut i7: HashMap<i64, (f64, f64)> = HashMap::new();
    for k in 0..ev.ts.len() {
        if ev.dt[k] < target && ev.dt[k] >= target - 7 {
            let (v, c) = match ev.event_type[k].as_str() {
                "view" => (1.0, 0.0),
                "click" => (0.0, 1.0),
                _ => continue,
            };
            let e = u7.entry(ev.user_id[k]).or_default();
            e.0 += v;
            e.1 += c;
            let e = i7.entry(ev.item_id[k]).or_default();
            e.0 += v;
            e.1 += c;
        }
    }
    let row: HashMap<i64, usize> = (0..ev.ts.len()).map(|k| (ev.event_id[k], k)).collect();
    let smooth = |s: Option<&(f64, f64)>| {
        let (v, c) = s.copied().unwrap_or_default();
        let r = (c + 0.07 * 20.0) / (v + 20.0);
        (r / (1.0 - r)).ln()
    };
    let score = |f: &dyn Fn(usize) -> f64| {
        auc(&labelled
            .iter()
            .map(|(id, l)| (f(row[id]), *l))
            .collect::<Vec<_>>())
    };
    println!(
        "baseline AUCs: user 7d CTR {:.4}, item 7d CTR {:.4}, both {:.4}",
        score(&|k| smooth(u7.get(&ev.user_id[k]))),
        score(&|k| smooth(i7.get(&ev.item_id[k]))),
        score(&|k| smooth(u7.get(&ev.user_id[k])) + smooth(i7.get(&ev.item_id[k])))
    );
}

#[test]
fn planted_defects_change_only_their_day() {
    let tmp = tempfile::tempdir().unwrap();
    let gen_to = |name: &str, plants: &[&str]| {
        let out = tmp.path().join(name);
        let mut args = vec![
            "--rows",
            "60000",
            "--days",
            "3",
            "--end-date",
            "2026-11-21",
            "--out",
            out.to_str().unwrap(),
        ];
        for p in plants {
            args.extend(["--plant", p]);
        }
        kiln_gen(&args);
        out
    };
    let clean = gen_to("clean", &[]);
    let planted = gen_to(
        "planted",
        &["device-mix@2026-11-20", "null-price@2026-11-20"],
    );
    let (hc, hp) = (sha256_of_tree(&clean), sha256_of_tree(&planted));
    for (c, p) in hc.iter().zip(&hp) {
        let planted_day = c.0.starts_with("dt=2026-11-20");
        assert_eq!(
            c.1 != p.1,
            planted_day,
            "{}: changed iff planted",
            c.0.display()
        );
    }
    let day = |dir: &Path| {
        let ev = read_events(dir);
        let d = day_number("2026-11-20");
        let idx: Vec<usize> = (0..ev.dt.len()).filter(|&i| ev.dt[i] == d).collect();
        let tablet = idx.iter().filter(|&&i| ev.device[i] == "tablet").count() as f64;
        let null_price = idx.iter().filter(|&&i| ev.price[i].is_none()).count() as f64;
        let n = idx.len() as f64;
        (
            tablet / n,
            null_price / n,
            ev.event_id.clone(),
            ev.user_id.clone(),
        )
    };
    let (tablet_c, null_c, ids_c, users_c) = day(&clean);
    let (tablet_p, null_p, ids_p, users_p) = day(&planted);
    assert!(
        tablet_c < 0.2 && tablet_p > 0.5,
        "tablet share {tablet_c} -> {tablet_p}"
    );
    // 30% of the prices that were present are removed.
    let expected = null_c + 0.3 * (1.0 - null_c);
    assert!(
        (null_p - expected).abs() < 0.02,
        "null price share {null_c} -> {null_p}, expected about {expected}"
    );
    assert_eq!(ids_c, ids_p, "same events");
    assert_eq!(users_c, users_p, "same users");

    let bad = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["gen", "events", "--rows", "100", "--days", "2", "--out"])
        .arg(tmp.path().join("bad"))
        .args(["--plant", "device-mix@2026-10-01"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        stderr.contains("--plant") && stderr.contains("device-mix@2026-10-01 is outside"),
        "{stderr}"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["gen", "events", "--rows", "100", "--out"])
        .arg(tmp.path().join("bad"))
        .args(["--plant", "nulls@2026-11-20"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("unknown kind `nulls` (known: device-mix, null-price)"),
        "{stderr}"
    );
}
