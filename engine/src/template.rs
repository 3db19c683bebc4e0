//! Date templates in job specs: `{{ ds }}`, `{{ ds_nodash }}`, `{{ ds | add_days(-7) }}`.
//!
//! Syntax: `{{ VAR ( | FILTER )* }}` with whitespace allowed around tokens.
//!
//! | variable     | value for `--date 2026-11-21` |
//! |--------------|-------------------------------|
//! | `ds`         | `2026-11-21`                  |
//! | `ds_nodash`  | `20261121`                    |
//! | `prev_ds`    | `2026-11-20`                  |
//! | `next_ds`    | `2026-11-22`                  |
//!
//! | filter            | effect                                                   |
//! |-------------------|----------------------------------------------------------|
//! | `add_days(N)`     | shifts the date by N days (N may be negative)            |
//! | `nodash`          | formats as `YYYYMMDD`                                    |
//! | `format("FMT")`   | formats with a chrono strftime pattern, e.g. `"%Y/%m/%d"` |
//!
//! Filters apply left to right; a date is printed as `YYYY-MM-DD` unless the last filter
//! chose another format. Anything else inside `{{ }}` is an error that quotes the template.

use chrono::{Duration, NaiveDate};

/// A template error: the offending template text and what was wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("bad template `{template}`: {reason}")]
pub struct TemplateError {
    /// The full `{{ ... }}` expression (or the unterminated remainder).
    pub template: String,
    /// What was expected.
    pub reason: String,
}

/// Renders every `{{ ... }}` expression in `text` for run date `ds`.
pub fn render(text: &str, ds: NaiveDate) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(TemplateError {
                template: rest[start..].chars().take(60).collect(),
                reason: "unterminated `{{` (expected `}}`)".into(),
            });
        };
        let expr = &after[..end];
        let full = format!("{{{{{expr}}}}}");
        out.push_str(&eval(expr, ds).map_err(|reason| TemplateError {
            template: full,
            reason,
        })?);
        rest = &after[end + 2..];
    }
    if let Some(pos) = rest.find("}}") {
        return Err(TemplateError {
            template: rest[pos.saturating_sub(20)..].chars().take(60).collect(),
            reason: "`}}` without a matching `{{`".into(),
        });
    }
    out.push_str(rest);
    Ok(out)
}

enum Rendered {
    Date(NaiveDate),
    Text(String),
}

fn eval(expr: &str, ds: NaiveDate) -> Result<String, String> {
    let mut parts = split_pipes(expr).into_iter();
    let var = parts.next().unwrap_or_default();
    let mut value = match var.trim() {
        "ds" => Rendered::Date(ds),
        "ds_nodash" => Rendered::Text(ds.format("%Y%m%d").to_string()),
        "prev_ds" => Rendered::Date(shift(ds, -1)?),
        "next_ds" => Rendered::Date(shift(ds, 1)?),
        "" => return Err("empty expression (expected a variable such as `ds`)".into()),
        other => {
            return Err(format!(
                "unknown variable `{other}` (expected ds, ds_nodash, prev_ds or next_ds)"
            ));
        }
    };
    for filter in parts {
        let filter = filter.trim();
        let date = match value {
            Rendered::Date(d) => d,
            Rendered::Text(_) => {
                return Err(format!(
                    "filter `{filter}` applied to text; only dates take filters"
                ));
            }
        };
        value = if let Some(arg) = call_arg(filter, "add_days") {
            let days: i64 = arg
                .trim()
                .parse()
                .map_err(|_| format!("add_days expects an integer, got `{arg}`"))?;
            Rendered::Date(shift(date, days)?)
        } else if filter == "nodash" {
            Rendered::Text(date.format("%Y%m%d").to_string())
        } else if let Some(arg) = call_arg(filter, "format") {
            let pattern = arg.trim().trim_matches('"');
            let items: Vec<_> = chrono::format::StrftimeItems::new(pattern).collect();
            if items.contains(&chrono::format::Item::Error) {
                return Err(format!("invalid strftime pattern `{pattern}`"));
            }
            let mut text = String::new();
            // A pattern asking for a time (`%H`) or a zone cannot format a date: chrono
            // reports it as a formatting error, which becomes a spec error here.
            std::fmt::Write::write_fmt(
                &mut text,
                format_args!("{}", date.format_with_items(items.into_iter())),
            )
            .map_err(|_| {
                format!("format(\"{pattern}\"): the pattern needs a time or zone; `ds` is a date")
            })?;
            Rendered::Text(text)
        } else {
            return Err(format!(
                "unknown filter `{filter}` (expected add_days(N), nodash or format(\"...\"))"
            ));
        };
    }
    Ok(match value {
        Rendered::Date(d) => d.format("%Y-%m-%d").to_string(),
        Rendered::Text(t) => t,
    })
}

/// `date` shifted by `days`, or an error when that leaves chrono's date range.
fn shift(date: NaiveDate, days: i64) -> Result<NaiveDate, String> {
    Duration::try_days(days)
        .and_then(|d| date.checked_add_signed(d))
        .ok_or_else(|| format!("add_days({days}): {date} shifted by {days} days is out of range"))
}

/// Splits on `|` outside of double quotes.
fn split_pipes(expr: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut in_quotes = false;
    let mut start = 0;
    for (i, c) in expr.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            '|' if !in_quotes => {
                parts.push(&expr[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&expr[start..]);
    parts
}

/// `name(arg)` -> `Some(arg)`.
fn call_arg<'a>(filter: &'a str, name: &str) -> Option<&'a str> {
    filter
        .strip_prefix(name)?
        .trim_start()
        .strip_prefix('(')?
        .strip_suffix(')')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 21).unwrap()
    }

    #[test]
    fn renders_variables_and_filters() {
        assert_eq!(render("dt={{ ds }}/", d()).unwrap(), "dt=2026-11-21/");
        assert_eq!(render("{{ds_nodash}}", d()).unwrap(), "20261121");
        assert_eq!(
            render("'{{ ds | add_days(-7) }}' .. '{{ ds|add_days(1) }}'", d()).unwrap(),
            "'2026-11-14' .. '2026-11-22'"
        );
        assert_eq!(
            render("{{ ds | add_days(-30) | nodash }}", d()).unwrap(),
            "20261022"
        );
        assert_eq!(
            render("{{ ds | format(\"%Y/%m/%d\") }}", d()).unwrap(),
            "2026/11/21"
        );
        assert_eq!(render("{{ next_ds }}", d()).unwrap(), "2026-11-22");
        assert_eq!(render("no templates", d()).unwrap(), "no templates");
    }

    #[test]
    fn spec_values_never_panic() {
        let e = render("{{ ds | format(\"%H:%M\") }}", d()).unwrap_err();
        assert!(e.to_string().contains("needs a time or zone"), "{e}");
        let e = render("{{ ds | add_days(9223372036854775807) }}", d()).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        let e = render("{{ ds | add_days(100000000) }}", d()).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }

    #[test]
    fn reports_bad_templates() {
        let e = render("x {{ dss }}", d()).unwrap_err();
        assert!(e.to_string().contains("`{{ dss }}`"), "{e}");
        assert!(e.to_string().contains("unknown variable `dss`"), "{e}");
        let e = render("{{ ds | add_days(x) }}", d()).unwrap_err();
        assert!(e.to_string().contains("add_days expects an integer"), "{e}");
        let e = render("{{ ds ", d()).unwrap_err();
        assert!(e.to_string().contains("unterminated"), "{e}");
        let e = render("{{ ds | shout }}", d()).unwrap_err();
        assert!(e.to_string().contains("unknown filter `shout`"), "{e}");
        let e = render("{{ ds_nodash | add_days(1) }}", d()).unwrap_err();
        assert!(e.to_string().contains("only dates take filters"), "{e}");
    }
}
