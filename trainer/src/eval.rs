//! Evaluation metrics over all held-out rows.

use serde::{Deserialize, Serialize};

use crate::model::{bce_with_logit, sigmoid};

/// Metrics of a set of predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Rows evaluated.
    pub rows: u64,
    /// Mean binary cross-entropy (natural log).
    pub logloss: f64,
    /// Exact ROC AUC (ties count one half); `None` (`null`) when the rows hold one class only.
    pub auc: Option<f64>,
    /// Fraction of rows where `p >= 0.5` matches the label.
    pub accuracy: f64,
    /// Mean predicted probability.
    pub mean_prediction: f64,
    /// Mean label.
    pub mean_label: f64,
    /// `mean_prediction / mean_label`.
    pub calibration: f64,
}

/// Metrics from logits and 0/1 labels.
pub fn metrics(logits: &[f32], labels: &[f32]) -> Metrics {
    let n = logits.len();
    let probs: Vec<f32> = logits.iter().map(|&z| sigmoid(z)).collect();
    let logloss = logits
        .iter()
        .zip(labels)
        .map(|(&z, &y)| bce_with_logit(z, y))
        .sum::<f64>()
        / n.max(1) as f64;
    let accuracy = probs
        .iter()
        .zip(labels)
        .filter(|(p, y)| (**p >= 0.5) == (**y >= 0.5))
        .count() as f64
        / n.max(1) as f64;
    let mean_prediction = probs.iter().map(|&p| p as f64).sum::<f64>() / n.max(1) as f64;
    let mean_label = labels.iter().map(|&y| y as f64).sum::<f64>() / n.max(1) as f64;
    Metrics {
        rows: n as u64,
        logloss,
        auc: roc_auc(
            &logits.iter().map(|&z| f64::from(z)).collect::<Vec<_>>(),
            &labels.iter().map(|&y| y >= 0.5).collect::<Vec<_>>(),
        ),
        accuracy,
        mean_prediction,
        mean_label,
        calibration: if mean_label > 0.0 {
            mean_prediction / mean_label
        } else {
            f64::NAN
        },
    }
}

/// Exact ROC AUC of `scores` against `labels`: the Mann-Whitney statistic, tied scores sharing
/// their average rank (a tie between a positive and a negative counts one half). `None` when
/// a class is missing: the AUC is then undefined (not 0.5).
///
/// ```
/// use kiln_trainer::eval::roc_auc;
/// assert_eq!(roc_auc(&[0.1, 0.4, 0.4, 0.8], &[false, false, true, true]), Some(0.875));
/// assert_eq!(roc_auc(&[0.1, 0.4], &[true, true]), None);
/// ```
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), labels.len(), "one label per score");
    let pos = labels.iter().filter(|&&l| l).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += avg_rank * idx[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
        i = j + 1;
    }
    Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_perfect_inverse_and_ties() {
        let l = [false, false, true, true];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &l), Some(1.0));
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &l), Some(0.0));
        assert_eq!(roc_auc(&[0.5; 4], &[false, true, false, true]), Some(0.5));
        assert_eq!(roc_auc(&[0.5, 0.5], &[false, true]), Some(0.5));
        // pairs: 0.3>0.1, 0.5~0.5 (half), 0.5>0.1, 0.3<0.5: 2.5 / 4
        assert_eq!(
            roc_auc(&[0.3, 0.5, 0.5, 0.1], &[true, true, false, false]),
            Some(0.625)
        );
        // pairs: (0.2 vs 0.1) win, (0.2 vs 0.3) loss, (0.3 vs 0.1) win, (0.3 vs 0.3) tie
        assert_eq!(roc_auc(&[0.1, 0.3, 0.2, 0.3], &l), Some(0.625));
    }

    #[test]
    fn auc_is_undefined_with_one_class() {
        assert_eq!(roc_auc(&[0.1], &[true]), None);
        assert_eq!(roc_auc(&[0.1, 0.9, 0.5], &[true, true, true]), None);
        assert_eq!(roc_auc(&[0.1, 0.9], &[false, false]), None);
        assert_eq!(roc_auc(&[], &[]), None);
        let m = metrics(&[0.3, -1.0, 2.0], &[1.0, 1.0, 1.0]);
        assert_eq!(m.auc, None);
        assert_eq!(m.rows, 3);
        // Serialised as null (a gate rule on `auc` then fails), and read back.
        let j = serde_json::to_value(&m).unwrap();
        assert!(j["auc"].is_null(), "{j}");
        let back: Metrics = serde_json::from_value(j).unwrap();
        assert_eq!(back.auc, None);
        let j = serde_json::to_value(metrics(&[0.0, 1.0], &[0.0, 1.0])).unwrap();
        assert_eq!(j["auc"], 1.0);
    }

    #[test]
    fn metrics_values() {
        let m = metrics(&[0.0, 0.0], &[0.0, 1.0]);
        assert!((m.logloss - std::f64::consts::LN_2).abs() < 1e-9);
        assert_eq!(m.mean_prediction, 0.5);
        assert_eq!(m.mean_label, 0.5);
        assert_eq!(m.accuracy, 0.5);
        assert_eq!(m.auc, Some(0.5));
    }
}
