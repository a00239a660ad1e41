//! Task metrics with GLUE's definitions (as in `sklearn` / `scipy`, which GLUE's scorer uses).

use crate::glue::GlueTask;

/// Fraction of equal entries. `NaN` for empty input.
pub fn accuracy(pred: &[usize], gold: &[usize]) -> f64 {
    assert_eq!(pred.len(), gold.len(), "accuracy: length mismatch");
    pred.iter().zip(gold).filter(|(p, g)| p == g).count() as f64 / pred.len() as f64
}

fn confusion(pred: &[usize], gold: &[usize]) -> (f64, f64, f64, f64) {
    assert_eq!(pred.len(), gold.len(), "length mismatch");
    let (mut tp, mut tn, mut fp, mut fn_) = (0.0, 0.0, 0.0, 0.0);
    for (&p, &g) in pred.iter().zip(gold) {
        match (p == 1, g == 1) {
            (true, true) => tp += 1.0,
            (false, false) => tn += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fn_ += 1.0,
        }
    }
    (tp, tn, fp, fn_)
}

/// F1 of the positive class (label 1): `2TP / (2TP + FP + FN)`; 0 when there is no
/// positive prediction or label (sklearn's `zero_division=0`).
pub fn f1(pred: &[usize], gold: &[usize]) -> f64 {
    let (tp, _, fp, fn_) = confusion(pred, gold);
    let denom = 2.0 * tp + fp + fn_;
    if denom == 0.0 {
        0.0
    } else {
        2.0 * tp / denom
    }
}

/// Matthews correlation coefficient of binary predictions; 0 when a marginal is empty
/// (sklearn's convention).
///
/// ```
/// use kiln_data::metrics::matthews;
/// // tp = 2, tn = 1, fp = 1, fn = 0: (2·1 − 1·0) / √(3·2·2·1) = 2/√12
/// let mcc = matthews(&[1, 1, 1, 0], &[1, 1, 0, 0]);
/// assert!((mcc - 2.0 / 12f64.sqrt()).abs() < 1e-12);
/// assert_eq!(matthews(&[1, 1], &[1, 0]), 0.0); // a constant prediction
/// ```
pub fn matthews(pred: &[usize], gold: &[usize]) -> f64 {
    let (tp, tn, fp, fn_) = confusion(pred, gold);
    let denom = ((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_)).sqrt();
    if denom == 0.0 {
        0.0
    } else {
        (tp * tn - fp * fn_) / denom
    }
}

/// Pearson correlation; `NaN` when either input is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "pearson: length mismatch");
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    sxy / (sxx * syy).sqrt()
}

/// Ranks starting at 1, ties given the average of the ranks they span.
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = avg;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman's rank correlation: Pearson correlation of average ranks (handles ties as
/// `scipy.stats.spearmanr`).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Model outputs of a split: class predictions or regression values, with gold labels.
#[derive(Debug, Clone, PartialEq)]
pub enum Predictions {
    /// Classification.
    Classes {
        /// Predicted class per example.
        pred: Vec<usize>,
        /// Gold class per example.
        gold: Vec<usize>,
    },
    /// Regression.
    Scores {
        /// Predicted value per example.
        pred: Vec<f64>,
        /// Gold value per example.
        gold: Vec<f64>,
    },
}

/// The metrics of a task on one split (a run-file type: `results.json` holds them).
pub use kiln_format::run::TaskMetrics;

/// GLUE's metrics for `task`: CoLA MCC; MRPC/QQP F1 and accuracy; STS-B Pearson and
/// Spearman; the rest accuracy. The primary metric is the first listed.
///
/// # Panics
/// If the prediction kind does not fit the task (classes for STS-B or scores elsewhere).
pub fn glue_metrics(task: GlueTask, predictions: &Predictions) -> TaskMetrics {
    let mut values = std::collections::BTreeMap::new();
    let primary = match (task, predictions) {
        (GlueTask::Stsb, Predictions::Scores { pred, gold }) => {
            values.insert("pearson".into(), pearson(pred, gold));
            values.insert("spearman".into(), spearman(pred, gold));
            "pearson"
        }
        (GlueTask::Cola, Predictions::Classes { pred, gold }) => {
            values.insert("mcc".into(), matthews(pred, gold));
            values.insert("accuracy".into(), accuracy(pred, gold));
            "mcc"
        }
        (GlueTask::Mrpc | GlueTask::Qqp, Predictions::Classes { pred, gold }) => {
            values.insert("f1".into(), f1(pred, gold));
            values.insert("accuracy".into(), accuracy(pred, gold));
            "f1"
        }
        (t, Predictions::Classes { pred, gold }) if !t.is_regression() => {
            values.insert("accuracy".into(), accuracy(pred, gold));
            "accuracy"
        }
        (t, p) => panic!("predictions {p:?} do not fit task {t:?}"),
    };
    TaskMetrics {
        primary: primary.into(),
        values,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spearman_matches_the_published_iq_tv_example() {
        // Wikipedia, "Spearman's rank correlation coefficient": rho = -29/165.
        let iq = [106.0, 100.0, 86.0, 101.0, 99.0, 103.0, 97.0, 113.0, 112.0, 110.0];
        let tv = [7.0, 27.0, 2.0, 50.0, 28.0, 29.0, 20.0, 12.0, 6.0, 17.0];
        assert!((spearman(&iq, &tv) - (-29.0 / 165.0)).abs() < 1e-12);
    }

    #[test]
    fn ties_get_average_ranks() {
        assert_eq!(
            average_ranks(&[10.0, 20.0, 20.0, 30.0, 20.0]),
            vec![1.0, 3.0, 3.0, 5.0, 3.0]
        );
        // Hand-computed: ranks x = [1, 2.5, 2.5, 4], y = [1, 2, 3, 4].
        let rho = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]);
        let expected = 4.5 / (4.5f64 * 5.0).sqrt();
        assert!((rho - expected).abs() < 1e-12, "{rho} vs {expected}");
    }

    #[test]
    fn f1_and_accuracy_by_hand() {
        // TP=2, FP=1, FN=1, TN=1 → F1 = 4/6, acc = 3/5.
        let (pred, gold) = ([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]);
        assert!((f1(&pred, &gold) - 4.0 / 6.0).abs() < 1e-12);
        assert!((accuracy(&pred, &gold) - 0.6).abs() < 1e-12);
        assert_eq!(matthews(&[1, 1, 1], &[1, 0, 1]), 0.0, "empty marginal → 0");
    }

    proptest! {
        /// MCC equals the Pearson correlation of the two binary vectors.
        #[test]
        fn mcc_is_pearson_of_binary_vectors(pairs in prop::collection::vec((0usize..2, 0usize..2), 3..60)) {
            let (pred, gold): (Vec<usize>, Vec<usize>) = pairs.into_iter().unzip();
            let as_f = |v: &[usize]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
            let r = pearson(&as_f(&pred), &as_f(&gold));
            prop_assume!(r.is_finite());
            prop_assert!((matthews(&pred, &gold) - r).abs() < 1e-9);
        }

        /// Without ties, Spearman equals 1 − 6Σd²/(n(n²−1)).
        #[test]
        fn spearman_without_ties_matches_the_d_squared_formula(perm in Just((0..12).collect::<Vec<usize>>()).prop_shuffle()) {
            let x: Vec<f64> = (0..perm.len()).map(|i| i as f64 * 1.5 + 0.25).collect();
            let y: Vec<f64> = perm.iter().map(|&p| (p as f64).powi(3)).collect();
            let n = x.len() as f64;
            let d2: f64 = (0..perm.len()).map(|i| (i as f64 - perm[i] as f64).powi(2)).sum();
            let formula = 1.0 - 6.0 * d2 / (n * (n * n - 1.0));
            prop_assert!((spearman(&x, &y) - formula).abs() < 1e-9);
        }
    }
}
