//! The publish gate: rules over held-out metrics, absolute or relative to the current stable
//! model.
//!
//! A rule is `METRIC OP RHS` with `OP` one of `>=`, `<=`, `>`, `<` and `RHS` a number,
//! `stable`, `stable + X`, `stable - X` or `stable * X`:
//!
//! ```text
//! auc >= 0.70                 absolute floor
//! auc >= stable + 0.002       must improve AUC by at least 0.002
//! logloss <= stable * 1.01    log loss may not worsen by more than 1%
//! ```
//!
//! `stable` is the current stable version's metrics **re-scored on the candidate's held-out
//! rows** (the runner's `gate` task scores it on today's examples, as TFX's Evaluator does
//! with its baseline), not the `metrics.json` it recorded on its own day's rows: both sides
//! of a rule are measured on the same rows. The decision records both, with the stable's
//! recorded metrics for reference ([`Baseline`]).
//!
//! Rules that mention `stable` are skipped (and reported as such) while there is no stable
//! model: the very first model is published if it passes the floors. A stable model that
//! cannot be re-scored on today's rows (its transform reads a column today's examples lack)
//! fails every rule that mentions `stable`, with the reason.

use serde::{Deserialize, Serialize};

use crate::names::closed_set;

/// Comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `>=`
    Ge,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `<`
    Lt,
}

impl Op {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Ge => a >= b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Lt => a < b,
        }
    }
    fn negated(self) -> &'static str {
        match self {
            Op::Ge => "<",
            Op::Le => ">",
            Op::Gt => "<=",
            Op::Lt => ">=",
        }
    }
}

/// Right-hand side of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Rhs {
    /// A constant.
    Value(f64),
    /// `stable + d` (d may be negative: `stable - x`).
    StablePlus(f64),
    /// `stable * f`.
    StableTimes(f64),
}

/// One parsed gate rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// The rule as written.
    pub text: String,
    /// Metric name (a key of the evaluation metrics, e.g. `auc`, `logloss`).
    pub metric: String,
    /// Operator.
    pub op: Op,
    /// Threshold.
    pub rhs: Rhs,
}

closed_set! {
    /// How one rule came out (in the gate's decision, stored and printed as JSON).
    pub enum RuleOutcome ("gate rule outcome") {
        /// The candidate meets the rule.
        Pass => "pass",
        /// It does not (or its metric is missing or not finite).
        Fail => "fail",
        /// The rule needs a stable model and there is none yet.
        Skipped => "skipped",
    }
}

/// The outcome of one rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleResult {
    /// The rule as written.
    pub rule: String,
    /// `pass`, `fail` or `skipped` (needs a stable model and there is none).
    pub outcome: RuleOutcome,
    /// The candidate's value.
    pub value: Option<f64>,
    /// The threshold the value was compared with.
    pub threshold: Option<f64>,
    /// The stable model's value re-scored on the candidate's held-out rows, for relative
    /// rules (what the threshold is computed from).
    pub stable_value: Option<f64>,
    /// The stable model's value as it recorded it on its own day's held-out rows (reference
    /// only), for relative rules.
    #[serde(default)]
    pub stable_recorded_value: Option<f64>,
    /// A sentence naming the rule and both values.
    pub detail: String,
}

/// The stable version a candidate is compared with, scored on the candidate's held-out rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Its version number.
    pub version: u64,
    /// Its metrics on the candidate's held-out rows (today's), which relative rules compare
    /// with; `None` when it could not be scored on them (see `error`).
    pub rescored: Option<serde_json::Value>,
    /// The metrics it recorded when it was trained (its `metrics.json`, its own day's
    /// held-out rows): for reference, never compared with.
    pub recorded: Option<serde_json::Value>,
    /// Why it could not be scored on today's rows (e.g. its transform reads a column today's
    /// examples lack); every rule that mentions `stable` then fails with it.
    pub error: Option<String>,
}

impl Baseline {
    /// A stable version scored on today's rows.
    pub fn rescored(
        version: u64,
        rescored: serde_json::Value,
        recorded: serde_json::Value,
    ) -> Self {
        Baseline {
            version,
            rescored: Some(rescored),
            recorded: Some(recorded),
            error: None,
        }
    }

    /// A stable version that could not be scored on today's rows, and why.
    pub fn unscorable(version: u64, recorded: serde_json::Value, error: String) -> Self {
        Baseline {
            version,
            rescored: None,
            recorded: Some(recorded),
            error: Some(error),
        }
    }
}

/// The gate's decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    /// True when no rule failed.
    pub passed: bool,
    /// The stable version compared against, if any.
    pub stable_version: Option<u64>,
    /// The candidate's metrics on its held-out rows (today's).
    #[serde(default)]
    pub candidate: Option<serde_json::Value>,
    /// The stable version re-scored on the same rows, with its recorded metrics; `None`
    /// when there is no stable version.
    #[serde(default)]
    pub stable: Option<Baseline>,
    /// Every rule's outcome, in spec order.
    pub rules: Vec<RuleResult>,
}

impl Decision {
    /// The failed rules' details, joined (empty when passed).
    pub fn failures(&self) -> String {
        self.rules
            .iter()
            .filter(|r| r.outcome == RuleOutcome::Fail)
            .map(|r| r.detail.clone())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Rule {
    /// Parses `METRIC OP RHS`; the error quotes the rule.
    pub fn parse(text: &str) -> Result<Rule, String> {
        let bad = |why: &str| {
            format!(
                "rule `{text}`: {why} (expected e.g. `auc >= 0.7`, `auc >= stable + 0.002`, `logloss <= stable * 1.01`)"
            )
        };
        let (pos, op, len) = ["<=", ">=", "<", ">"]
            .iter()
            .find_map(|o| text.find(o).map(|p| (p, *o, o.len())))
            .ok_or_else(|| bad("no comparison operator"))?;
        let metric = text[..pos].trim();
        if metric.is_empty()
            || !metric
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(bad("the left side must be a metric name"));
        }
        let op = match op {
            "<=" => Op::Le,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            _ => Op::Gt,
        };
        let rhs_text = text[pos + len..].trim();
        let num = |s: &str| -> Result<f64, String> {
            let v: f64 = s
                .trim()
                .parse()
                .map_err(|_| bad(&format!("`{}` is not a number", s.trim())))?;
            if v.is_finite() {
                Ok(v)
            } else {
                Err(bad("thresholds must be finite"))
            }
        };
        let rhs = if let Some(rest) = rhs_text.strip_prefix("stable") {
            let rest = rest.trim();
            if rest.is_empty() {
                Rhs::StablePlus(0.0)
            } else if let Some(x) = rest.strip_prefix('+') {
                Rhs::StablePlus(num(x)?)
            } else if let Some(x) = rest.strip_prefix('-') {
                Rhs::StablePlus(-num(x)?)
            } else if let Some(x) = rest.strip_prefix('*') {
                Rhs::StableTimes(num(x)?)
            } else {
                return Err(bad("after `stable` expected `+ X`, `- X` or `* X`"));
            }
        } else {
            Rhs::Value(num(rhs_text)?)
        };
        Ok(Rule {
            text: text.trim().to_string(),
            metric: metric.to_string(),
            op,
            rhs,
        })
    }

    /// Whether the rule compares with the stable model.
    pub fn is_relative(&self) -> bool {
        !matches!(self.rhs, Rhs::Value(_))
    }
}

/// Looks a metric up in a metrics JSON object; non-finite or missing values are `None`.
fn metric(metrics: &serde_json::Value, name: &str) -> Option<f64> {
    metrics.get(name)?.as_f64().filter(|v| v.is_finite())
}

/// Evaluates `rules` for a candidate's metrics against the stable version's (if any),
/// re-scored on the candidate's held-out rows.
pub fn evaluate(
    rules: &[Rule],
    candidate: &serde_json::Value,
    stable: Option<&Baseline>,
) -> Decision {
    let mut results = Vec::new();
    for r in rules {
        let value = metric(candidate, &r.metric);
        let relative = r.is_relative();
        let stable_value = stable.and_then(|b| metric(b.rescored.as_ref()?, &r.metric));
        let stable_recorded_value = stable.and_then(|b| metric(b.recorded.as_ref()?, &r.metric));
        let threshold = match r.rhs {
            Rhs::Value(v) => Some(v),
            Rhs::StablePlus(d) => stable_value.map(|s| s + d),
            Rhs::StableTimes(f) => stable_value.map(|s| s * f),
        };
        let (outcome, detail) = match (value, threshold, stable) {
            (None, _, _) => (
                RuleOutcome::Fail,
                format!(
                    "rule `{}` failed: the candidate's {} is {} (not a finite number)",
                    r.text,
                    r.metric,
                    candidate
                        .get(&r.metric)
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "missing".into())
                ),
            ),
            (Some(_), None, None) => (
                RuleOutcome::Skipped,
                format!("rule `{}` skipped: no stable model yet", r.text),
            ),
            (Some(_), None, Some(b)) if b.error.is_some() || b.rescored.is_none() => (
                RuleOutcome::Fail,
                format!(
                    "rule `{}` failed: stable v{} could not be scored on today's held-out rows: {}",
                    r.text,
                    b.version,
                    b.error.as_deref().unwrap_or("no metrics")
                ),
            ),
            (Some(v), None, Some(b)) => (
                RuleOutcome::Fail,
                format!(
                    "rule `{}` failed: candidate {} {v:.6}, but stable v{} has no finite {} on today's held-out rows",
                    r.text, r.metric, b.version, r.metric
                ),
            ),
            (Some(v), Some(t), _) => {
                let against = match (stable, stable_value) {
                    (Some(b), Some(s)) if relative => format!(
                        " (stable v{} {} {s:.6} on the same rows; {} on its own day's)",
                        b.version,
                        r.metric,
                        stable_recorded_value.map_or("-".into(), |x| format!("{x:.6}"))
                    ),
                    _ => String::new(),
                };
                if r.op.holds(v, t) {
                    (
                        RuleOutcome::Pass,
                        format!(
                            "rule `{}` passed: {} {v:.6} vs threshold {t:.6}{against}",
                            r.text, r.metric
                        ),
                    )
                } else {
                    (
                        RuleOutcome::Fail,
                        format!(
                            "rule `{}` failed: {} {v:.6} {} {t:.6}{against}",
                            r.text,
                            r.metric,
                            r.op.negated()
                        ),
                    )
                }
            }
        };
        results.push(RuleResult {
            rule: r.text.clone(),
            outcome,
            value,
            threshold,
            stable_value,
            stable_recorded_value,
            detail,
        });
    }
    Decision {
        passed: results.iter().all(|r| r.outcome != RuleOutcome::Fail),
        stable_version: stable.map(|s| s.version),
        candidate: Some(candidate.clone()),
        stable: stable.cloned(),
        rules: results,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(r: &[&str]) -> Vec<Rule> {
        r.iter().map(|t| Rule::parse(t).unwrap()).collect()
    }

    #[test]
    fn parses_and_rejects_with_the_rule_quoted() {
        let r = Rule::parse("logloss <= stable * 1.01").unwrap();
        assert_eq!(r.metric, "logloss");
        assert_eq!(r.op, Op::Le);
        assert_eq!(r.rhs, Rhs::StableTimes(1.01));
        assert_eq!(
            Rule::parse("auc>=stable-0.5").unwrap().rhs,
            Rhs::StablePlus(-0.5)
        );
        let e = Rule::parse("auc = 0.7").unwrap_err();
        assert!(
            e.contains("rule `auc = 0.7`: no comparison operator"),
            "{e}"
        );
        let e = Rule::parse("auc >= stable / 2").unwrap_err();
        assert!(e.contains("after `stable`"), "{e}");
        assert!(Rule::parse("auc >= high").is_err());
    }

    #[test]
    fn floors_and_comparisons_with_stable() {
        let rs = rules(&[
            "auc >= 0.70",
            "auc >= stable + 0.002",
            "logloss <= stable * 1.01",
        ]);
        // First model: only the floor applies.
        let d = evaluate(&rs, &json!({"auc": 0.71, "logloss": 0.5}), None);
        assert!(d.passed);
        assert_eq!(d.rules[1].outcome, RuleOutcome::Skipped);
        assert_eq!(
            serde_json::to_value(&d.rules[1]).unwrap()["outcome"],
            "skipped"
        );
        let d = evaluate(&rs, &json!({"auc": 0.69, "logloss": 0.5}), None);
        assert!(!d.passed);
        assert_eq!(
            d.failures(),
            "rule `auc >= 0.70` failed: auc 0.690000 < 0.700000"
        );
        // Against stable v3, re-scored on today's rows (it recorded other figures on its own
        // day's rows: those are shown, never compared with).
        let stable = Baseline::rescored(
            3,
            json!({"auc": 0.75, "logloss": 0.40}),
            json!({"auc": 0.80, "logloss": 0.30}),
        );
        let d = evaluate(&rs, &json!({"auc": 0.7510, "logloss": 0.41}), Some(&stable));
        assert!(!d.passed);
        assert_eq!(d.stable_version, Some(3));
        assert_eq!(d.stable.as_ref(), Some(&stable));
        assert_eq!(d.candidate, Some(json!({"auc": 0.7510, "logloss": 0.41})));
        let f = d.failures();
        assert!(
            f.contains(
                "rule `auc >= stable + 0.002` failed: auc 0.751000 < 0.752000 (stable v3 auc 0.750000 on the same rows; 0.800000 on its own day's)"
            ),
            "{f}"
        );
        assert!(
            f.contains("rule `logloss <= stable * 1.01` failed: logloss 0.410000 > 0.404000"),
            "{f}"
        );
        assert_eq!(d.rules[1].stable_value, Some(0.75));
        assert_eq!(d.rules[1].stable_recorded_value, Some(0.80));
        assert_eq!(d.rules[1].threshold, Some(0.752));
        let d = evaluate(&rs, &json!({"auc": 0.76, "logloss": 0.401}), Some(&stable));
        assert!(d.passed, "{:?}", d);
        // The decision round-trips through JSON (the task's output, the run record).
        let back: Decision = serde_json::from_value(serde_json::to_value(&d).unwrap()).unwrap();
        assert_eq!(back.stable, Some(stable.clone()));
        // A decision recorded before the stable was re-scored still reads.
        let old: Decision = serde_json::from_value(json!({
            "passed": true, "stable_version": null, "rules": []
        }))
        .unwrap();
        assert!(old.stable.is_none() && old.candidate.is_none());
        // A diverged model (NaN metrics serialise as null) fails.
        let d = evaluate(&rs, &json!({"auc": 0.5, "logloss": null}), None);
        assert!(!d.passed);
        assert!(d.failures().contains("auc 0.500000 < 0.700000"));
        let d = evaluate(&rs, &json!({"auc": 0.8, "logloss": null}), Some(&stable));
        assert!(
            d.failures()
                .contains("logloss is null (not a finite number)")
        );
    }

    #[test]
    fn a_stable_model_that_cannot_score_todays_rows_fails_the_relative_rules() {
        let rs = rules(&["auc >= 0.70", "auc >= stable + 0.002"]);
        let why = "stable version 3's transform cannot read today's examples: column `dwell_ms`: not in the dataset (columns: a, b)";
        let stable = Baseline::unscorable(3, json!({"auc": 0.75}), why.into());
        let d = evaluate(&rs, &json!({"auc": 0.9}), Some(&stable));
        assert!(!d.passed);
        assert_eq!(d.rules[0].outcome, RuleOutcome::Pass);
        assert_eq!(d.rules[1].outcome, RuleOutcome::Fail);
        assert_eq!(
            d.failures(),
            format!(
                "rule `auc >= stable + 0.002` failed: stable v3 could not be scored on today's held-out rows: {why}"
            )
        );
        assert_eq!(
            d.stable.as_ref().and_then(|b| b.error.as_deref()),
            Some(why)
        );
        // Without rules on `stable`, the reason is recorded but decides nothing.
        let d = evaluate(&rs[..1], &json!({"auc": 0.9}), Some(&stable));
        assert!(d.passed);
        assert_eq!(d.stable.unwrap().error.as_deref(), Some(why));
    }
}
