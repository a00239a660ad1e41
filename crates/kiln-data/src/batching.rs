//! Deterministic example order and dynamic-padding batches.
//!
//! The order of an epoch is a pure function of `(seed, epoch)` (SplitMix64 + Fisher–Yates,
//! written here so that it never changes with a dependency's version): a resumed run can
//! recompute the order and skip the batches already seen.

use crate::tokenize::{BatchEncoding, DataError, TextInput, TextTokenizer};

/// SplitMix64 (Steele et al. 2014): a tiny, fully specified PRNG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform integer in `0..n` (Lemire's multiply-shift; bias < 2⁻⁶⁴·n).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// How an epoch's examples are ordered and grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPlan {
    /// Examples per batch.
    pub batch_size: usize,
    /// Shuffle (training) or keep file order (evaluation).
    pub shuffle: bool,
    /// Group examples of similar length: sort chunks of `group_factor × batch_size`
    /// shuffled examples by length, then shuffle the batches. `None` = off.
    pub length_group_factor: Option<usize>,
    /// Seed of the order.
    pub seed: u64,
}

/// The batches of one epoch: lists of example indices.
pub fn epoch_batches(plan: &BatchPlan, lengths: &[usize], epoch: u64) -> Vec<Vec<usize>> {
    let n = lengths.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64(plan.seed ^ epoch.wrapping_mul(0xA24B_AED4_963E_E407));
    if plan.shuffle {
        for i in (1..n).rev() {
            order.swap(i, rng.below(i + 1));
        }
    }
    let bs = plan.batch_size.max(1);
    match plan.length_group_factor {
        Some(factor) if plan.shuffle => {
            for chunk in order.chunks_mut(bs * factor.max(1)) {
                chunk.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
            }
            let mut batches: Vec<Vec<usize>> = order.chunks(bs).map(<[usize]>::to_vec).collect();
            for i in (1..batches.len()).rev() {
                batches.swap(i, rng.below(i + 1));
            }
            batches
        }
        _ => order.chunks(bs).map(<[usize]>::to_vec).collect(),
    }
}

/// Tokenizes the examples `indices` of `inputs` into one batch padded to its longest row.
///
/// # Errors
/// [`DataError::Encode`].
pub fn encode_indices(
    tok: &TextTokenizer,
    inputs: &[TextInput],
    indices: &[usize],
) -> Result<BatchEncoding, DataError> {
    let batch: Vec<TextInput> = indices.iter().map(|&i| inputs[i].clone()).collect();
    tok.encode_batch(&batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_a_permutation_fixed_by_seed_and_epoch() {
        let lengths = vec![5; 103];
        let plan = BatchPlan {
            batch_size: 8,
            shuffle: true,
            length_group_factor: None,
            seed: 42,
        };
        let e0 = epoch_batches(&plan, &lengths, 0);
        assert_eq!(e0, epoch_batches(&plan, &lengths, 0));
        assert_ne!(e0, epoch_batches(&plan, &lengths, 1));
        let mut all: Vec<usize> = e0.concat();
        all.sort();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
        assert_eq!(e0.len(), 13);
        assert_eq!(e0.last().unwrap().len(), 103 - 12 * 8);
    }

    #[test]
    fn splitmix_matches_its_reference_sequence() {
        // First outputs of SplitMix64 seeded with 1234567 (reference C implementation).
        let mut r = SplitMix64(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
    }

    #[test]
    fn length_grouping_keeps_every_example_and_makes_batches_homogeneous() {
        let lengths: Vec<usize> = (0..256).map(|i| (i * 37) % 100).collect();
        let plan = BatchPlan {
            batch_size: 16,
            shuffle: true,
            length_group_factor: Some(16),
            seed: 7,
        };
        let batches = epoch_batches(&plan, &lengths, 0);
        let mut all = batches.concat();
        all.sort();
        assert_eq!(all, (0..256).collect::<Vec<_>>());
        let spread: usize = batches
            .iter()
            .map(|b| b.iter().map(|&i| lengths[i]).max().unwrap() - b.iter().map(|&i| lengths[i]).min().unwrap())
            .sum();
        assert!(
            spread < 16 * 100 / 2,
            "grouped batches should have small length spread, got {spread}"
        );
    }
}
