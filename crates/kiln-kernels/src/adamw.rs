//! One-pass AdamW: gradient scaling, both moment updates, decoupled weight decay and the
//! parameter update in a single parallel sweep over each tensor, instead of the ~16 separate
//! element-wise tensor operations (each a full pass over memory) the composed form takes.
//!
//! The arithmetic, in f32 and in this order, is exactly kiln-tune's composed update (which
//! its PyTorch parity tests pin):
//!
//! ```text
//! g ← g·s
//! m ← m·β₁ + g·(1−β₁);   v ← v·β₂ + g²·(1−β₂)
//! p ← p·(1 − lr·wd) − (m / (√v / √bc₂ + ε))·(lr / bc₁)
//! ```

use rayon::prelude::*;

/// Scalars of one AdamW update of one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// Multiplies the gradient first (clipping).
    pub grad_scale: f32,
    /// β₁.
    pub beta1: f32,
    /// 1 − β₁ (rounded from f64, as the composed update's scalar is).
    pub one_minus_beta1: f32,
    /// β₂.
    pub beta2: f32,
    /// 1 − β₂ (rounded from f64).
    pub one_minus_beta2: f32,
    /// ε.
    pub eps: f32,
    /// `1 − lr·wd` (1 when the tensor does not decay).
    pub decay: f32,
    /// `√(1 − β₂ᵗ)`.
    pub bc2_sqrt: f32,
    /// `lr / (1 − β₁ᵗ)`.
    pub step_size: f32,
}

const CHUNK: usize = 1 << 14;

crate::math::twin!(fn update_chunk / update_chunk_scalar (p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: AdamWStep) {
    let (b1, b2) = (h.beta1, h.beta2);
    let (c1, c2) = (h.one_minus_beta1, h.one_minus_beta2);
    for i in 0..p.len().min(g.len()).min(m.len()).min(v.len()) {
        let g = g[i] * h.grad_scale;
        let mi = m[i] * b1 + g * c1;
        let vi = v[i] * b2 + g * g * c2;
        m[i] = mi;
        v[i] = vi;
        let denom = vi.sqrt() / h.bc2_sqrt + h.eps;
        p[i] = p[i] * h.decay - (mi / denom) * h.step_size;
    }
});

/// Updates `p`, `m`, `v` in place from the gradient `g` (all the same length), in parallel.
pub fn update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: AdamWStep) {
    assert!(
        p.len() == g.len() && p.len() == m.len() && p.len() == v.len(),
        "AdamW: lengths differ"
    );
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| update_chunk(p, g, m, v, h));
}

/// `Σ x²` in f64 partial sums per chunk (for the global gradient norm).
pub fn sum_sq(x: &[f32]) -> f64 {
    x.par_chunks(CHUNK)
        .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_steps_match_a_float64_adamw() {
        let n = 40_000;
        let mut p: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 - 48.0) / 50.0).collect();
        let mut p64: Vec<f64> = p.iter().map(|&x| x as f64).collect();
        let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
        let (mut m64, mut v64) = (vec![0.0f64; n], vec![0.0f64; n]);
        let (b1, b2, eps, lr, wd, s) = (0.9f64, 0.999f64, 1e-8f64, 1e-3f64, 0.01f64, 0.5f64);
        for t in 1..=3 {
            let g: Vec<f32> = (0..n)
                .map(|i| (((i * 31 + t * 7) % 101) as f32 - 50.0) / 40.0)
                .collect();
            let (bc1, bc2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
            let h = AdamWStep {
                grad_scale: s as f32,
                beta1: b1 as f32,
                one_minus_beta1: (1.0 - b1) as f32,
                beta2: b2 as f32,
                one_minus_beta2: (1.0 - b2) as f32,
                eps: eps as f32,
                decay: (1.0 - lr * wd) as f32,
                bc2_sqrt: bc2.sqrt() as f32,
                step_size: (lr / bc1) as f32,
            };
            update(&mut p, &g, &mut m, &mut v, h);
            for i in 0..n {
                let g = g[i] as f64 * s;
                m64[i] = b1 * m64[i] + (1.0 - b1) * g;
                v64[i] = b2 * v64[i] + (1.0 - b2) * g * g;
                p64[i] = p64[i] * (1.0 - lr * wd) - lr / bc1 * m64[i] / ((v64[i] / bc2).sqrt() + eps);
            }
        }
        for i in 0..n {
            assert!((p[i] as f64 - p64[i]).abs() < 1e-6, "p[{i}] {} vs {}", p[i], p64[i]);
            assert!((m[i] as f64 - m64[i]).abs() < 1e-6 && (v[i] as f64 - v64[i]).abs() < 1e-6);
        }
        let x = [3.0f32, 4.0];
        assert_eq!(sum_sq(&x), 25.0);
    }
}
