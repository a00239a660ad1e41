//! Deterministic example order and dynamic-padding batches.
//!
//! The order of an epoch is a pure function of `(seed, epoch)` (SplitMix64 + Fisher–Yates): a
//! resumed run can recompute the order and skip the batches already seen.
//!
//! [`SplitMix64`] is kiln's one seeded generator (data order, LM windows, MLM masking, GPT-2
//! sampling, Performer features, UMAP): `rand_xoshiro`'s, re-exported here. Its output is
//! fixed by its definition (Steele et al. 2014) and pinned below against the reference C
//! sequence, so a dependency update that changed it — and with it every saved run's data
//! order — would fail this crate's tests rather than silently reorder resumed runs.

use crate::tokenize::{BatchEncoding, DataError, TextInput, TextTokenizer};

pub use rand_xoshiro::rand_core::{RngCore, SeedableRng};
pub use rand_xoshiro::SplitMix64;

/// A generator seeded with `seed` as its state (SplitMix64's own seeding: the first output is
/// the finaliser of `seed + γ`).
pub fn rng(seed: u64) -> SplitMix64 {
    SplitMix64::seed_from_u64(seed)
}

/// Uniform integer in `0..n` (Lemire's multiply-shift; bias < 2⁻⁶⁴·n).
pub fn below(rng: &mut SplitMix64, n: usize) -> usize {
    ((rng.next_u64() as u128 * n as u128) >> 64) as usize
}

/// Uniform `f64` in `[0, 1)` from the top 53 bits.
pub fn unit(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
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
    let mut rng = rng(plan.seed ^ epoch.wrapping_mul(0xA24B_AED4_963E_E407));
    if plan.shuffle {
        for i in (1..n).rev() {
            order.swap(i, below(&mut rng, i + 1));
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
                batches.swap(i, below(&mut rng, i + 1));
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
        let mut r = rng(1234567);
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
