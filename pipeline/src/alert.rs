//! Alerts: a JSON POST to the spec's webhook on failure or gate rejection, with retries
//! (exponential backoff) and a per-request timeout. The caller records the outcome in the
//! run's log and the metadata store whatever happens.

use std::time::Duration;

use serde_json::Value as Json;

use super::config::AlertConfig;

/// Posts `payload` to the webhook. Returns a one-line account of the delivery (or of its
/// failure): alerts never fail the run.
pub fn send(cfg: &AlertConfig, payload: &Json) -> (bool, String) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return (
                false,
                format!("alert not sent: cannot start a runtime: {e}"),
            );
        }
    };
    rt.block_on(post(cfg, payload))
}

async fn post(cfg: &AlertConfig, payload: &Json) -> (bool, String) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs_f64(cfg.timeout_seconds.max(0.1)))
        .build()
    {
        Ok(c) => c,
        Err(e) => return (false, format!("alert to {} not sent: {e}", cfg.webhook)),
    };
    let body = payload.to_string();
    let total = cfg.retries + 1;
    let mut last = String::new();
    for attempt in 1..=total {
        let r = client
            .post(&cfg.webhook)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        match r {
            Ok(resp) if resp.status().is_success() => {
                return (
                    true,
                    format!(
                        "alert delivered to {} (HTTP {}) after {attempt} attempt(s)",
                        cfg.webhook,
                        resp.status().as_u16()
                    ),
                );
            }
            Ok(resp) => last = format!("HTTP {}", resp.status()),
            Err(e) if e.is_timeout() => {
                last = format!("timed out after {:.1} s", cfg.timeout_seconds)
            }
            Err(e) => last = format!("{e}"),
        }
        if attempt < total {
            let wait = cfg.backoff_seconds.max(0.0) * 2f64.powi(attempt as i32 - 1);
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }
    (
        false,
        format!(
            "alert to {} failed after {total} attempt(s): {last}",
            cfg.webhook
        ),
    )
}
