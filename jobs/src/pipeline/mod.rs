//! The daily pipeline (`kiln run`, `backfill`, `schedule`, `runs`, `models`): features ->
//! train -> evaluate -> gate -> publish as a DAG of tasks with retries, timeouts and sensors;
//! a run metadata store (SQLite or PostgreSQL) with a per-(job, date) lock; a TF Serving style
//! model repository; webhook alerts; a cron scheduler. See `docs/pipeline.md`.

pub mod alert;
pub mod config;
pub mod dag;
pub mod gate;
pub mod metastore;
pub mod models;
pub mod proc;
pub mod runner;
pub mod schedule;
