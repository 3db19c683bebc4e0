//! The pages, as functions from what the store, the repository and the files hold to HTML
//! bodies (framed by [`crate::html::page`]): the grid, a run, a model, a training run and a
//! dataset. Nothing here reads a file or the store; [`crate::server`] gathers the data.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use kiln_connectors::stats::{ColumnKind, ColumnStats, DatasetStats, drift};
use kiln_pipeline::metastore::{RunDetail, RunRecord, TaskDetail};
use kiln_pipeline::task::TaskId;
use kiln_registry::{Labels, VersionInfo};
use kiln_trainer::events::Scalars;
use serde_json::Value as Json;

use crate::html::{attr, badge, duration, esc, num, seg, status_colour};
use crate::svg::{self, Bucket, Series};

/// A job's URL prefix: `/jobs/<job>`.
pub fn job_url(job: &str) -> String {
    format!("/jobs/{}", seg(job))
}

/// A run's page.
pub fn run_url(job: &str, id: i64) -> String {
    format!("{}/runs/{id}", job_url(job))
}

/// One attempt's log.
pub fn log_url(job: &str, run: i64, attempt_id: i64) -> String {
    format!("{}/log/{attempt_id}", run_url(job, run))
}

/// One column of the grid: a run date and the newest run of that date.
#[derive(Debug, Clone)]
pub struct GridColumn {
    /// Run date.
    pub date: String,
    /// The newest run of the date.
    pub run: RunDetail,
    /// How many runs the date has (the newest is shown).
    pub runs: usize,
}

/// The statuses the grid's legend lists, in Airflow's order, with ours (`rejected`,
/// `anomalies`) added.
const LEGEND: [&str; 7] = [
    "success",
    "failed",
    "upstream_failed",
    "skipped",
    "running",
    "rejected",
    "anomalies",
];

/// The grid: one row per task (sensors first, then the fixed tasks in the order they run),
/// one column per run date (oldest left), each cell the task's status in the date's newest
/// run, coloured, with its duration, linking to its last attempt's log (or to the run, for a
/// task without attempts). Above the tasks, a row of the runs themselves.
pub fn grid(job: &str, columns: &[GridColumn], days: usize) -> String {
    let mut out = format!(
        r#"<h1>{} <span class="muted">· the last {} run date(s)</span></h1>"#,
        esc(job),
        columns.len()
    );
    out.push_str(r#"<p class="legend">"#);
    for s in LEGEND {
        let _ = write!(
            out,
            r#"<span><i style="background:{}"></i>{}</span>"#,
            status_colour(s),
            esc(s)
        );
    }
    let _ = write!(
        out,
        r#"<span class="muted">newest run of each date; <a href="?days={}">more dates</a></span></p>"#,
        days * 2
    );
    if columns.is_empty() {
        out.push_str("<p>No runs recorded yet.</p>");
        return out;
    }
    let tasks: BTreeSet<TaskId> = columns
        .iter()
        .flat_map(|c| c.run.tasks.iter().map(|t| t.task.name.clone()))
        .collect();
    out.push_str(r#"<table class="grid" id="grid"><thead><tr><th>task \ date</th>"#);
    for c in columns {
        let _ = write!(out, r#"<th class="date">{}</th>"#, esc(&c.date));
    }
    out.push_str("</tr></thead><tbody><tr><th>run</th>");
    for c in columns {
        let r = &c.run.run;
        let status = r.status.as_str();
        let earlier = if c.runs > 1 {
            format!(" (+{} earlier)", c.runs - 1)
        } else {
            String::new()
        };
        let _ = write!(
            out,
            r#"<td class="cell run" data-date="{}" data-status="{}" style="background:{}"><a href="{}" title="run {} on {}: {}, {}{}">#{} {}<br>{}</a></td>"#,
            attr(&c.date),
            attr(status),
            status_colour(status),
            run_url(job, r.id),
            r.id,
            attr(&c.date),
            attr(status),
            attr(&duration(r.seconds)),
            attr(&earlier),
            r.id,
            esc(status),
            esc(&duration(r.seconds)),
        );
    }
    out.push_str("</tr>");
    for name in &tasks {
        let label = name.to_string();
        let _ = write!(out, r#"<tr><th>{}</th>"#, esc(&label));
        for c in columns {
            let Some(t) = c.run.tasks.iter().find(|t| &t.task.name == name) else {
                out.push_str(r#"<td class="cell none" title="not in this run"></td>"#);
                continue;
            };
            let status = t.task.status.as_str();
            let href = match t.attempt_log.last() {
                Some(a) if a.log_path.is_some() => log_url(job, c.run.run.id, a.id),
                _ => format!("{}#task-{}", run_url(job, c.run.run.id), seg(&label)),
            };
            let mut title = format!(
                "{label} on {}: {status}, {}, {} attempt(s)",
                c.date,
                duration(t.task.seconds),
                t.task.attempts
            );
            if let Some(e) = &t.task.error {
                let _ = write!(title, "\n{}", e.lines().next().unwrap_or(""));
            }
            let _ = write!(
                out,
                r#"<td class="cell" data-task="{}" data-date="{}" data-status="{}" style="background:{}"><a href="{}" title="{}">{}<br>{}</a></td>"#,
                attr(&label),
                attr(&c.date),
                attr(status),
                status_colour(status),
                href,
                attr(&title),
                esc(short_status(status)),
                esc(&duration(t.task.seconds)),
            );
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// A status in a grid cell's few pixels.
fn short_status(s: &str) -> &str {
    match s {
        "upstream_failed" => "upstream",
        s => s,
    }
}

/// The recent runs as a table (under the grid).
pub fn runs_table(job: &str, runs: &[RunRecord]) -> String {
    let mut out = String::from(
        r#"<h2>Recent runs</h2><table id="runs"><tr><th>run</th><th>date</th><th>status</th><th>trigger</th><th>version</th><th>duration</th><th>started</th><th>error</th></tr>"#,
    );
    for r in runs {
        let _ = write!(
            out,
            r#"<tr><td><a href="{}">#{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="n">{}</td><td>{}</td><td class="err">{}</td></tr>"#,
            run_url(job, r.id),
            r.id,
            esc(&r.run_date),
            badge(r.status.as_str()),
            esc(r.trigger.as_str()),
            r.model_version.map_or("-".into(), |v| format!(
                r#"<a href="{}/model#v{v}">v{v}</a>"#,
                job_url(job)
            )),
            esc(&duration(r.seconds)),
            esc(&r.started_at),
            esc(r.error.as_deref().unwrap_or("")),
        );
    }
    out.push_str("</table>");
    out
}

/// What the run page links to besides the run itself.
#[derive(Debug, Clone, Default)]
pub struct RunLinks {
    /// The model's labels (to show the version's).
    pub labels: Option<Labels>,
    /// Whether training curves (event files) can be shown.
    pub training: bool,
    /// Whether the examples dataset has statistics to show.
    pub dataset: bool,
}

/// A key-value row.
fn kv(out: &mut String, k: &str, v_html: &str) {
    let _ = write!(out, "<tr><th>{}</th><td>{v_html}</td></tr>", esc(k));
}

/// A run: facts, tasks with attempts (logs linked), lineage (inputs -> dataset -> model
/// version), the gate's comparison and rules, anomalies recorded by any task, held-out
/// metrics, events.
pub fn run(job: &str, d: &RunDetail, links: &RunLinks) -> String {
    let r = &d.run;
    let mut out = format!(
        r#"<h1>Run #{} · {} {} {}</h1>"#,
        r.id,
        esc(&r.job),
        esc(&r.run_date),
        badge(r.status.as_str())
    );
    if let Some(e) = &r.error {
        let _ = write!(out, r#"<p class="err" id="run-error">{}</p>"#, esc(e));
    }
    out.push_str(r#"<table class="kv">"#);
    kv(&mut out, "trigger", &esc(r.trigger.as_str()));
    kv(
        &mut out,
        "started",
        &format!("{} on {} (pid {})", esc(&r.started_at), esc(&r.host), r.pid),
    );
    kv(
        &mut out,
        "finished",
        &format!(
            "{} · {}",
            esc(r.finished_at.as_deref().unwrap_or("-")),
            esc(&duration(r.seconds))
        ),
    );
    kv(&mut out, "kiln", &esc(&r.kiln_version));
    kv(
        &mut out,
        "spec",
        &format!(
            r#"<code>{}</code> <span class="muted">sha256 {}</span>"#,
            esc(&r.spec_path),
            esc(short(&r.spec_sha256))
        ),
    );
    kv(
        &mut out,
        "logs",
        &format!("<code>{}</code>", esc(&r.log_dir)),
    );
    let mut more = Vec::new();
    if links.training {
        more.push(format!(
            r#"<a href="{}/training">training curves</a>"#,
            run_url(job, r.id)
        ));
    }
    if links.dataset {
        more.push(format!(
            r#"<a href="{}/dataset">dataset statistics</a>"#,
            run_url(job, r.id)
        ));
    }
    if !more.is_empty() {
        kv(&mut out, "pages", &more.join(" · "));
    }
    out.push_str("</table>");

    out.push_str(&tasks_table(job, r.id, &d.tasks));
    out.push_str(&lineage(job, d, links));
    if let Some(g) = &r.gate {
        out.push_str(&gate(g));
    }
    out.push_str(&anomalies(
        &d.tasks,
        r.lineage.as_ref().unwrap_or(&Json::Null),
    ));
    if let Some(m) = &r.metrics {
        out.push_str("<h2>Held-out metrics</h2>");
        out.push_str(&metrics_table(&[("candidate", m)]));
    }
    if !d.events.is_empty() {
        out.push_str(r#"<h2>Events</h2><table><tr><th>at</th><th>kind</th><th>message</th></tr>"#);
        for e in &d.events {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&e.at),
                esc(e.kind.as_str()),
                esc(&e.message)
            );
        }
        out.push_str("</table>");
    }
    out
}

/// The first 12 characters of a hash.
fn short(s: &str) -> &str {
    s.get(..12).unwrap_or(s)
}

fn tasks_table(job: &str, run: i64, tasks: &[TaskDetail]) -> String {
    let mut out = String::from(
        r#"<h2>Tasks</h2><table id="tasks"><tr><th>task</th><th>status</th><th>duration</th><th>attempts</th><th>started</th><th>error</th></tr>"#,
    );
    for t in tasks {
        let name = t.task.name.to_string();
        let mut attempts = String::new();
        for a in &t.attempt_log {
            let log = match &a.log_path {
                Some(p) => format!(
                    r#"<a href="{}" title="{}">log</a>"#,
                    log_url(job, run, a.id),
                    attr(p)
                ),
                None => String::new(),
            };
            let _ = write!(
                attempts,
                r#"<div class="attempt">#{} {} {} {}{}</div>"#,
                a.attempt,
                badge(a.status.as_str()),
                esc(&duration(a.seconds)),
                log,
                a.error
                    .as_deref()
                    .map(|e| format!(r#" <span class="err">{}</span>"#, esc(e)))
                    .unwrap_or_default()
            );
        }
        if attempts.is_empty() {
            attempts = format!("{}", t.task.attempts);
        }
        let _ = write!(
            out,
            r#"<tr id="task-{}" data-task="{}" data-status="{}"><td>{}</td><td>{}</td><td class="n">{}</td><td>{attempts}</td><td>{}</td><td class="err">{}</td></tr>"#,
            seg(&name),
            attr(&name),
            attr(t.task.status.as_str()),
            esc(&name),
            badge(t.task.status.as_str()),
            esc(&duration(t.task.seconds)),
            esc(&t.task.started_at),
            esc(t.task.error.as_deref().unwrap_or("")),
        );
    }
    out.push_str("</table>");
    out
}

/// The output of task `name` of a run, if it recorded one.
pub fn output<'a>(tasks: &'a [TaskDetail], name: &str) -> Option<&'a Json> {
    tasks
        .iter()
        .find(|t| t.task.name.to_string() == name)
        .and_then(|t| t.task.output.as_ref())
}

/// Text of a JSON scalar (strings without quotes).
fn text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => "-".into(),
        v => v.to_string(),
    }
}

fn lineage(job: &str, d: &RunDetail, links: &RunLinks) -> String {
    let r = &d.run;
    let l = r.lineage.clone().unwrap_or(Json::Null);
    let features = output(&d.tasks, "features").cloned().unwrap_or(Json::Null);
    let inputs = l["inputs"]
        .as_array()
        .or_else(|| features["inputs"].as_array())
        .cloned()
        .unwrap_or_default();
    let mut out = String::from(
        r#"<h2>Lineage</h2><div class="flow" id="lineage"><div class="box"><b>Inputs</b>"#,
    );
    if inputs.is_empty() {
        out.push_str(r#"<p class="muted">none recorded</p>"#);
    }
    for i in &inputs {
        let _ = write!(
            out,
            r#"<p><b>{}</b> <span class="muted">{}</span><br><code>{}</code>"#,
            esc(&text(&i["name"])),
            esc(&text(&i["format"])),
            esc(&text(&i["url"]))
        );
        if let Some(p) = i["partitions"].as_array().filter(|p| !p.is_empty()) {
            let _ = write!(
                out,
                "<br>partitions {} .. {} ({})",
                esc(&text(&p[0])),
                esc(&text(&p[p.len() - 1])),
                p.len()
            );
        }
        if let Some(files) = i["files"].as_array() {
            let bytes: u64 = files.iter().filter_map(|f| f["size"].as_u64()).sum();
            let _ = write!(
                out,
                "<details><summary>{} file(s), {} bytes</summary>",
                files.len(),
                bytes
            );
            for f in files {
                let _ = write!(
                    out,
                    "<div><code>{}</code> {}{}</div>",
                    esc(&text(&f["url"])),
                    esc(&text(&f["size"])),
                    f.get("etag")
                        .map(|e| format!(" etag {}", esc(&text(e))))
                        .unwrap_or_default()
                );
            }
            out.push_str("</details>");
        }
        // Anything else a source records (Kafka offsets, Spark tables): as JSON.
        if let Some(obj) = i.as_object() {
            for (k, v) in obj {
                if !["name", "format", "url", "partitions", "files"].contains(&k.as_str()) {
                    let _ = write!(
                        out,
                        "<div>{}: <code>{}</code></div>",
                        esc(k),
                        esc(&v.to_string())
                    );
                }
            }
        }
        out.push_str("</p>");
    }
    out.push_str(r#"</div><div class="arrow">&#8594;</div><div class="box"><b>Dataset</b>"#);
    let examples = l["examples"].as_str().or(features["examples"].as_str());
    match examples {
        Some(e) => {
            let _ = write!(
                out,
                "<p><code>{}</code><br>manifest sha256 <code>{}</code><br>{} rows, {} shards</p>",
                esc(e),
                esc(short(
                    l["examples_manifest_sha256"]
                        .as_str()
                        .or(features["manifest_sha256"].as_str())
                        .unwrap_or("-")
                )),
                esc(&text(&features["rows"])),
                esc(&text(&features["shards"]))
            );
            if links.dataset {
                let _ = write!(
                    out,
                    r#"<p><a href="{}/dataset">statistics</a></p>"#,
                    run_url(job, r.id)
                );
            }
        }
        None => out.push_str(r#"<p class="muted">none (the run did not get that far)</p>"#),
    }
    out.push_str(r#"</div><div class="arrow">&#8594;</div><div class="box"><b>Model</b>"#);
    match r.model_version {
        Some(v) => {
            let publish = output(&d.tasks, "publish").cloned().unwrap_or(Json::Null);
            let mut labels = Vec::new();
            if let Some(l) = &links.labels {
                if l.stable == Some(v as u64) {
                    labels.push("stable");
                }
                if l.canary == Some(v as u64) {
                    labels.push("canary");
                }
                if l.rejected.contains(&(v as u64)) {
                    labels.push("rejected");
                }
            }
            let _ = write!(
                out,
                r#"<p><a href="{}/model#v{v}">version {v}</a> {}<br>{}</p>"#,
                job_url(job),
                labels.iter().map(|l| badge(l)).collect::<String>(),
                esc(&text(&publish["status"]))
            );
            if let Some(sha) = l["model_sha256"].as_str() {
                let _ = write!(out, "<p>model sha256 <code>{}</code></p>", esc(short(sha)));
            }
        }
        None => out.push_str(r#"<p class="muted">no version</p>"#),
    }
    if links.training {
        let _ = write!(
            out,
            r#"<p><a href="{}/training">training curves</a></p>"#,
            run_url(job, r.id)
        );
    }
    out.push_str("</div></div>");
    out
}

/// Metric rows (rows, auc, logloss, accuracy, calibration, ...) for named columns.
fn metrics_table(cols: &[(&str, &Json)]) -> String {
    let mut keys: Vec<String> = Vec::new();
    for (_, m) in cols {
        if let Some(o) = m.as_object() {
            for k in o.keys() {
                if !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
    }
    let mut out = String::from("<table><tr><th>metric</th>");
    for (name, _) in cols {
        let _ = write!(out, "<th>{}</th>", esc(name));
    }
    out.push_str("</tr>");
    for k in keys {
        let _ = write!(out, "<tr><th>{}</th>", esc(&k));
        for (_, m) in cols {
            let _ = write!(out, r#"<td class="n">{}</td>"#, esc(&num(m[&k].as_f64())));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    out
}

fn gate(g: &Json) -> String {
    let passed = g["passed"].as_bool();
    let mut out = format!(
        r#"<h2>Gate {}</h2>"#,
        match passed {
            Some(true) => badge("pass"),
            Some(false) => badge("fail"),
            None => String::new(),
        }
    );
    let s = &g["stable"];
    let mut cols: Vec<(String, &Json)> = Vec::new();
    if !g["candidate"].is_null() {
        cols.push(("candidate (today's held-out rows)".into(), &g["candidate"]));
    }
    if !s.is_null() {
        let v = text(&s["version"]);
        if !s["rescored"].is_null() {
            cols.push((format!("stable v{v} (same rows)"), &s["rescored"]));
        }
        if !s["recorded"].is_null() {
            cols.push((format!("stable v{v} (its own day)"), &s["recorded"]));
        }
        if let Some(e) = s["error"].as_str() {
            let _ = write!(
                out,
                r#"<p class="err">stable v{} not scored: {}</p>"#,
                esc(&v),
                esc(e)
            );
        }
    }
    if !cols.is_empty() {
        let refs: Vec<(&str, &Json)> = cols.iter().map(|(n, m)| (n.as_str(), *m)).collect();
        out.push_str(&metrics_table(&refs));
    }
    if let Some(rules) = g["rules"].as_array() {
        out.push_str(
            r#"<table id="gate-rules" style="margin-top:8px"><tr><th>rule</th><th>outcome</th><th>value</th><th>threshold</th><th>detail</th></tr>"#,
        );
        for rule in rules {
            let outcome = text(&rule["outcome"]);
            let _ = write!(
                out,
                r#"<tr data-outcome="{}"><td><code>{}</code></td><td>{}</td><td class="n">{}</td><td class="n">{}</td><td>{}</td></tr>"#,
                attr(&outcome),
                esc(&text(&rule["rule"])),
                badge(&outcome),
                esc(&num(rule["value"].as_f64())),
                esc(&num(rule["threshold"].as_f64())),
                esc(&text(&rule["detail"]))
            );
        }
        out.push_str("</table>");
    }
    out
}

/// Anomalies the run recorded (data validation: `lineage.anomalies`, as `kiln run` records
/// them) or any task recorded in its output (`"anomalies": [...]`).
fn anomalies(tasks: &[TaskDetail], lineage: &Json) -> String {
    let mut items = Vec::new();
    if let Some(list) = lineage["anomalies"].as_array() {
        for a in list {
            let accepted = if a["accepted"] == true {
                " (accepted)"
            } else {
                ""
            };
            items.push((
                format!("validate · {}", a["statement"].as_str().unwrap_or("")),
                format!("{}{accepted}", a["message"].as_str().unwrap_or("")),
            ));
        }
    }
    for t in tasks {
        let Some(a) = t.task.output.as_ref().map(|o| &o["anomalies"]) else {
            continue;
        };
        let list: Vec<&Json> = match a {
            Json::Array(v) => v.iter().collect(),
            Json::Null => continue,
            v => vec![v],
        };
        for x in list {
            let what = match x {
                Json::String(s) => s.clone(),
                Json::Object(o) => {
                    let col = ["column", "feature", "name"]
                        .iter()
                        .find_map(|k| o.get(*k).and_then(Json::as_str));
                    let msg = ["description", "message", "detail", "reason"]
                        .iter()
                        .find_map(|k| o.get(*k).and_then(Json::as_str));
                    match (col, msg) {
                        (Some(c), Some(m)) => format!("{c}: {m}"),
                        (None, Some(m)) => m.to_string(),
                        _ => x.to_string(),
                    }
                }
                x => x.to_string(),
            };
            items.push((t.task.name.to_string(), what));
        }
    }
    let mut out = String::from(r#"<h2>Anomalies</h2>"#);
    if items.is_empty() {
        out.push_str(r#"<p class="muted" id="anomalies">none recorded</p>"#);
        return out;
    }
    out.push_str(r#"<ul id="anomalies">"#);
    for (task, what) in items {
        let _ = write!(
            out,
            r#"<li class="err"><b>{}</b>: {}</li>"#,
            esc(&task),
            esc(&what)
        );
    }
    out.push_str("</ul>");
    out
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date (the x axis of charts over dates).
fn day_number(date: &str) -> Option<f64> {
    let d = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    Some((d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days() as f64)
}

/// `YYYY-MM-DD` of a day number.
fn day_label(x: f64) -> String {
    chrono::NaiveDate::from_ymd_opt(1970, 1, 1)
        .and_then(|d| d.checked_add_signed(chrono::Duration::days(x.round() as i64)))
        .map_or_else(|| format!("{x}"), |d| d.format("%m-%d").to_string())
}

/// What the model page knows.
#[derive(Debug, Clone)]
pub struct ModelView<'a> {
    /// The job.
    pub job: &'a str,
    /// The model's name.
    pub model: &'a str,
    /// The repository directory (for messages).
    pub location: &'a str,
    /// `labels.json`.
    pub labels: &'a Labels,
    /// The versions in the repository.
    pub versions: &'a [VersionInfo],
    /// The job's runs (newest first): held-out metrics of every candidate, including
    /// versions since pruned.
    pub runs: &'a [RunRecord],
    /// Versions whose training curves can be shown.
    pub with_training: &'a BTreeSet<u64>,
}

/// A model: which version serves (stable) and which is on trial (canary), held-out metrics
/// over run dates as charts (published and rejected candidates apart), and the versions.
pub fn model(v: &ModelView) -> String {
    let l = v.labels;
    let show = |x: Option<u64>| x.map_or("none".to_string(), |x| format!("v{x}"));
    let mut out = format!(
        r#"<h1>Model {} <span class="muted">· job {}</span></h1><p><code>{}</code></p>
<table class="kv" id="serving"><tr><th>serving (stable)</th><td id="stable">{}</td></tr><tr><th>canary</th><td id="canary">{}</td></tr><tr><th>rejected</th><td>{}</td></tr><tr><th>stable history</th><td>{}</td></tr><tr><th>labels updated</th><td>{}</td></tr></table>
<p class="muted"><code>kiln serve</code> (default policy <code>labelled</code>) loads the stable and canary versions; requests without a version or label get stable.</p>"#,
        esc(v.model),
        esc(v.job),
        esc(v.location),
        esc(&show(l.stable)),
        esc(&show(l.canary)),
        esc(&l
            .rejected
            .iter()
            .map(|x| format!("v{x}"))
            .collect::<Vec<_>>()
            .join(", ")),
        esc(&l
            .stable_history
            .iter()
            .map(|x| format!("v{x}"))
            .collect::<Vec<_>>()
            .join(" → ")),
        esc(&l.updated_at),
    );
    // Metrics over time: one point per run with held-out metrics, by run date.
    out.push_str(r#"<h2>Held-out metrics over time</h2><div class="charts">"#);
    for (metric, title) in [("auc", "AUC"), ("logloss", "log loss")] {
        let mut published = Series {
            name: "published".into(),
            points: vec![],
            tips: vec![],
        };
        let mut rejected = Series {
            name: "rejected".into(),
            points: vec![],
            tips: vec![],
        };
        for r in v.runs.iter().rev() {
            let (Some(x), Some(y)) = (
                day_number(&r.run_date),
                r.metrics.as_ref().and_then(|m| m[metric].as_f64()),
            ) else {
                continue;
            };
            let tip = format!(
                "{} v{}: {metric} {} (run #{})",
                r.run_date,
                r.model_version.map_or("-".into(), |v| v.to_string()),
                num(Some(y)),
                r.id
            );
            let s = if r.status.as_str() == "rejected" {
                &mut rejected
            } else {
                &mut published
            };
            s.points.push((x, y));
            s.tips.push(tip);
        }
        // The axis spans the published versions; a wild rejected candidate is marked at
        // its edge rather than flattening the curve.
        let ys: Vec<f64> = published.points.iter().map(|p| p.1).collect();
        let range = (!ys.is_empty()).then(|| {
            let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let pad = ((hi - lo) * 0.2).max(hi.abs() * 0.05).max(1e-6);
            (lo - pad, hi + pad)
        });
        let _ = write!(
            out,
            r#"<div class="chart" data-metric="{metric}"><h3>{title}</h3>{}</div>"#,
            svg::line_chart(
                &[published, rejected],
                "run date",
                title,
                range,
                Some(&day_label)
            )
        );
    }
    out.push_str("</div>");
    out.push_str(
        r#"<h2>Versions</h2><table id="versions"><tr><th>version</th><th>labels</th><th>date</th><th>run</th><th>auc</th><th>logloss</th><th>rows</th><th>published</th><th>training</th></tr>"#,
    );
    for x in v.versions.iter().rev() {
        let lin = x.lineage.clone().unwrap_or(Json::Null);
        let mut labels: String = x.labels.iter().map(|l| badge(l)).collect();
        if x.rejected {
            labels.push_str(&badge("rejected"));
        }
        let run = lin["run_id"].as_i64().map_or("-".into(), |id| {
            format!(r#"<a href="{}">#{id}</a>"#, run_url(v.job, id))
        });
        let training = if v.with_training.contains(&x.version) {
            format!(
                r#"<a href="{}/model/{}/training">curves</a>"#,
                job_url(v.job),
                x.version
            )
        } else {
            "-".into()
        };
        let _ = write!(
            out,
            r#"<tr id="v{0}" data-version="{0}"><td>v{0}</td><td class="labels">{labels}</td><td>{1}</td><td>{run}</td><td class="n">{2}</td><td class="n">{3}</td><td class="n">{4}</td><td>{5}</td><td>{training}</td></tr>"#,
            x.version,
            esc(&text(&lin["date"])),
            esc(&num(lin["metrics"]["auc"].as_f64())),
            esc(&num(lin["metrics"]["logloss"].as_f64())),
            esc(&num(lin["metrics"]["rows"].as_f64())),
            esc(&text(&lin["published_at"])),
        );
    }
    out.push_str("</table>");
    out
}

/// Training curves of one model directory's event files: one chart per `train/*` tag over
/// steps, held-out metrics (`eval/*`) as a chart when logged more than once, else a table.
pub fn training(title: &str, source: &str, s: &Scalars) -> String {
    let mut out = format!(
        r#"<h1>{}</h1><p>event files in <code>{}</code>: {}</p>"#,
        esc(title),
        esc(source),
        s.files.len()
    );
    if let Some(t) = &s.truncated {
        let _ = write!(
            out,
            r#"<p class="muted">{} is still being written: its last record is incomplete.</p>"#,
            esc(&t.display().to_string())
        );
    }
    if s.curves.is_empty() {
        out.push_str("<p>No scalar summaries.</p>");
        return out;
    }
    let series = |tag: &str| Series {
        name: tag.to_string(),
        points: s.curves[tag]
            .iter()
            .map(|p| (p.step as f64, f64::from(p.value)))
            .collect(),
        tips: s.curves[tag]
            .iter()
            .map(|p| {
                format!(
                    "{tag} at step {}: {}",
                    p.step,
                    num(Some(f64::from(p.value)))
                )
            })
            .collect(),
    };
    out.push_str(r#"<div class="charts">"#);
    let mut finals: BTreeMap<&str, f32> = BTreeMap::new();
    for (tag, points) in &s.curves {
        if !tag.starts_with("train/") && points.len() == 1 {
            finals.insert(tag, points[0].value);
            continue;
        }
        let _ = write!(
            out,
            r#"<div class="chart" data-tag="{}"><h3>{}</h3>{}</div>"#,
            attr(tag),
            esc(tag),
            svg::line_chart(&[series(tag)], "step", tag, None, None)
        );
    }
    out.push_str("</div>");
    if !finals.is_empty() {
        out.push_str(r#"<h2>Held-out metrics (final)</h2><table id="eval"><tr><th>tag</th><th>value</th><th>step</th></tr>"#);
        for (tag, v) in finals {
            let _ = write!(
                out,
                r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
                esc(tag),
                esc(&num(Some(f64::from(v)))),
                s.curves[tag][0].step
            );
        }
        out.push_str("</table>");
    }
    out
}

fn buckets(b: &[kiln_connectors::stats::Bucket]) -> Vec<Bucket> {
    b.iter()
        .map(|b| Bucket {
            low: b.low,
            high: b.high,
            count: b.count,
        })
        .collect()
}

/// A dataset's statistics: per column counts, nulls and a histogram (numbers) or the top
/// values (strings); with a baseline (the previous day's dataset), its histogram drawn over
/// today's and each column's drift.
pub fn dataset(
    title: &str,
    location: &str,
    stats: &DatasetStats,
    baseline: Option<(&str, &DatasetStats)>,
) -> String {
    let drifts: BTreeMap<String, (String, f64)> = baseline
        .map(|(_, b)| {
            drift(stats, b)
                .into_iter()
                .map(|d| {
                    let m = serde_json::to_value(d.measure)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    (d.column, (m, d.value))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = format!(
        r#"<h1>{}</h1><p><code>{}</code> · {} rows · {} columns</p>"#,
        esc(title),
        esc(location),
        stats.num_rows,
        stats.columns.len()
    );
    match baseline {
        Some((url, _)) => {
            let _ = write!(
                out,
                r#"<p>Drift against the previous day, <code>{}</code> (dashed orange: its histogram). Jensen–Shannon divergence for numbers, L-infinity distance of top values for strings; 0 is identical, 1 disjoint.</p>"#,
                esc(url)
            );
        }
        None => out.push_str(r#"<p class="muted">No previous day's dataset to compare with.</p>"#),
    }
    out.push_str(
        r#"<table id="columns"><tr><th>column</th><th>type</th><th>nulls</th><th>summary</th><th>distribution</th><th>drift</th></tr>"#,
    );
    for c in &stats.columns {
        let base = baseline.and_then(|(_, b)| b.column(&c.name));
        let (summary, chart) = column_cells(c, base);
        let drift = drifts.get(&c.name).map_or("-".to_string(), |(m, v)| {
            format!("{} {}", esc(m), esc(&num(Some(*v))))
        });
        let _ = write!(
            out,
            r#"<tr data-column="{}"><td><b>{}</b></td><td><code>{}</code></td><td class="n">{} ({:.1}%)</td><td>{summary}</td><td>{chart}</td><td class="n">{drift}</td></tr>"#,
            attr(&c.name),
            esc(&c.name),
            esc(&c.data_type),
            c.null_count,
            100.0 * c.null_count as f64 / stats.num_rows.max(1) as f64,
        );
    }
    out.push_str("</table>");
    out
}

fn column_cells(c: &ColumnStats, base: Option<&ColumnStats>) -> (String, String) {
    match (c.kind, &c.numeric, &c.string) {
        (ColumnKind::Numeric, Some(n), _) => (
            format!(
                "min {}<br>max {}<br>mean {}<br>std {}<br>median {}<br>zeros {}",
                esc(&num(n.min)),
                esc(&num(n.max)),
                esc(&num(n.mean)),
                esc(&num(n.std_dev)),
                esc(&num(n.quantiles.get(n.quantiles.len() / 2).copied())),
                n.zeros
            ),
            svg::histogram(
                &buckets(&n.histogram),
                base.and_then(|b| b.numeric.as_ref())
                    .map(|b| buckets(&b.histogram))
                    .as_deref(),
            ),
        ),
        (_, _, Some(s)) => (
            format!(
                "distinct ~{}<br>length {}..{} (avg {})",
                s.distinct,
                s.min_length,
                s.max_length,
                esc(&num(Some(s.avg_length)))
            ),
            svg::bars(
                &s.top_values
                    .iter()
                    .take(8)
                    .map(|v| (v.value.clone(), v.count as f64))
                    .collect::<Vec<_>>(),
            ),
        ),
        _ => (format!("{} values", c.count), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_pipeline::metastore::{AttemptRecord, EventRecord, TaskRecord};
    use kiln_pipeline::status::{AttemptStatus, EventKind, RunStatus, TaskStatus, Trigger};
    use serde_json::json;

    const EVIL: &str = r#"<script>alert("x")</script>"#;

    fn record(id: i64, date: &str, status: RunStatus, error: Option<&str>) -> RunRecord {
        RunRecord {
            id,
            job: "daily".into(),
            run_date: date.into(),
            trigger: Trigger::Run,
            status,
            started_at: "2026-11-20T00:00:00.000Z".into(),
            finished_at: None,
            seconds: Some(12.0),
            host: "h".into(),
            pid: 1,
            kiln_version: "0.1.0".into(),
            spec_path: format!("/specs/{EVIL}.toml"),
            spec_sha256: "ab".repeat(32),
            overrides: Json::Null,
            log_dir: "/logs".into(),
            hyperparams: None,
            lineage: None,
            metrics: Some(json!({"auc": 0.75, "rows": 10})),
            gate: None,
            model_version: None,
            error: error.map(str::to_string),
        }
    }

    fn task(id: i64, name: &str, status: TaskStatus, output: Option<Json>) -> TaskDetail {
        TaskDetail {
            task: TaskRecord {
                id,
                run_id: 1,
                name: name.parse().unwrap(),
                status,
                fingerprint: String::new(),
                started_at: "2026-11-20T00:00:01.000Z".into(),
                finished_at: None,
                seconds: Some(3.0),
                attempts: 1,
                output,
                error: (status == TaskStatus::Failed).then(|| EVIL.to_string()),
            },
            attempt_log: if status == TaskStatus::UpstreamFailed {
                vec![]
            } else {
                vec![AttemptRecord {
                    id: 100 + id,
                    task_id: id,
                    attempt: 1,
                    status: if status == TaskStatus::Failed {
                        AttemptStatus::Failed
                    } else {
                        AttemptStatus::Success
                    },
                    started_at: String::new(),
                    finished_at: None,
                    seconds: Some(3.0),
                    log_path: Some(format!("/logs/{name}.log")),
                    error: None,
                }]
            },
        }
    }

    fn detail() -> RunDetail {
        RunDetail {
            run: record(7, "2026-11-20", RunStatus::Failed, Some(EVIL)),
            tasks: vec![
                task(
                    1,
                    "features",
                    TaskStatus::Success,
                    Some(
                        json!({"anomalies": [{"column": "price", "description": EVIL}, "plain <b>"]}),
                    ),
                ),
                task(2, "train", TaskStatus::Failed, None),
                task(3, "evaluate", TaskStatus::UpstreamFailed, None),
            ],
            events: vec![EventRecord {
                at: "t".into(),
                kind: EventKind::Alert,
                message: EVIL.into(),
            }],
        }
    }

    #[test]
    fn grid_colours_cells_and_links_logs_or_the_run() {
        let col = GridColumn {
            date: "2026-11-20".into(),
            run: detail(),
            runs: 2,
        };
        let g = grid("daily", &[col], 14);
        assert!(g.contains(r#"data-task="train" data-date="2026-11-20" data-status="failed" style="background:#d32f2f"><a href="/jobs/daily/runs/7/log/102""#), "{g}");
        // A task without attempts links to its row on the run page.
        assert!(g.contains(r#"data-status="upstream_failed" style="background:#f57c00"><a href="/jobs/daily/runs/7#task-evaluate""#), "{g}");
        assert!(g.contains("(+1 earlier)"));
        assert!(g.contains(r#"<a href="?days=28">more dates</a>"#));
        assert!(!g.contains("<script>"), "{g}");
        assert!(
            g.contains("&lt;script&gt;"),
            "the error is in the cell's title, escaped"
        );
        assert!(grid("daily", &[], 14).contains("No runs recorded yet."));
    }

    #[test]
    fn run_page_escapes_everything_from_the_store() {
        let p = run("daily", &detail(), &RunLinks::default());
        assert!(!p.contains("<script>"), "{p}");
        assert!(p.contains(r#"<p class="err" id="run-error">&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;</p>"#), "{p}");
        assert!(p.contains(
            r#"<a href="/jobs/daily/runs/7/log/101" title="/logs/features.log">log</a>"#
        ));
        // Anomalies recorded by a task, with their column.
        assert!(
            p.contains("<li class=\"err\"><b>features</b>: price: &lt;script&gt;"),
            "{p}"
        );
        assert!(p.contains("<b>features</b>: plain &lt;b&gt;</li>"), "{p}");
        assert!(p.contains(r#"<p class="muted">none (the run did not get that far)</p>"#));
        assert!(
            !p.contains("/training\""),
            "no training link without event files"
        );
    }

    #[test]
    fn model_page_marks_labels_and_charts_runs_by_date() {
        let labels = Labels {
            stable: Some(2),
            canary: Some(3),
            rejected: vec![1],
            stable_history: vec![2],
            updated_at: "now".into(),
        };
        let v = |n: u64, labels: Vec<String>, rejected: bool| VersionInfo {
            version: n,
            labels,
            rejected,
            path: String::new(),
            lineage: Some(json!({"date": "2026-11-19", "run_id": n, "metrics": {"auc": 0.7}})),
        };
        let versions = [
            v(1, vec![], true),
            v(2, vec!["stable".into()], false),
            v(3, vec!["canary".into()], false),
        ];
        let mut runs = vec![
            record(3, "2026-11-21", RunStatus::Success, None),
            record(2, "2026-11-20", RunStatus::Success, None),
            record(1, "2026-11-19", RunStatus::Rejected, None),
        ];
        runs[0].metrics = Some(json!({"auc": 0.8, "logloss": 0.2}));
        runs[1].metrics = Some(json!({"auc": 0.7, "logloss": 0.3}));
        runs[2].metrics = Some(json!({"auc": 0.5, "logloss": 9.0}));
        let with_training = BTreeSet::from([2]);
        let p = model(&ModelView {
            job: "daily",
            model: "ctr",
            location: "/models/ctr",
            labels: &labels,
            versions: &versions,
            runs: &runs,
            with_training: &with_training,
        });
        assert!(p.contains(r#"<td id="stable">v2</td>"#));
        assert!(p.contains(r#"<td id="canary">v3</td>"#));
        assert!(p.contains(r#"<tr id="v3" data-version="3"><td>v3</td><td class="labels"><span class="badge" data-status="canary""#), "{p}");
        assert!(p.contains(r#"<tr id="v1" data-version="1"><td>v1</td><td class="labels"><span class="badge" data-status="rejected""#));
        assert!(p.contains(r#"href="/jobs/daily/model/2/training">curves</a>"#));
        assert_eq!(p.matches(r#"href="/jobs/daily/model/"#).count(), 1);
        // Each chart's published line has two points; the rejected run is off their scale
        // (AUC below it, log loss above it).
        assert_eq!(p.matches(r#"class="series""#).count(), 2, "{p}");
        assert_eq!(p.matches(r#"class="offscale""#).count(), 2, "{p}");
        assert!(p.contains("logloss 9 (run #1) (off the scale)"), "{p}");
        assert!(p.contains(">11-20<"), "dates on the x axis");
    }
}
