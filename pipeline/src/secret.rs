//! Secrets in values the pipeline shows or stores: webhook URLs carry their token (in the
//! path, the query or the user info), so only their scheme and host may reach a terminal, a
//! log file, the metadata store or a `--json` summary.

/// A URL as it may be shown or stored: scheme and host (and port) only, e.g.
/// `https://hooks.example.com/…`; user info, path, query and fragment (where webhook tokens
/// live) are dropped. A URL that does not parse is shown as `<webhook URL>`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) if u.host_str().is_some() => {
            let host = u.host_str().unwrap_or_default();
            match u.port() {
                Some(p) => format!("{}://{host}:{p}/…", u.scheme()),
                None => format!("{}://{host}/…", u.scheme()),
            }
        }
        _ => "<webhook URL>".to_string(),
    }
}

/// `line` with every occurrence of `secret_url` (and of its path-and-query part, which holds
/// the token) replaced by the redacted URL.
pub fn scrub(line: &str, secret_url: &str) -> String {
    let redacted = redact_url(secret_url);
    let mut out = line.replace(secret_url, &redacted);
    if let Ok(u) = url::Url::parse(secret_url) {
        let tail = &u[url::Position::BeforePath..];
        if tail.len() > 1 {
            out = out.replace(tail, "/…");
        }
        // Short user names would match ordinary words; the path and host redaction above
        // already covers the URL as a whole.
        if u.username().len() >= 4 {
            out = out.replace(u.username(), "…");
        }
        if let Some(p) = u.password().filter(|p| p.len() >= 4) {
            out = out.replace(p, "…");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_scheme_and_host_only() {
        assert_eq!(
            redact_url("https://hooks.example.com/services/T000/B000/XXXXSECRET?token=abc"),
            "https://hooks.example.com/…"
        );
        assert_eq!(
            redact_url("http://user:pw@127.0.0.1:8080/x/SECRET"),
            "http://127.0.0.1:8080/…"
        );
        assert_eq!(redact_url("not a url SECRET"), "<webhook URL>");
        let line = scrub(
            "posting to http://h:1/a/SECRET?k=TOKEN failed: /a/SECRET?k=TOKEN",
            "http://h:1/a/SECRET?k=TOKEN",
        );
        assert!(
            !line.contains("SECRET") && !line.contains("TOKEN"),
            "{line}"
        );
    }
}
