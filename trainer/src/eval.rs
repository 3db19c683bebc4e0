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
    /// Exact ROC AUC (ties count one half).
    pub auc: f64,
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
        auc: auc(logits, labels),
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

/// Exact ROC AUC by sorting scores: the Mann-Whitney statistic with tied scores sharing their
/// average rank. 0.5 when a class is missing.
pub fn auc(scores: &[f32], labels: &[f32]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum_pos, mut pos, mut i) = (0.0f64, 0u64, 0usize);
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if labels[k] >= 0.5 {
                rank_sum_pos += avg_rank;
                pos += 1;
            }
        }
        i = j + 1;
    }
    let neg = scores.len() as u64 - pos;
    if pos == 0 || neg == 0 {
        return 0.5;
    }
    (rank_sum_pos - (pos * (pos + 1)) as f64 / 2.0) / (pos as f64 * neg as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_perfect_inverse_and_ties() {
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[0.0, 0.0, 1.0, 1.0]), 1.0);
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &[0.0, 0.0, 1.0, 1.0]), 0.0);
        assert_eq!(auc(&[0.5; 4], &[0.0, 1.0, 0.0, 1.0]), 0.5);
        // pairs: 0.3>0.1, 0.5~0.5 (half), 0.5>0.1, 0.3<0.5: 2.5 / 4
        assert_eq!(auc(&[0.3, 0.5, 0.5, 0.1], &[1.0, 1.0, 0.0, 0.0]), 0.625);
    }

    #[test]
    fn metrics_values() {
        let m = metrics(&[0.0, 0.0], &[0.0, 1.0]);
        assert!((m.logloss - std::f64::consts::LN_2).abs() < 1e-9);
        assert_eq!(m.mean_prediction, 0.5);
        assert_eq!(m.mean_label, 0.5);
        assert_eq!(m.accuracy, 0.5);
    }
}
