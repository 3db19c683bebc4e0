//! End-to-end tests of the trainer on synthetic click data with a real signal.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int32Type, Schema};
use kiln_trainer::comm::Comm;
use kiln_trainer::config::ModelKind;
use kiln_trainer::eval::roc_auc;
use kiln_trainer::fixtures::{synthetic_config, synthetic_ctr, with_local_ring};
use kiln_trainer::loader::assign_shards;
use kiln_trainer::source::MemorySource;
use kiln_trainer::tensorfile::TensorFile;
use kiln_trainer::transform::RowFilter;
use kiln_trainer::{Error, RowAt, ShardSource, TrainConfig, TrainOptions, TrainReport, train};

/// The error's message followed by those of its sources, `: `-separated (as `{:#}` prints it).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

fn source(rows: usize, shards: usize) -> (Arc<dyn ShardSource>, Vec<f64>) {
    let s = synthetic_ctr(rows, shards, 7);
    (Arc::new(s.source), s.true_prob)
}

#[test]
fn shard_assignment_is_balanced_and_deterministic() {
    let mut seed = 12345u64;
    for world in 1..6 {
        for n in [1usize, 3, 7, 16, 33] {
            let rows: Vec<u64> = (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (seed >> 33) % 10_000
                })
                .collect();
            let a = assign_shards(&rows, world);
            assert_eq!(a, assign_shards(&rows, world));
            let mut all: Vec<usize> = a.iter().flatten().copied().collect();
            all.sort();
            assert_eq!(all, (0..n).collect::<Vec<_>>());
            let loads: Vec<u64> = a.iter().map(|s| s.iter().map(|&i| rows[i]).sum()).collect();
            let max_shard = *rows.iter().max().unwrap();
            assert!(
                loads.iter().max().unwrap() - loads.iter().min().unwrap() <= max_shard,
                "{loads:?} {rows:?}"
            );
        }
    }
}

#[test]
fn allreduce_and_allgather_match_serial_results() {
    let n = 1_000_003; // not divisible by the world size, several chunks
    let results = with_local_ring(3, |c| {
        let r = c.rank() as f32;
        let mut buf: Vec<f32> = (0..n).map(|i| (i % 97) as f32 * 0.5 + r).collect();
        c.allreduce_sum(&mut buf)?;
        let g = c.allgather_bytes(&vec![c.rank() as u8; c.rank() * 10])?;
        Ok((buf, g))
    })
    .unwrap();
    for (buf, g) in &results {
        for (i, v) in buf.iter().enumerate().step_by(9973) {
            assert_eq!(*v, ((i % 97) as f32 * 0.5) * 3.0 + 3.0, "element {i}");
        }
        assert_eq!(g, &vec![vec![], vec![1u8; 10], vec![2u8; 20]]);
    }
    assert_eq!(results[0].0, results[1].0);
    assert_eq!(results[0].0, results[2].0);
}

#[test]
fn a_lost_rank_is_named_quickly() {
    let t0 = std::time::Instant::now();
    let results = with_local_ring(2, |c| {
        if c.rank() == 1 {
            c.shutdown(); // as if the process died
            return Ok(None);
        }
        let mut buf = vec![1.0f32; 1 << 20];
        Ok(Some(c.allreduce_sum(&mut buf)))
    })
    .unwrap();
    let err = results[0].as_ref().unwrap().as_ref().unwrap_err();
    assert!(
        matches!(err, Error::LostRank { rank: 1, .. }),
        "{}",
        chain(err)
    );
    assert!(chain(err).contains("lost rank 1"), "{}", chain(err));
    assert!(t0.elapsed().as_secs() < 10);
}

#[test]
fn a_silent_rank_is_named_after_the_timeout() {
    let t0 = std::time::Instant::now();
    let results = with_local_ring(2, |c| {
        if c.rank() == 1 {
            // Connected but hung: sends nothing until long after rank 0's timeout.
            std::thread::sleep(std::time::Duration::from_millis(1500));
            return Ok(None);
        }
        c.set_timeout(std::time::Duration::from_millis(300))?;
        let mut buf = vec![1.0f32; 1 << 16];
        Ok(Some(c.allreduce_sum(&mut buf)))
    })
    .unwrap();
    let err = results[0].as_ref().unwrap().as_ref().unwrap_err();
    assert!(
        matches!(err, Error::LostRank { rank: 1, .. }),
        "{}",
        chain(err)
    );
    assert!(chain(err).contains("no data for 300ms"), "{}", chain(err));
    assert!(t0.elapsed().as_millis() < 1500 + 5000);
}

#[test]
fn wide_deep_learns_and_predict_reproduces_evaluation() {
    let (src, _) = source(30_000, 4);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = synthetic_config();
    cfg.batch_size = 256;
    cfg.epochs = Some(2);
    cfg.hidden = vec![64, 32];
    cfg.checkpoint_every = 50;
    let report = train(
        &TrainOptions::new(cfg, src.clone(), dir.path()),
        &mut Comm::single(),
    )
    .unwrap();
    let m = report.metrics.clone().unwrap();
    let auc = m.auc.expect("both classes held out");
    assert!(auc > 0.70, "held-out AUC {auc}");
    assert!(m.rows > 5_000 && m.rows < 7_000, "{}", m.rows);
    assert!((m.mean_prediction - m.mean_label).abs() < 0.05, "{m:?}");
    // The exported model scores the held-out rows exactly as the evaluation did.
    let model = kiln_trainer::export::load(dir.path()).unwrap();
    assert_eq!(&model.params, report.params.as_ref().unwrap());
    let (logits, labels, _) =
        kiln_trainer::export::score(&model.params, &model.transform, &src, RowFilter::Eval)
            .unwrap();
    assert_eq!(logits, report.eval_logits);
    let again = kiln_trainer::eval::metrics(&logits, &labels);
    assert_eq!(again, m);
    for f in [
        "model.json",
        "transform.json",
        "deep.bpk",
        "embeddings.safetensors",
        "metrics.json",
        "checkpoints/latest",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
}

#[test]
fn logistic_and_mlp_train() {
    let (src, _) = source(8_000, 2);
    for kind in [ModelKind::Logistic, ModelKind::Mlp] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = synthetic_config();
        cfg.model = kind;
        cfg.batch_size = 128;
        cfg.epochs = Some(3);
        cfg.hidden = vec![16];
        cfg.optimizer = kiln_trainer::config::OptimizerConfig::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            lazy: true,
        };
        let report = train(
            &TrainOptions::new(cfg, src.clone(), dir.path()),
            &mut Comm::single(),
        )
        .unwrap();
        let m = report.metrics.unwrap();
        let auc = m.auc.expect("both classes held out");
        assert!(auc > 0.65, "{kind:?}: AUC {auc}");
    }
}

#[test]
fn one_and_two_workers_agree() {
    let (src, _) = source(12_000, 5);
    let mut cfg = synthetic_config();
    cfg.batch_size = 128;
    cfg.epochs = Some(1);
    cfg.hidden = vec![32, 16];
    cfg.checksum_every = 10;
    let d1 = tempfile::tempdir().unwrap();
    let one = train(
        &TrainOptions::new(cfg.clone(), src.clone(), d1.path()),
        &mut Comm::single(),
    )
    .unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let two = with_local_ring(2, |c| {
        train(&TrainOptions::new(cfg.clone(), src.clone(), d2.path()), c)
    })
    .unwrap();
    assert_eq!(
        two[0].params, two[1].params,
        "ranks must hold bit-identical parameters"
    );
    assert_eq!(two[0].param_checksum, two[1].param_checksum);
    assert_eq!(one.steps, two[0].steps);
    let (l1, l2) = (
        one.metrics.unwrap().logloss,
        two[0].metrics.clone().unwrap().logloss,
    );
    assert!(
        (l1 - l2).abs() / l1 < 0.01,
        "1 worker logloss {l1}, 2 workers {l2}"
    );
}

#[test]
fn resumed_run_ends_with_identical_weights() {
    let (src, _) = source(6_000, 3);
    let mut cfg = synthetic_config();
    cfg.batch_size = 100;
    cfg.steps = Some(60);
    cfg.hidden = vec![16];
    cfg.checkpoint_every = 20;
    cfg.shuffle_buffer = 500;
    let full_dir = tempfile::tempdir().unwrap();
    let full = train(
        &TrainOptions::new(cfg.clone(), src.clone(), full_dir.path()),
        &mut Comm::single(),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut o = TrainOptions::new(cfg.clone(), src.clone(), dir.path());
    o.stop_after = Some(40);
    let part = train(&o, &mut Comm::single()).unwrap();
    assert!(part.stopped_early);
    o.stop_after = None;
    o.resume = true;
    let resumed = train(&o, &mut Comm::single()).unwrap();
    assert_eq!(resumed.start_step, 40);
    assert_eq!(
        resumed.params, full.params,
        "resumed weights differ from the uninterrupted run"
    );
    assert_eq!(resumed.eval_logits, full.eval_logits);

    // The same with two workers.
    let d_full = tempfile::tempdir().unwrap();
    let full2 = with_local_ring(2, |c| {
        train(
            &TrainOptions::new(cfg.clone(), src.clone(), d_full.path()),
            c,
        )
    })
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    with_local_ring(2, |c| {
        let mut o = TrainOptions::new(cfg.clone(), src.clone(), d.path());
        o.stop_after = Some(20);
        train(&o, c)
    })
    .unwrap();
    let res2 = with_local_ring(2, |c| {
        let mut o = TrainOptions::new(cfg.clone(), src.clone(), d.path());
        o.resume = true;
        train(&o, c)
    })
    .unwrap();
    assert_eq!(res2[0].start_step, 20);
    assert_eq!(res2[0].params, full2[0].params);
}

#[test]
fn auc_of_true_probability_is_the_ceiling() {
    let s = synthetic_ctr(5_000, 1, 3);
    let labels: Vec<bool> = s
        .shards
        .iter()
        .flatten()
        .flat_map(|b| {
            let l = b
                .column_by_name("label")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::Int32Array>()
                .unwrap()
                .clone();
            l.values().iter().map(|&v| v == 1).collect::<Vec<_>>()
        })
        .collect();
    let a = roc_auc(&s.true_prob, &labels).expect("both classes");
    assert!(a > 0.75 && a < 0.95, "{a}");
}

// ---------------------------------------------------------------------------------------
// User values are checked (issue 13, item 10).

/// The synthetic data with its label column as Float64 and `value` at row `row` of shard
/// `shard` (rows counted from the shard's start, across its record batches).
fn with_label(shard: usize, row: usize, value: f64) -> MemorySource {
    let s = synthetic_ctr(6_000, 3, 7);
    let schema = s.source.schema();
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if f.name() == "label" {
                Field::new("label", DataType::Float64, false)
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let li = schema.index_of("label").unwrap();
    let shards = s
        .shards
        .iter()
        .enumerate()
        .map(|(si, batches)| {
            let mut start = 0;
            batches
                .iter()
                .map(|b| {
                    let labels = b.column(li).as_primitive::<Int32Type>();
                    let mut v: Vec<f64> = labels.values().iter().map(|&x| x as f64).collect();
                    if si == shard && (start..start + b.num_rows()).contains(&row) {
                        v[row - start] = value;
                    }
                    start += b.num_rows();
                    let mut cols = b.columns().to_vec();
                    cols[li] = Arc::new(Float64Array::from(v));
                    RecordBatch::try_new(schema.clone(), cols).unwrap()
                })
                .collect()
        })
        .collect();
    MemorySource::new(schema, shards).unwrap()
}

fn small_config() -> TrainConfig {
    let mut cfg = synthetic_config();
    cfg.batch_size = 100;
    cfg.steps = Some(30);
    cfg.hidden = vec![16];
    cfg.checkpoint_every = 10;
    cfg.shuffle_buffer = 300;
    cfg
}

#[test]
fn a_label_that_is_not_0_or_1_is_an_error_naming_column_shard_and_row() {
    // Row 1234 of shard 1 is in the shard's second record batch (batches of 1000 rows): the
    // error gives its row in the shard, not in the batch. A training row is caught while
    // the transform is fitted, a held-out one when it is scored; either way it is named.
    for (row, value) in [(1234usize, 0.5f64), (1234, 3.0), (17, -1.0), (1999, 0.999)] {
        let src: Arc<dyn ShardSource> = Arc::new(with_label(1, row, value));
        let dir = tempfile::tempdir().unwrap();
        let err = train(
            &TrainOptions::new(small_config(), src, dir.path()),
            &mut Comm::single(),
        )
        .expect_err("a label that is not 0 or 1 must fail the run, not be thresholded");
        match &err {
            Error::Value {
                column,
                at,
                message,
            } => {
                assert_eq!(column, "label", "{}", chain(&err));
                assert_eq!(
                    *at,
                    RowAt {
                        shard: Some(1),
                        row: row as u64
                    },
                    "{}",
                    chain(&err)
                );
                assert!(message.contains(&value.to_string()), "{}", chain(&err));
            }
            e => panic!("expected a value error, got {}", chain(e)),
        }
        let text = chain(&err);
        assert!(
            text.contains(&format!("column `label`, shard 1, row {row}")),
            "{text}"
        );
    }
    // 0 and 1 as floats are fine.
    let src: Arc<dyn ShardSource> = Arc::new(with_label(1, 1234, 1.0));
    let dir = tempfile::tempdir().unwrap();
    train(
        &TrainOptions::new(small_config(), src, dir.path()),
        &mut Comm::single(),
    )
    .unwrap();
}

#[test]
fn hash_buckets_beyond_u32_ids_are_a_config_error() {
    // 2^31 + 2^31 buckets (+1 null row each) do not fit in u32 table ids: they would alias.
    let mut cfg = synthetic_config();
    cfg.categorical[0].hash_buckets = Some(1 << 31);
    cfg.categorical[1].hash_buckets = Some(1 << 31);
    let err = cfg.validate().unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Config(_)), "{text}");
    assert!(text.contains("2^32"), "{text}");
    assert!(text.contains("`user_id`: 2147483648"), "{text}");
    // One column alone past u32, too.
    let mut cfg = synthetic_config();
    cfg.categorical[0].hash_buckets = Some(u64::MAX);
    assert!(cfg.validate().is_err());
    // Exactly 2^32 rows (ids 0..=u32::MAX) are allowed.
    let mut cfg = synthetic_config();
    cfg.categorical.truncate(1);
    cfg.categorical[0].hash_buckets = Some(u32::MAX as u64);
    cfg.validate().unwrap();
}

/// Trains `small_config` for 20 of its 30 steps into `dir` (a checkpoint at step 20) and
/// returns that checkpoint's path.
fn checkpoint_at_20(src: &Arc<dyn ShardSource>, dir: &Path) -> PathBuf {
    let mut o = TrainOptions::new(small_config(), src.clone(), dir);
    o.stop_after = Some(20);
    train(&o, &mut Comm::single()).unwrap();
    let name = std::fs::read_to_string(dir.join("checkpoints/latest")).unwrap();
    dir.join("checkpoints").join(name.trim())
}

fn resume(cfg: TrainConfig, src: &Arc<dyn ShardSource>, dir: &Path) -> Result<TrainReport, Error> {
    let mut o = TrainOptions::new(cfg, src.clone(), dir);
    o.resume = true;
    train(&o, &mut Comm::single())
}

#[test]
fn a_corrupt_loader_state_in_a_checkpoint_is_an_error_naming_the_file() {
    let (src, _) = source(6_000, 3);
    type Edit = Box<dyn Fn(&mut TensorFile)>;
    let position = |edit: fn(&mut serde_json::Value)| -> Edit {
        Box::new(move |f: &mut TensorFile| {
            let key = "loader.0.position";
            let mut p: serde_json::Value = serde_json::from_str(&f.meta[key]).unwrap();
            edit(&mut p);
            f.meta.insert(key.into(), p.to_string());
        })
    };
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "RNG position that is not a number",
            position(|p| p["rng_word_pos"] = "12abc".into()),
            "shuffle RNG position `12abc`",
        ),
        (
            "RNG position past the stream",
            position(|p| p["rng_word_pos"] = (1u128 << 100).to_string().into()),
            "shuffle RNG position",
        ),
        (
            "shard cursor past the rank's shards",
            position(|p| p["shard_pos"] = 99.into()),
            "shard cursor 99",
        ),
        (
            "more rows read than the shard has",
            position(|p| {
                p["shard_pos"] = 0.into();
                p["rows_in_shard"] = 1_000_000_000u64.into();
            }),
            "1000000000 rows read in shard",
        ),
        (
            "batch count that is not the step",
            position(|p| p["batches"] = 7.into()),
            "7 batches read at step 20",
        ),
        (
            "table ids outside the embedding table",
            Box::new(|f: &mut TensorFile| {
                let shape = f.shape("loader.0.ids").unwrap().to_vec();
                let n = shape.iter().product();
                f.put_u32("loader.0.ids", &shape, &vec![u32::MAX; n]);
            }),
            "table id 4294967295",
        ),
        (
            "labels that are not 0 or 1",
            Box::new(|f: &mut TensorFile| {
                let shape = f.shape("loader.0.labels").unwrap().to_vec();
                let n = shape.iter().product();
                f.put_f32("loader.0.labels", &shape, &vec![7.0; n]);
            }),
            "label 7 is not 0 or 1",
        ),
    ];
    for (what, edit, expect) in cases {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = checkpoint_at_20(&src, dir.path());
        let mut f = TensorFile::read(&ckpt).unwrap();
        edit(&mut f);
        f.write_atomic(&ckpt).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            resume(small_config(), &src, dir.path())
        }));
        let err = match r {
            Ok(Ok(_)) => panic!("{what}: resumed from a corrupt checkpoint"),
            Ok(Err(e)) => e,
            Err(_) => panic!("{what}: resuming panicked"),
        };
        let text = chain(&err);
        match &err {
            Error::Resume { checkpoint, .. } => assert_eq!(checkpoint, &ckpt, "{what}: {text}"),
            _ => panic!("{what}: expected a resume error, got {text}"),
        }
        assert!(text.contains(&ckpt.display().to_string()), "{what}: {text}");
        assert!(text.contains(expect), "{what}: {text}");
    }
}

// ---------------------------------------------------------------------------------------
// `--resume` checks what it resumes; export is atomic (issue 13, item 7).

#[test]
fn resume_refuses_another_dataset_seed_or_config_and_names_it() {
    let data = synthetic_ctr(6_000, 3, 7);
    let a: Arc<dyn ShardSource> = Arc::new(data.source.clone().with_dataset_sha256("aaaa1111"));
    let b: Arc<dyn ShardSource> = Arc::new(data.source.with_dataset_sha256("bbbb2222"));
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint_at_20(&a, dir.path());
    let refused = |cfg: TrainConfig, src: &Arc<dyn ShardSource>| {
        let err = resume(cfg, src, dir.path()).expect_err("must refuse");
        match &err {
            Error::Resume { checkpoint, .. } => assert_eq!(checkpoint, &ckpt),
            e => panic!("expected a resume error, got {}", chain(e)),
        }
        let text = chain(&err);
        assert!(text.contains("start fresh without --resume"), "{text}");
        text
    };
    let text = refused(small_config(), &b);
    assert!(
        text.contains("trained on dataset sha256 aaaa1111")
            && text.contains("this run reads bbbb2222"),
        "{text}"
    );
    let mut cfg = small_config();
    cfg.seed = 7;
    let text = refused(cfg, &a);
    assert!(
        text.contains("seed 42") && text.contains("seed 7"),
        "{text}"
    );
    let mut cfg = small_config();
    cfg.optimizer = kiln_trainer::config::OptimizerConfig::Sgd {
        lr: 0.1,
        momentum: 0.0,
    };
    cfg.shuffle_buffer = 200;
    let text = refused(cfg, &a);
    assert!(text.contains("changed: optimizer: "), "{text}");
    assert!(text.contains("shuffle_buffer: 300 -> 200"), "{text}");
    // Keys that do not change the computation may change; the same run resumes and ends
    // where an uninterrupted run ends.
    let mut cfg = small_config();
    cfg.log_every = 3;
    cfg.checksum_every = 7;
    let resumed = resume(cfg, &a, dir.path()).unwrap();
    assert_eq!(resumed.start_step, 20);
    let full_dir = tempfile::tempdir().unwrap();
    let full = train(
        &TrainOptions::new(small_config(), a.clone(), full_dir.path()),
        &mut Comm::single(),
    )
    .unwrap();
    assert_eq!(resumed.params, full.params);
}

#[test]
fn a_failed_export_never_leaves_a_model_of_two_versions() {
    let (src, _) = source(6_000, 3);
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    let mut cfg = small_config();
    cfg.steps = Some(20);
    train(
        &TrainOptions::new(cfg, src.clone(), &model_dir),
        &mut Comm::single(),
    )
    .unwrap();
    let a = kiln_trainer::export::load(&model_dir).unwrap();
    let mut b = a.clone();
    b.file.steps += 1000;
    for v in &mut b.params.table {
        *v += 1.0;
    }
    // Export B over A while one of A's files cannot be replaced (a directory stands where
    // `metrics.json` is), as a crash or a full disk would stop an export half-way.
    std::fs::rename(
        model_dir.join("metrics.json"),
        dir.path().join("metrics.json.saved"),
    )
    .unwrap();
    std::fs::create_dir_all(model_dir.join("metrics.json/x")).unwrap();
    let metrics: kiln_trainer::eval::Metrics =
        serde_json::from_slice(&std::fs::read(dir.path().join("metrics.json.saved")).unwrap())
            .unwrap();
    let result =
        kiln_trainer::export::export(&model_dir, &b.file, &b.transform, &b.params, Some(&metrics));
    let now = kiln_trainer::export::load(&model_dir).expect("a loadable model");
    let whole_a = now.file.steps == a.file.steps && now.params == a.params;
    let whole_b = now.file.steps == b.file.steps && now.params == b.params;
    assert!(
        whole_a || whole_b,
        "model.json of {} steps with weights of {} (export: {result:?})",
        now.file.steps,
        if now.params == b.params { "B" } else { "A" }
    );
    // Checkpoints stay, and no staging directory is left behind.
    assert!(model_dir.join("checkpoints/latest").exists());
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["metrics.json.saved", "model"]);
    // A model exported without metrics does not keep the previous model's `metrics.json`.
    kiln_trainer::export::export(&model_dir, &a.file, &a.transform, &a.params, None).unwrap();
    assert!(!model_dir.join("metrics.json").exists());
    assert_eq!(
        kiln_trainer::export::load(&model_dir).unwrap().params,
        a.params
    );
    assert!(model_dir.join("checkpoints/latest").exists());
}

// ---------------------------------------------------------------------------------------
// Checkpoints do not count against the peer timeout (issue 13, item 6).

#[test]
fn a_slow_checkpoint_hook_does_not_count_against_the_peer_timeout() {
    let (src, _) = source(6_000, 3);
    let dir = tempfile::tempdir().unwrap();
    let hooked = Arc::new(Mutex::new(Vec::<String>::new()));
    let t0 = Instant::now();
    let reports = with_local_ring(2, |c| {
        let mut o = TrainOptions::new(small_config(), src.clone(), dir.path());
        // Each upload takes 2.5 s, far past the 1 s peer timeout.
        o.step_timeout = Duration::from_secs(1);
        let h = hooked.clone();
        o.on_checkpoint = Some(Arc::new(move |p: &Path| {
            std::thread::sleep(Duration::from_millis(2500));
            h.lock()
                .unwrap()
                .push(p.file_name().unwrap().to_string_lossy().into_owned());
            Ok(())
        }));
        train(&o, c)
    })
    .unwrap();
    assert_eq!(reports[0].steps, 30);
    let hooked = hooked.lock().unwrap().clone();
    // The last checkpoint of the run is always written and handed to the hook.
    assert_eq!(
        hooked.last().map(String::as_str),
        Some("ckpt-0000000030.safetensors"),
        "{hooked:?}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("checkpoints/latest")).unwrap(),
        "ckpt-0000000030.safetensors"
    );
    assert!(t0.elapsed() < Duration::from_secs(60));
}

// ---------------------------------------------------------------------------------------
// Lost ranks in larger rings (issue 13, item 8).

#[test]
fn in_a_ring_of_four_every_survivor_names_the_rank_that_died() {
    let t0 = Instant::now();
    let results = with_local_ring(4, |c| {
        c.set_timeout(Duration::from_secs(20))?;
        let mut buf = vec![1.0f32; 1 << 18];
        for i in 0.. {
            if c.rank() == 2 && i == 3 {
                // Dies: its sockets close without a goodbye, as when its process is killed.
                drop(std::mem::replace(c, Comm::single()));
                return Ok(None);
            }
            if let Err(e) = c.allreduce_sum(&mut buf) {
                return Ok(Some((e, t0.elapsed())));
            }
        }
        unreachable!()
    })
    .unwrap();
    for (rank, r) in results.iter().enumerate() {
        if rank == 2 {
            continue;
        }
        let (err, took) = r.as_ref().expect("a survivor fails");
        assert!(
            matches!(err, Error::LostRank { rank: 2, .. }),
            "rank {rank}: {}",
            chain(err)
        );
        assert!(
            chain(err).contains("lost rank 2"),
            "rank {rank}: {}",
            chain(err)
        );
        assert!(*took < Duration::from_secs(10), "rank {rank} took {took:?}");
    }
}

/// Shards whose second read (the loader's, after the transform's fit) blocks until released,
/// for one shard, or fails, for another.
struct Stalling {
    inner: Arc<dyn ShardSource>,
    reads: Mutex<HashMap<usize, usize>>,
    block: usize,
    fail: usize,
    release: Arc<AtomicBool>,
    blocked: AtomicBool,
}

impl ShardSource for Stalling {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.inner.schema()
    }
    fn shard_rows(&self) -> Vec<u64> {
        self.inner.shard_rows()
    }
    fn read_shard(&self, index: usize) -> Result<kiln_trainer::source::BatchIter, Error> {
        let n = {
            let mut r = self.reads.lock().unwrap();
            let n = r.entry(index).or_insert(0);
            *n += 1;
            *n
        };
        if n >= 2 && index == self.fail {
            return Err(Error::Data("injected read failure".into()));
        }
        if n >= 2 && index == self.block {
            self.blocked.store(true, Ordering::SeqCst);
            let t = Instant::now();
            while !self.release.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.inner.read_shard(index)
    }
    fn describe(&self) -> String {
        "stalling".into()
    }
}

#[test]
fn a_rank_waiting_for_its_loader_notices_a_dead_peer() {
    let (inner, _) = source(6_000, 3);
    let assignment = assign_shards(&inner.shard_rows(), 3);
    let release = Arc::new(AtomicBool::new(false));
    let stalling = Arc::new(Stalling {
        inner,
        reads: Mutex::new(HashMap::new()),
        block: assignment[1][0],
        fail: assignment[2][0],
        release: release.clone(),
        blocked: AtomicBool::new(false),
    });
    let src: Arc<dyn ShardSource> = stalling.clone();
    let t0 = Instant::now();
    let results = with_local_ring(3, |c| {
        let mut cfg = small_config();
        cfg.batch_size = 99;
        let mut o = TrainOptions::new(cfg, src.clone(), "/nonexistent/kiln-test");
        o.step_timeout = Duration::from_secs(30);
        let r = train(&o, c);
        if c.rank() == 2 {
            // Rank 2's read failed: its process ends, without a goodbye.
            drop(std::mem::replace(c, Comm::single()));
        }
        Ok((r.err(), t0.elapsed()))
    })
    .unwrap();
    release.store(true, Ordering::SeqCst);
    assert!(
        stalling.blocked.load(Ordering::SeqCst),
        "rank 1 never waited on its loader"
    );
    assert!(
        matches!(results[2].0, Some(Error::Data(_))),
        "{:?}",
        results[2].0
    );
    for rank in [0, 1] {
        let (err, took) = &results[rank];
        let err = err.as_ref().expect("a survivor fails");
        assert!(
            matches!(err, Error::LostRank { rank: 2, .. }),
            "rank {rank}: {}",
            chain(err)
        );
        // Rank 1 was blocked on its loader (a read that would not return for a minute).
        assert!(*took < Duration::from_secs(20), "rank {rank} took {took:?}");
    }
}
