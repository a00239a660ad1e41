//! LayerNorm over the last dimension, forward and backward, parallel over rows:
//! `y = (x − μ)·r·γ + β` with `r = 1/√(σ² + ε)` and the biased variance (as PyTorch and
//! burn). The forward keeps `(μ, r)` per row; the backward is
//! `dx = r·(g − mean(g) − x̂·mean(g·x̂))` with `g = dy·γ`, `x̂ = (x − μ)·r`, and
//! `dγ = Σ_rows dy·x̂`, `dβ = Σ_rows dy` (partial sums per block of rows, added in order).

use rayon::prelude::*;

use crate::math::{dot_into, sum_into};

fn sum(x: &[f32]) -> f32 {
    let mut s = 0.0;
    sum_into(x, &mut s);
    s
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut s = 0.0;
    dot_into(a, b, &mut s);
    s
}

/// Rows per parallel task.
const ROWS: usize = 64;

/// Output of [`forward`].
#[derive(Debug, Clone)]
pub struct Forward {
    /// `y`, the shape of `x`.
    pub y: Vec<f32>,
    /// Per row `(μ, r)`.
    pub stats: Vec<f32>,
}

/// Gradients of [`backward`].
#[derive(Debug, Clone)]
pub struct Grads {
    /// ∂L/∂x.
    pub dx: Vec<f32>,
    /// ∂L/∂γ.
    pub dgamma: Vec<f32>,
    /// ∂L/∂β.
    pub dbeta: Vec<f32>,
}

/// Normalises each row of `x` (`len = rows·d`, `d = gamma.len()`).
pub fn forward(x: &[f32], gamma: &[f32], beta: Option<&[f32]>, eps: f32) -> Forward {
    let d = gamma.len();
    assert!(d > 0 && x.len().is_multiple_of(d), "x is not [rows, {d}]");
    let rows = x.len() / d;
    let mut y = vec![0.0f32; x.len()];
    let mut stats = vec![0.0f32; rows * 2];
    y.par_chunks_mut(ROWS * d)
        .zip(stats.par_chunks_mut(ROWS * 2))
        .zip(x.par_chunks(ROWS * d))
        .for_each(|((y, st), x)| {
            let mut dev = vec![0.0f32; d];
            for ((y, st), x) in y.chunks_mut(d).zip(st.chunks_mut(2)).zip(x.chunks(d)) {
                let mean = sum(x) / d as f32;
                for (t, &v) in dev.iter_mut().zip(x) {
                    *t = v - mean;
                }
                let r = 1.0 / (dot(&dev, &dev) / d as f32 + eps).sqrt();
                match beta {
                    Some(b) => {
                        for i in 0..d {
                            y[i] = dev[i] * r * gamma[i] + b[i];
                        }
                    }
                    None => {
                        for i in 0..d {
                            y[i] = dev[i] * r * gamma[i];
                        }
                    }
                }
                st[0] = mean;
                st[1] = r;
            }
        });
    Forward { y, stats }
}

/// Gradients from the forward's input, statistics and `dy`.
pub fn backward(x: &[f32], gamma: &[f32], stats: &[f32], dy: &[f32]) -> Grads {
    let d = gamma.len();
    assert!(x.len() == dy.len() && x.len().is_multiple_of(d) && stats.len() == x.len() / d * 2);
    let mut dx = vec![0.0f32; x.len()];
    let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(ROWS * d)
        .zip(x.par_chunks(ROWS * d))
        .zip(dy.par_chunks(ROWS * d))
        .zip(stats.par_chunks(ROWS * 2))
        .map(|(((dx, x), dy), st)| {
            let (mut dg, mut db) = (vec![0.0f32; d], vec![0.0f32; d]);
            let (mut xhat, mut g) = (vec![0.0f32; d], vec![0.0f32; d]);
            for (((dx, x), dy), st) in dx.chunks_mut(d).zip(x.chunks(d)).zip(dy.chunks(d)).zip(st.chunks(2)) {
                let (mean, r) = (st[0], st[1]);
                for i in 0..d {
                    xhat[i] = (x[i] - mean) * r;
                    g[i] = dy[i] * gamma[i];
                    dg[i] += dy[i] * xhat[i];
                    db[i] += dy[i];
                }
                let (mg, mgx) = (sum(&g) / d as f32, dot(&g, &xhat) / d as f32);
                for i in 0..d {
                    dx[i] = r * (g[i] - mg - xhat[i] * mgx);
                }
            }
            (dg, db)
        })
        .collect();
    let (mut dgamma, mut dbeta) = (vec![0.0f32; d], vec![0.0f32; d]);
    for (dg, db) in partial {
        for i in 0..d {
            dgamma[i] += dg[i];
            dbeta[i] += db[i];
        }
    }
    Grads { dx, dgamma, dbeta }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_and_backward_match_float64() {
        let (rows, d) = (150, 37);
        let v = |n: usize, s: u64| -> Vec<f32> {
            (0..n)
                .map(|i| ((crate::rng::splitmix64(s, i as u64) >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0)
                .collect()
        };
        let (x, gamma, beta, dy) = (v(rows * d, 1), v(d, 2), v(d, 3), v(rows * d, 4));
        let eps = 1e-5f32;
        let f = forward(&x, &gamma, Some(&beta), eps);
        let g = backward(&x, &gamma, &f.stats, &dy);
        let (mut dg, mut db) = (vec![0.0f64; d], vec![0.0f64; d]);
        for r in 0..rows {
            let x: Vec<f64> = x[r * d..(r + 1) * d].iter().map(|&v| v as f64).collect();
            let dy: Vec<f64> = dy[r * d..(r + 1) * d].iter().map(|&v| v as f64).collect();
            let mean = x.iter().sum::<f64>() / d as f64;
            let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            let rs = 1.0 / (var + eps as f64).sqrt();
            let xhat: Vec<f64> = x.iter().map(|v| (v - mean) * rs).collect();
            let gg: Vec<f64> = (0..d).map(|i| dy[i] * gamma[i] as f64).collect();
            let mg = gg.iter().sum::<f64>() / d as f64;
            let mgx = (0..d).map(|i| gg[i] * xhat[i]).sum::<f64>() / d as f64;
            for i in 0..d {
                let y = xhat[i] * gamma[i] as f64 + beta[i] as f64;
                assert!((f.y[r * d + i] as f64 - y).abs() < 1e-5, "y[{r},{i}]");
                let dx = rs * (gg[i] - mg - xhat[i] * mgx);
                assert!((g.dx[r * d + i] as f64 - dx).abs() < 1e-4 * rs.max(1.0), "dx[{r},{i}]");
                dg[i] += dy[i] * xhat[i];
                db[i] += dy[i];
            }
        }
        for i in 0..d {
            assert!((g.dgamma[i] as f64 - dg[i]).abs() < 1e-3 && (g.dbeta[i] as f64 - db[i]).abs() < 1e-3);
        }
    }
}
