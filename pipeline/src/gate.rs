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
//! Rules that mention `stable` are skipped (and reported as such) while there is no stable
//! model: the very first model is published if it passes the floors.

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
    /// The stable model's value, for relative rules.
    pub stable_value: Option<f64>,
    /// A sentence naming the rule and both values.
    pub detail: String,
}

/// The gate's decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    /// True when no rule failed.
    pub passed: bool,
    /// The stable version compared against, if any.
    pub stable_version: Option<u64>,
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

/// Evaluates `rules` for a candidate's metrics against the stable model's (if any).
pub fn evaluate(
    rules: &[Rule],
    candidate: &serde_json::Value,
    stable: Option<(u64, &serde_json::Value)>,
) -> Decision {
    let mut results = Vec::new();
    for r in rules {
        let value = metric(candidate, &r.metric);
        let stable_value = stable.and_then(|(_, m)| metric(m, &r.metric));
        let threshold = match r.rhs {
            Rhs::Value(v) => Some(v),
            Rhs::StablePlus(d) => stable_value.map(|s| s + d),
            Rhs::StableTimes(f) => stable_value.map(|s| s * f),
        };
        let (outcome, detail) = match (value, threshold) {
            (None, _) => (
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
            (Some(_), None) if r.is_relative() && stable.is_none() => (
                RuleOutcome::Skipped,
                format!("rule `{}` skipped: no stable model yet", r.text),
            ),
            (Some(v), None) => (
                RuleOutcome::Fail,
                format!(
                    "rule `{}` failed: candidate {} {v:.6}, but stable v{} has no finite {}",
                    r.text,
                    r.metric,
                    stable.map(|s| s.0).unwrap_or_default(),
                    r.metric
                ),
            ),
            (Some(v), Some(t)) => {
                let against = match (r.rhs, stable, stable_value) {
                    (Rhs::Value(_), _, _) => String::new(),
                    (_, Some((ver, _)), Some(s)) => {
                        format!(" (stable v{ver} {} {s:.6})", r.metric)
                    }
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
            detail,
        });
    }
    Decision {
        passed: results.iter().all(|r| r.outcome != RuleOutcome::Fail),
        stable_version: stable.map(|s| s.0),
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
        // Against stable v3.
        let stable = json!({"auc": 0.75, "logloss": 0.40});
        let d = evaluate(
            &rs,
            &json!({"auc": 0.7510, "logloss": 0.41}),
            Some((3, &stable)),
        );
        assert!(!d.passed);
        let f = d.failures();
        assert!(
            f.contains(
                "rule `auc >= stable + 0.002` failed: auc 0.751000 < 0.752000 (stable v3 auc 0.750000)"
            ),
            "{f}"
        );
        assert!(
            f.contains("rule `logloss <= stable * 1.01` failed: logloss 0.410000 > 0.404000"),
            "{f}"
        );
        let d = evaluate(
            &rs,
            &json!({"auc": 0.76, "logloss": 0.401}),
            Some((3, &stable)),
        );
        assert!(d.passed, "{:?}", d);
        // A diverged model (NaN metrics serialise as null) fails.
        let d = evaluate(&rs, &json!({"auc": 0.5, "logloss": null}), None);
        assert!(!d.passed);
        assert!(d.failures().contains("auc 0.500000 < 0.700000"));
        let d = evaluate(
            &rs,
            &json!({"auc": 0.8, "logloss": null}),
            Some((3, &stable)),
        );
        assert!(
            d.failures()
                .contains("logloss is null (not a finite number)")
        );
    }
}
