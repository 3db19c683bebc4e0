//! Statistics computed in the write pass: `kiln features` commits `_stats.json` (listed and
//! checksummed in the manifest), `kiln stats` prints it; the values agree with the committed
//! rows, are the same bytes on a rerun, and a dataset against itself has no drift.

mod common;

use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int32Type};
use kiln_connectors::dataset::ShardFormat;

const DATE: &str = "2026-11-20";

fn run_example(events: &Path, out: &Path) {
    common::kiln_ok(&[
        "features",
        common::example_spec().to_str().unwrap(),
        "--date",
        DATE,
        "--source",
        &format!("events={}", events.display()),
        "--out",
        out.to_str().unwrap(),
    ]);
}

fn manifest(dataset: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(format!("{dataset}/_manifest.json")).unwrap()).unwrap()
}

#[test]
fn statistics_are_committed_with_the_dataset_and_match_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    common::gen_events(&events, 100_000, 5);
    let out = dir.path().join("out");
    run_example(&events, &out);
    let dataset = format!("{}/examples", out.display());

    let m = manifest(&dataset);
    let file = m["stats"]["path"]
        .as_str()
        .expect("the manifest lists _stats.json");
    assert!(file.ends_with("/_stats.json"), "{file}");
    assert!(
        std::path::Path::new(&format!("{dataset}/{file}")).exists(),
        "{file}"
    );
    assert!(
        m["shards"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s.get("stats_state").is_none()),
        "shard states stay out of the manifest"
    );

    let stdout = common::kiln_ok(&["stats", &dataset, "--json"]);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let stats = &report["statistics"];
    assert_eq!(stats["num_rows"], m["total_rows"]);
    let column = |name: &str| {
        stats["columns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no column {name}"))
            .clone()
    };

    // The committed rows, read back, give the same figures.
    let batches = common::read_dataset(&dataset, ShardFormat::Parquet);
    let (mut rows, mut positives) = (0u64, 0u64);
    let (mut ctr_nulls, mut price_min, mut price_max) = (0u64, f64::INFINITY, f64::NEG_INFINITY);
    for b in &batches {
        rows += b.num_rows() as u64;
        let label = b
            .column_by_name("label")
            .unwrap()
            .as_primitive::<Int32Type>();
        positives += label.values().iter().filter(|v| **v == 1).count() as u64;
        ctr_nulls += b.column_by_name("u_ctr_7d").unwrap().null_count() as u64;
        let price = b
            .column_by_name("price")
            .unwrap()
            .as_primitive::<Float64Type>();
        for p in price.iter().flatten() {
            price_min = price_min.min(p);
            price_max = price_max.max(p);
        }
    }
    assert_eq!(stats["num_rows"].as_u64(), Some(rows));
    let label = column("label");
    assert_eq!(label["null_count"], 0);
    let mean = label["numeric"]["mean"].as_f64().unwrap();
    assert!(
        (mean - positives as f64 / rows as f64).abs() < 1e-12,
        "label mean {mean} vs {positives}/{rows}"
    );
    assert_eq!(column("u_ctr_7d")["null_count"].as_u64(), Some(ctr_nulls));
    assert!(ctr_nulls > 0, "the example has users without 7-day views");
    let price = column("price");
    assert_eq!(price["numeric"]["min"].as_f64(), Some(price_min));
    assert_eq!(price["numeric"]["max"].as_f64(), Some(price_max));
    let device = column("device");
    let top: Vec<&str> = device["string"]["top_values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["value"].as_str().unwrap())
        .collect();
    assert_eq!(top.len(), 3, "{device}");

    // A rerun writes the same statistics bytes.
    let out2 = dir.path().join("out2");
    run_example(&events, &out2);
    let m2 = manifest(&format!("{}/examples", out2.display()));
    assert_eq!(m2["stats"]["sha256"], m["stats"]["sha256"]);

    // Against itself: no drift; a TFDV protobuf is written.
    let tfdv = dir.path().join("stats.pb");
    let stdout = common::kiln_ok(&[
        "stats",
        &dataset,
        "--baseline",
        &dataset,
        "--json",
        "--tfdv",
        tfdv.to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let drift = report["drift"].as_array().unwrap();
    assert!(!drift.is_empty());
    assert!(
        drift.iter().all(|d| d["value"].as_f64() == Some(0.0)),
        "{drift:?}"
    );
    assert!(std::fs::metadata(&tfdv).unwrap().len() > 1000);

    // A tampered statistics file is refused, naming it.
    let path = format!("{dataset}/{file}");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let out = common::kiln(&["stats", &dataset]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("_stats.json") && err.contains("SHA-256"),
        "{err}"
    );
}

#[test]
fn an_output_can_turn_statistics_off() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    common::gen_events(&events, 20_000, 3);
    // statistics = false, and so none of the example's expectations (checked on them).
    let mut spec: toml::Table =
        toml::from_str(&std::fs::read_to_string(common::example_spec()).unwrap()).unwrap();
    let out = spec["outputs"].as_array_mut().unwrap()[0]
        .as_table_mut()
        .unwrap();
    out.insert("statistics".into(), toml::Value::Boolean(false));
    out.remove("expect").expect("the example has expectations");
    let spec = toml::to_string(&spec).unwrap();
    let spec_path = common::example_spec().with_file_name("job-no-statistics-test.toml");
    let spec_path = dir.path().join(spec_path.file_name().unwrap());
    std::fs::write(&spec_path, spec).unwrap();
    let out = dir.path().join("out");
    common::kiln_ok(&[
        "features",
        spec_path.to_str().unwrap(),
        "--date",
        DATE,
        "--source",
        &format!("events={}", events.display()),
        "--out",
        out.to_str().unwrap(),
    ]);
    let dataset = format!("{}/examples", out.display());
    assert!(manifest(&dataset).get("stats").is_none());
    let run = std::fs::read_dir(&dataset)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("run-"))
        .unwrap()
        .path();
    assert!(!run.join("_stats.json").exists());
    let out = common::kiln(&["stats", &dataset]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lists no statistics"), "{err}");
}
