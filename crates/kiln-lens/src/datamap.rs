//! Data maps (Swayamdipta et al. 2020, "Dataset Cartography"): per training example, the
//! mean (confidence) and standard deviation (variability) across epochs of the model's
//! probability of the gold label, and the fraction of epochs it was predicted correctly.
//! `kiln-tune` records the probabilities with `train.data_map = true` (`dynamics.jsonl`).

/// One example's coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DataMapPoint {
    /// Mean gold probability over epochs.
    pub confidence: f64,
    /// Population standard deviation of the gold probability over epochs (as the paper's code).
    pub variability: f64,
    /// Fraction of epochs with a correct prediction.
    pub correctness: f64,
}

/// Region of the map, by the paper's reading: easy-to-learn (high confidence, low
/// variability), ambiguous (high variability), hard-to-learn (low confidence, low
/// variability). Thresholds: variability ≥ `ambiguous_at` is ambiguous, else confidence ≥ 0.5
/// is easy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// Learned early and consistently.
    Easy,
    /// The model keeps changing its mind.
    Ambiguous,
    /// Consistently wrong or unsure.
    Hard,
}

/// Coordinates of every example from `p_gold[epoch][example]` and `correct[epoch][example]`.
///
/// # Panics
/// If the epochs disagree on the number of examples or there are none.
pub fn data_map(p_gold: &[Vec<f32>], correct: &[Vec<bool>]) -> Vec<DataMapPoint> {
    assert!(!p_gold.is_empty() && p_gold.len() == correct.len(), "one row per epoch");
    let n = p_gold[0].len();
    assert!(p_gold.iter().all(|r| r.len() == n) && correct.iter().all(|r| r.len() == n));
    let e = p_gold.len() as f64;
    (0..n)
        .map(|i| {
            let mean = p_gold.iter().map(|r| r[i] as f64).sum::<f64>() / e;
            let var = p_gold.iter().map(|r| (r[i] as f64 - mean).powi(2)).sum::<f64>() / e;
            DataMapPoint {
                confidence: mean,
                variability: var.sqrt(),
                correctness: correct.iter().filter(|r| r[i]).count() as f64 / e,
            }
        })
        .collect()
}

impl DataMapPoint {
    /// The point's region (see [`Region`]).
    pub fn region(&self, ambiguous_at: f64) -> Region {
        if self.variability >= ambiguous_at {
            Region::Ambiguous
        } else if self.confidence >= 0.5 {
            Region::Easy
        } else {
            Region::Hard
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinates_follow_the_definitions() {
        // Two examples over four epochs, values chosen so the statistics are exact.
        let p = vec![vec![0.9, 0.2], vec![0.9, 0.8], vec![0.9, 0.2], vec![0.9, 0.8]];
        let c = vec![
            vec![true, false],
            vec![true, true],
            vec![true, false],
            vec![false, true],
        ];
        let m = data_map(&p, &c);
        assert!((m[0].confidence - 0.9).abs() < 1e-6 && m[0].variability.abs() < 1e-6);
        assert!((m[0].correctness - 0.75).abs() < 1e-12);
        assert!((m[1].confidence - 0.5).abs() < 1e-6 && (m[1].variability - 0.3).abs() < 1e-6);
        assert_eq!((m[0].region(0.2), m[1].region(0.2)), (Region::Easy, Region::Ambiguous));
        let hard = DataMapPoint {
            confidence: 0.1,
            variability: 0.05,
            correctness: 0.0,
        };
        assert_eq!(hard.region(0.2), Region::Hard);
    }
}
