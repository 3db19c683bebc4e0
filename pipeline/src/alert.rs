//! Alerts: a JSON POST to the spec's webhook on failure or gate rejection, with retries
//! (exponential backoff) and a per-request timeout. The caller records the outcome in the
//! run's log and the metadata store whatever happens.
//!
//! A webhook URL carries its token (in the path, the query or the user info), so it is a
//! secret: every line this module returns names the webhook by [`redact_url`] only (scheme
//! and host), and HTTP errors are stripped of their URL before they are formatted.

use serde_json::Value as Json;

use super::config::AlertConfig;
pub use crate::secret::redact_url;

/// Posts `payload` to the webhook. Returns a one-line account of the delivery (or of its
/// failure), with the webhook redacted: alerts never fail the run.
pub fn send(cfg: &AlertConfig, payload: &Json) -> (bool, String) {
    let (ok, line) = send_raw(cfg, payload);
    // Belt and braces: whatever a lower layer put in the message, the full URL (and so its
    // token) never leaves this module.
    (ok, crate::secret::scrub(&line, &cfg.webhook))
}

fn send_raw(cfg: &AlertConfig, payload: &Json) -> (bool, String) {
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
    let shown = redact_url(&cfg.webhook);
    let client = match reqwest::Client::builder()
        .timeout(crate::dag::seconds(cfg.timeout_seconds.max(0.1)))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            return (
                false,
                format!("alert to {shown} not sent: {}", e.without_url()),
            );
        }
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
                        "alert delivered to {shown} (HTTP {}) after {attempt} attempt(s)",
                        resp.status().as_u16()
                    ),
                );
            }
            Ok(resp) => last = format!("HTTP {}", resp.status()),
            Err(e) if e.is_timeout() => {
                last = format!("timed out after {:.1} s", cfg.timeout_seconds)
            }
            Err(e) => last = error_chain(e.without_url()),
        }
        if attempt < total {
            tokio::time::sleep(crate::dag::backoff(cfg.backoff_seconds, attempt)).await;
        }
    }
    (
        false,
        format!("alert to {shown} failed after {total} attempt(s): {last}"),
    )
}

/// An error and its sources on one line (`a: b: c`).
fn error_chain(e: reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_delivery_does_not_show_the_token() {
        // Nothing listens on port 1: the connection is refused at once.
        let cfg = AlertConfig {
            webhook: "http://127.0.0.1:1/hooks/T0KEN-SECRET?sig=S1GSECRET".into(),
            retries: 0,
            timeout_seconds: 2.0,
            backoff_seconds: 0.1,
        };
        let (ok, line) = send(&cfg, &serde_json::json!({"kind": "failure"}));
        assert!(!ok);
        assert!(line.contains("http://127.0.0.1:1/…"), "{line}");
        assert!(!line.contains("SECRET"), "{line}");
    }
}
