//! `kiln ui`: a read-only web view of the run metadata store and the model repository of one
//! or more jobs, served by the `kiln` binary (no JavaScript, no external resources: pages are
//! HTML with inline SVG charts drawn here). See `docs/observability.md`.
//!
//! Pages (routes of [`server`]):
//!
//! ```text
//! /                                   every job's grid
//! /jobs/<job>[?days=N]                the grid (dates x tasks) and the recent runs
//! /jobs/<job>/runs/<id>               a run: tasks, attempts, lineage, gate, anomalies
//! /jobs/<job>/runs/<id>/log/<attempt> an attempt's log (its last MiB, plain text)
//! /jobs/<job>/runs/<id>/training      the run's training curves (TensorBoard event files)
//! /jobs/<job>/runs/<id>/dataset       the run's dataset statistics and drift
//! /jobs/<job>/model                   versions, labels, held-out metrics over time
//! /jobs/<job>/model/<v>/training      a version's training curves
//! /metrics, /healthz                  Prometheus text; liveness
//! ```
//!
//! Modules, bottom up: [`html`] (escaping, the page frame), [`svg`] (charts), [`pages`]
//! (data -> HTML, no I/O), [`server`] (routes, reads, the listener). The crate sits between
//! the binary and the pipeline: `jobs -> ui -> pipeline -> {registry, trainer, ...}`.

#![warn(missing_docs)]

pub mod html;
pub mod pages;
pub mod server;
pub mod svg;

pub use server::{Job, Running, UiConfig, start};
