//! Counter-based random numbers for dropout: the keep decision of element `(row, col)` is a
//! pure function of `(seed, row, col)`, so a backward pass regenerates the forward's mask
//! without storing it, any thread can draw any element, and a resumed run that restores the
//! seed draws the same masks.
//!
//! A row key is SplitMix64 of `seed + row·γ`; a column's 32 bits are two rounds of Wellons'
//! `lowbias32` integer hash (bias ≈ 0.17 of the ideal) over the column index mixed with the
//! two halves of the row key. Both rounds are 32-bit integer arithmetic, which vectorises.

/// SplitMix64's finaliser of `seed + index·γ` (Steele et al. 2014).
#[inline]
pub fn splitmix64(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Wellons' `lowbias32`.
#[inline(always)]
pub fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846C_A68B);
    x ^ (x >> 16)
}

/// Dropout's keep rule for one row: `keep(col)` is true with probability `1 − p`.
#[derive(Debug, Clone, Copy)]
pub struct RowMask {
    lo: u32,
    hi: u32,
    /// Keep when the 32-bit draw is at or above this.
    threshold: u32,
}

impl RowMask {
    /// The mask of row `row` of the stream `seed`, dropping with probability `p` ∈ [0, 1).
    #[inline]
    pub fn new(seed: u64, row: u64, p: f32) -> Self {
        let key = splitmix64(seed, row);
        Self {
            lo: key as u32,
            hi: (key >> 32) as u32,
            threshold: threshold(p),
        }
    }

    /// The 32-bit draw of column `col`.
    #[inline(always)]
    pub fn draw(&self, col: u32) -> u32 {
        lowbias32(lowbias32(col ^ self.lo).wrapping_add(self.hi))
    }

    /// Whether column `col` is kept.
    #[inline(always)]
    pub fn keep(&self, col: u32) -> bool {
        self.draw(col) >= self.threshold
    }
}

/// `p·2³²` rounded, saturating below 2³².
pub fn threshold(p: f32) -> u32 {
    ((p as f64) * 4_294_967_296.0).round().min(u32::MAX as f64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_rate_is_one_minus_p_within_four_sigma_per_row_and_column() {
        for &p in &[0.1f32, 0.5, 0.9] {
            let (rows, cols) = (200u64, 2000u32);
            let mut col_kept = vec![0u32; cols as usize];
            let mut total = 0u64;
            for r in 0..rows {
                let m = RowMask::new(12345, r, p);
                let kept = (0..cols)
                    .filter(|&c| m.keep(c))
                    .inspect(|&c| col_kept[c as usize] += 1)
                    .count();
                let sd = (cols as f64 * p as f64 * (1.0 - p as f64)).sqrt();
                assert!(
                    (kept as f64 - cols as f64 * (1.0 - p as f64)).abs() < 5.0 * sd,
                    "p {p} row {r}: {kept}"
                );
                total += kept as u64;
            }
            let n = (rows * cols as u64) as f64;
            let sd = (n * p as f64 * (1.0 - p as f64)).sqrt();
            assert!(
                (total as f64 - n * (1.0 - p as f64)).abs() < 4.0 * sd,
                "p {p}: {total} of {n}"
            );
            // neighbouring columns are not correlated: P(both kept) ≈ (1 − p)²
            let both = (0..rows)
                .map(|r| {
                    let m = RowMask::new(7, r, p);
                    (0..cols - 1).filter(|&c| m.keep(c) && m.keep(c + 1)).count()
                })
                .sum::<usize>() as f64;
            let pairs = (rows * (cols as u64 - 1)) as f64;
            let q = (1.0 - p as f64).powi(2);
            assert!(
                (both - pairs * q).abs() < 4.0 * (pairs * q * (1.0 - q)).sqrt(),
                "p {p}: pairs {both}"
            );
        }
    }

    #[test]
    fn different_seeds_and_rows_give_different_masks() {
        let a: Vec<bool> = (0..256).map(|c| RowMask::new(1, 0, 0.5).keep(c)).collect();
        let b: Vec<bool> = (0..256).map(|c| RowMask::new(2, 0, 0.5).keep(c)).collect();
        let c: Vec<bool> = (0..256).map(|c| RowMask::new(1, 1, 0.5).keep(c)).collect();
        let agree = |x: &[bool], y: &[bool]| x.iter().zip(y).filter(|(a, b)| a == b).count();
        assert!(agree(&a, &b) < 170 && agree(&a, &c) < 170);
        assert_eq!(a, (0..256).map(|c| RowMask::new(1, 0, 0.5).keep(c)).collect::<Vec<_>>());
    }
}
