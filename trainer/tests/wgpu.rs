//! The device-resident step on wgpu's CPU adapter (`wgpu:cpu`: Mesa's lavapipe, a software
//! Vulkan device that runs the GPU kernels on the CPU): ranks agree bit for bit, and a resumed
//! run continues from its checkpoint's parameters and optimizer state. Built only with the
//! `wgpu` feature (scripts/test.sh builds the tests with it and installs lavapipe). Every test
//! of this binary trains on the same device: the device is chosen once per process.
#![cfg(feature = "wgpu")]

use std::sync::Arc;

use kiln_trainer::comm::Comm;
use kiln_trainer::config::OptimizerConfig;
use kiln_trainer::device::{Agreement, ComputeDevice};
use kiln_trainer::fixtures::{synthetic_config, synthetic_ctr, with_local_ring};
use kiln_trainer::{ShardSource, TrainConfig, TrainOptions, TrainReport, train};

fn source(rows: usize, shards: usize) -> Arc<dyn ShardSource> {
    Arc::new(synthetic_ctr(rows, shards, 7).source)
}

/// The example's model (wide & deep, 16-wide embeddings, hidden [256, 128], Keras's dense
/// Adam) on the synthetic clicks, on the software GPU.
fn device_config() -> TrainConfig {
    let mut cfg = synthetic_config();
    cfg.device = ComputeDevice::WgpuCpu;
    cfg.batch_size = 128;
    cfg.embedding_dim = 16;
    cfg.hidden = vec![256, 128];
    cfg.optimizer = OptimizerConfig::Adam {
        lr: 0.001,
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-7,
        lazy: false,
    };
    cfg.checksum_every = 10;
    cfg
}

fn params_of(r: &TrainReport) -> &kiln_trainer::model::Params {
    r.params.as_ref().expect("parameters in the report")
}

#[test]
fn two_device_workers_hold_bit_identical_parameters() {
    let src = source(8_000, 4);
    let mut cfg = device_config();
    cfg.steps = Some(40);
    let dir = tempfile::tempdir().unwrap();
    let two = with_local_ring(2, |c| {
        train(&TrainOptions::new(cfg.clone(), src.clone(), dir.path()), c)
    })
    .unwrap();
    // (Every 10 steps and at the end each rank also compared checksums with the other.)
    assert_eq!(
        params_of(&two[0]),
        params_of(&two[1]),
        "ranks must hold bit-identical parameters"
    );
    assert_eq!(two[0].param_checksum, two[1].param_checksum);
    let auc = two[0].metrics.as_ref().unwrap().auc.unwrap();
    assert!(auc > 0.6, "held-out AUC {auc} after 40 steps");
}

#[test]
fn a_resumed_device_run_continues_from_its_checkpoint() {
    let src = source(6_000, 3);
    let mut cfg = device_config();
    cfg.steps = Some(60);
    cfg.checkpoint_every = 20;
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
    // The checkpoint holds what was on the device at step 40.
    let (path, bytes) = kiln_trainer::checkpoint::latest_bytes(dir.path())
        .unwrap()
        .expect("a checkpoint");
    let ckpt = kiln_trainer::checkpoint::Checkpoint::from_bytes(&bytes, &path).unwrap();
    assert_eq!(ckpt.step, 40);
    assert_eq!(&ckpt.params, params_of(&part));
    assert!(ckpt.optimizer.table_v.iter().any(|v| *v > 0.0));

    o.stop_after = None;
    o.resume = true;
    let resumed = train(&o, &mut Comm::single()).unwrap();
    assert_eq!(resumed.start_step, 40);
    assert_eq!(resumed.steps, 60);
    // GPU kernels promise agreement within a tolerance, not bits, from one run to the next.
    let agree = Agreement::Tolerant;
    let (a, b) = (params_of(&full), params_of(&resumed));
    for (k, (x, y)) in a.dense.iter().zip(&b.dense).enumerate() {
        assert!(agree.logit_agrees(*x, *y), "dense[{k}]: {x} vs {y}");
    }
    for (k, (x, y)) in a.table.iter().zip(&b.table).enumerate() {
        assert!(agree.logit_agrees(*x, *y), "table[{k}]: {x} vs {y}");
    }
    let (m1, m2) = (full.metrics.unwrap(), resumed.metrics.unwrap());
    assert!(
        agree.metric_agrees(m1.logloss, m2.logloss),
        "{} vs {}",
        m1.logloss,
        m2.logloss
    );
}
