//! The daily pipeline (`kiln run`, `backfill`, `schedule`, `runs`, `models`): features ->
//! train -> evaluate -> gate -> publish as a DAG of tasks with retries, timeouts and sensors;
//! a run metadata store (SQLite or PostgreSQL) with a per-(job, date) lock; webhook alerts;
//! a cron scheduler. Models are published to the `kiln_registry` repository. See
//! `docs/pipeline.md`.
//!
//! Modules, bottom up (each uses only those above it, never its callers):
//!
//! ```text
//! names, task, status      closed sets: task names, statuses, triggers; task policy
//! secret                   redaction of secrets (webhook URLs) before they are shown
//! gate, schedule, proc     rule parsing/evaluation, cron schedule, child processes
//! config                   the spec's [pipeline] section (the spec model)
//! datastats                a committed dataset's statistics, checked against its manifest
//! alert, dag, metastore    webhook alerts, the task DAG, the run metadata store
//! runner                   one daily run: the tasks, the recorder, the lock, the driver
//! ```

#![warn(missing_docs)]

pub mod alert;
pub mod config;
pub mod dag;
pub mod datastats;
pub mod gate;
pub mod metastore;
pub mod names;
pub mod proc;
pub mod runner;
pub mod schedule;
pub mod secret;
pub mod status;
pub mod task;
