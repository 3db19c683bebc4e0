//! HTML pieces shared by the pages: escaping, the page frame and stylesheet, status badges,
//! numbers, durations and link targets.
//!
//! Every string that comes from the store, the repository or a file goes through [`esc`]
//! (or [`attr`]) before it is written into a page.

use std::fmt::Write as _;

/// `s` with `&`, `<`, `>`, `"` and `'` replaced by entities: safe in element content and in
/// quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment: every byte but ASCII letters, digits, `-`, `_` and `.` percent-encoded
/// (axum's `Path` extractor decodes it back).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `esc` for an attribute value (the same escaping; named for where it is used).
pub fn attr(s: &str) -> String {
    esc(s)
}

/// A number for a table: 4 significant decimals, scientific for very large or small values,
/// `-` for none or a non-finite value.
pub fn num(x: Option<f64>) -> String {
    match x {
        Some(v) if !v.is_finite() => "-".into(),
        Some(v) if v != 0.0 && (v.abs() >= 1e6 || v.abs() < 1e-3) => format!("{v:.3e}"),
        Some(v) if v == v.trunc() && v.abs() < 1e6 => format!("{v:.0}"),
        Some(v) => format!("{v:.4}"),
        None => "-".into(),
    }
}

/// A duration: `0.8s`, `12s`, `3m05s`, `1h02m`; `-` for none.
pub fn duration(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".into(),
        Some(s) if !s.is_finite() || s < 0.0 => "-".into(),
        Some(s) if s < 10.0 => format!("{s:.1}s"),
        Some(s) if s < 60.0 => format!("{s:.0}s"),
        Some(s) if s < 3600.0 => {
            let s = s.round() as u64;
            format!("{}m{:02}s", s / 60, s % 60)
        }
        Some(s) => {
            let m = (s / 60.0).round() as u64;
            format!("{}h{:02}m", m / 60, m % 60)
        }
    }
}

/// The colour of a status name (task, attempt or run status), as Airflow colours them:
/// success green, failed red, running light blue, skipped pink, upstream_failed orange;
/// rejected (the gate refused the model) purple; anomalies (data validation stopped the run)
/// amber; the labels stable blue and canary teal.
/// Unknown names are grey.
pub fn status_colour(status: &str) -> &'static str {
    match status {
        "success" | "published" | "pass" => "#2e7d32",
        "failed" | "fail" => "#d32f2f",
        "running" => "#0288d1",
        "skipped" => "#e91e8c",
        "upstream_failed" => "#f57c00",
        "rejected" => "#7b1fa2",
        "anomalies" => "#f9a825",
        "stable" => "#1565c0",
        "canary" => "#00897b",
        _ => "#757575",
    }
}

/// A coloured badge naming a status.
pub fn badge(status: &str) -> String {
    format!(
        r#"<span class="badge" data-status="{}" style="background:{}">{}</span>"#,
        attr(status),
        status_colour(status),
        esc(status)
    )
}

/// The stylesheet of every page (no external resources).
const STYLE: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#212121;background:#fafafa}
header{background:#263238;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:baseline}
header a{color:#cfd8dc;text-decoration:none} header a:hover{color:#fff}
header .brand{font-weight:700;font-size:18px;color:#fff}
main{padding:16px 20px;max-width:1400px}
h1{font-size:22px;margin:4px 0 12px} h2{font-size:17px;margin:22px 0 8px;border-bottom:1px solid #e0e0e0;padding-bottom:4px}
table{border-collapse:collapse;background:#fff;font-size:13px}
th,td{border:1px solid #e0e0e0;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eceff1;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px;word-break:break-all}
.badge{display:inline-block;color:#fff;border-radius:3px;padding:1px 6px;font-size:12px;font-weight:600}
.grid td.cell{padding:0;width:64px;height:34px;text-align:center}
.grid td.cell a,.grid td.cell span{display:block;color:#fff;text-decoration:none;font-size:11px;line-height:15px;padding:2px 0}
.grid td.none{background:#f5f5f5}
.grid th.date{writing-mode:horizontal-tb;font-size:12px;text-align:center}
.legend span{margin-right:10px;font-size:12px}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-2px;border-radius:2px}
.err{color:#b71c1c;white-space:pre-wrap}
.muted{color:#757575}
.kv th{width:170px}
.charts{display:flex;flex-wrap:wrap;gap:16px}
.chart{background:#fff;border:1px solid #e0e0e0;padding:6px}
.chart h3{font-size:13px;margin:2px 4px 4px}
.flow{display:flex;gap:10px;align-items:stretch;flex-wrap:wrap}
.flow .box{background:#fff;border:1px solid #b0bec5;border-radius:4px;padding:8px 10px;min-width:200px;max-width:420px}
.flow .arrow{align-self:center;font-size:22px;color:#607d8b}
details summary{cursor:pointer}
"#;

/// A whole page: title, the header with links to every job's grid and model, and `body`;
/// with `refresh`, the browser reloads it every that many seconds (a page showing a run
/// still running).
pub fn page(title: &str, jobs: &[String], body: &str, refresh: Option<u32>) -> String {
    let refresh = refresh
        .map(|s| format!(r#"<meta http-equiv="refresh" content="{s}">"#))
        .unwrap_or_default();
    let mut nav = String::new();
    for j in jobs {
        let _ = write!(
            nav,
            r#"<a href="/jobs/{s}">{e}</a><a href="/jobs/{s}/model">{e} model</a>"#,
            s = seg(j),
            e = esc(j)
        );
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">{refresh}
<title>{title} · kiln ui</title><style>{STYLE}</style></head>
<body><header><a class="brand" href="/">kiln ui</a>{nav}</header>
<main>{body}</main></body></html>
"#,
        title = esc(title),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc(r#"<script>alert("x") & 'y'</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(esc("plain"), "plain");
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(seg("daily_ctr"), "daily_ctr");
        assert_eq!(seg("a b/c?"), "a%20b%2Fc%3F");
        assert_eq!(seg("é"), "%C3%A9");
    }

    #[test]
    fn numbers_and_durations() {
        assert_eq!(num(Some(0.75)), "0.7500");
        assert_eq!(num(Some(348.0)), "348");
        assert_eq!(num(Some(585188.127)), "585188.1270");
        assert_eq!(num(Some(5.8e7)), "5.800e7");
        assert_eq!(num(Some(f64::NAN)), "-");
        assert_eq!(num(None), "-");
        assert_eq!(duration(Some(0.81)), "0.8s");
        assert_eq!(duration(Some(42.0)), "42s");
        assert_eq!(duration(Some(185.0)), "3m05s");
        assert_eq!(duration(Some(3720.0)), "1h02m");
        assert_eq!(duration(None), "-");
    }

    #[test]
    fn badges_carry_status_and_colour() {
        let b = badge("failed");
        assert!(b.contains(r#"data-status="failed""#), "{b}");
        assert!(b.contains("#d32f2f"), "{b}");
        assert_eq!(status_colour("upstream_failed"), "#f57c00");
        assert_eq!(status_colour("stable"), "#1565c0");
        assert_eq!(status_colour("<x>"), "#757575");
        assert!(badge("<x>").contains("&lt;x&gt;"));
    }

    #[test]
    fn page_escapes_title_and_job_names() {
        let p = page("<t>", &["a&b".into()], "<p>body</p>", None);
        assert!(p.contains("<title>&lt;t&gt; · kiln ui</title>"), "{p}");
        assert!(!p.contains("http-equiv"));
        let live = page("t", &[], "", Some(15));
        assert!(
            live.contains(r#"<meta http-equiv="refresh" content="15">"#),
            "{live}"
        );
        assert!(p.contains(r#"href="/jobs/a%26b""#), "{p}");
        assert!(p.contains(">a&amp;b<"), "{p}");
        assert!(p.contains("<p>body</p>"));
    }
}
