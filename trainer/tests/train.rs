//! End-to-end tests of the trainer on synthetic click data with a real signal.

use std::sync::Arc;

use kiln_trainer::comm::Comm;
use kiln_trainer::config::ModelKind;
use kiln_trainer::eval::roc_auc;
use kiln_trainer::fixtures::{synthetic_config, synthetic_ctr, with_local_ring};
use kiln_trainer::loader::assign_shards;
use kiln_trainer::transform::RowFilter;
use kiln_trainer::{Error, ShardSource, TrainOptions, train};

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
