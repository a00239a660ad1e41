//! 2-D projections of hidden states and how much they distort.
//!
//! - [`pca`]: exact PCA in float64 — the covariance (or, when there are fewer points than
//!   features, the Gram matrix) is diagonalised by the cyclic Jacobi method, which is exact to
//!   rounding. `O(min(n, d)³)`: about a second at 384 features. Signs are fixed so the largest
//!   |loading| of each component is positive, so runs are reproducible.
//! - [`tsne`]: Barnes–Hut t-SNE from the `bhtsne` crate, started from the PCA coordinates
//!   scaled to standard deviation 1e-4 (the deterministic initialisation recommended by
//!   Kobak & Berens 2019) instead of the crate's unseeded random start, and run on one thread:
//!   the crate's parallel sums change with the thread schedule, so a parallel fit gives
//!   different coordinates on every run.
//! - [`umap`]: UMAP (McInnes, Healy & Melville 2018) written here, as umap-learn computes it:
//!   exact `k`-nearest neighbours, per-point `ρ` and `σ` by bisection to `log₂ k`, fuzzy union
//!   of the directed memberships, the low-dimensional curve `1/(1 + a d^{2b})` fitted to
//!   `min_dist` ([`umap_curve`]), edges sampled in proportion to their weight with 5 negative
//!   samples each, gradients clipped to ±4 and a learning rate decaying linearly from 1; seeded
//!   and started from the PCA coordinates scaled to a spread of 10 (umap-learn starts from a
//!   spectral embedding; PCA is its documented deterministic alternative). No crate offers it.
//! - [`neighbourhood_preservation`]: the mean share of each point's `k` nearest neighbours in
//!   the original space that are also among its `k` nearest in the projection (1 = perfect),
//!   and [`trustworthiness`] (Venna & Kaski 2001), which penalises projected neighbours by how
//!   far down the original ranking they are. Both are shown next to every view in the report.
//!
//! These work on host vectors (`&[f32]`, row-major `[n, d]`): the inputs are a few thousand
//! pooled vectors already read back from the backend, and neither burn nor its backends
//! offer an eigensolver or t-SNE.

use bhtsne::tSNE;

/// A fitted PCA.
#[derive(Debug, Clone)]
pub struct Pca {
    /// Feature means `[d]`.
    pub mean: Vec<f64>,
    /// Principal axes, `k` rows of `[d]`, unit length.
    pub components: Vec<Vec<f64>>,
    /// Variance along each axis (sample variance, `n − 1` denominator).
    pub explained_variance: Vec<f64>,
    /// Share of the total variance along each axis.
    pub explained_variance_ratio: Vec<f64>,
}

impl Pca {
    /// Coordinates `[n, k]` of `points` `[n, d]`.
    pub fn transform(&self, points: &[f32], d: usize) -> Vec<f32> {
        let k = self.components.len();
        let mut out = Vec::with_capacity(points.len() / d * k);
        for row in points.chunks(d) {
            for c in &self.components {
                let v: f64 = row
                    .iter()
                    .zip(&self.mean)
                    .zip(c)
                    .map(|((x, m), w)| (*x as f64 - m) * w)
                    .sum();
                out.push(v as f32);
            }
        }
        out
    }
}

/// Eigen-decomposition of a symmetric matrix `a` `[m, m]` (row-major) by cyclic Jacobi
/// rotations: returns eigenvalues (descending) and the matching unit eigenvectors.
pub fn symmetric_eigen(mut a: Vec<f64>, m: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    let mut v = vec![0f64; m * m];
    for i in 0..m {
        v[i * m + i] = 1.0;
    }
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
    for _sweep in 0..100 {
        let off: f64 = (0..m)
            .flat_map(|p| (p + 1..m).map(move |q| (p, q)))
            .map(|(p, q)| a[p * m + q] * a[p * m + q])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * scale {
            break;
        }
        for p in 0..m {
            for q in p + 1..m {
                let apq = a[p * m + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a[q * m + q] - a[p * m + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..m {
                    let akp = a[k * m + p];
                    let akq = a[k * m + q];
                    a[k * m + p] = c * akp - s * akq;
                    a[k * m + q] = s * akp + c * akq;
                }
                for k in 0..m {
                    let apk = a[p * m + k];
                    let aqk = a[q * m + k];
                    a[p * m + k] = c * apk - s * aqk;
                    a[q * m + k] = s * apk + c * aqk;
                }
                for k in 0..m {
                    let vkp = v[k * m + p];
                    let vkq = v[k * m + q];
                    v[k * m + p] = c * vkp - s * vkq;
                    v[k * m + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| a[j * m + j].total_cmp(&a[i * m + i]));
    let values = order.iter().map(|&i| a[i * m + i]).collect();
    let vectors = order.iter().map(|&i| (0..m).map(|k| v[k * m + i]).collect()).collect();
    (values, vectors)
}

/// Exact PCA of `points` `[n, d]` to `k` components; returns the fit and the coordinates
/// `[n, k]`.
///
/// # Panics
/// If `points.len() != n·d`, `n < 2` or `k > min(n, d)`.
pub fn pca(points: &[f32], n: usize, d: usize, k: usize) -> (Pca, Vec<f32>) {
    assert_eq!(points.len(), n * d, "points must be [n, d]");
    assert!(n >= 2 && k <= n.min(d), "need n ≥ 2 and k ≤ min(n, d)");
    let mean: Vec<f64> = (0..d)
        .map(|j| points.iter().skip(j).step_by(d).map(|&x| x as f64).sum::<f64>() / n as f64)
        .collect();
    let centered: Vec<f64> = points
        .iter()
        .enumerate()
        .map(|(i, &x)| x as f64 - mean[i % d])
        .collect();
    let denom = (n - 1) as f64;
    let (values, mut components) = if d <= n {
        let mut cov = vec![0f64; d * d];
        for row in centered.chunks(d) {
            for a in 0..d {
                let ra = row[a];
                if ra == 0.0 {
                    continue;
                }
                for b in a..d {
                    cov[a * d + b] += ra * row[b];
                }
            }
        }
        for a in 0..d {
            for b in a..d {
                let v = cov[a * d + b] / denom;
                cov[a * d + b] = v;
                cov[b * d + a] = v;
            }
        }
        let (values, vectors) = symmetric_eigen(cov, d);
        (values, vectors.into_iter().take(k).collect::<Vec<_>>())
    } else {
        // Fewer points than features: eigenvectors u of X Xᵀ give axes Xᵀu / ‖Xᵀu‖.
        let mut gram = vec![0f64; n * n];
        for a in 0..n {
            for b in a..n {
                let v: f64 = centered[a * d..(a + 1) * d]
                    .iter()
                    .zip(&centered[b * d..(b + 1) * d])
                    .map(|(x, y)| x * y)
                    .sum::<f64>()
                    / denom;
                gram[a * n + b] = v;
                gram[b * n + a] = v;
            }
        }
        let (values, vectors) = symmetric_eigen(gram, n);
        let axes = vectors
            .into_iter()
            .take(k)
            .map(|u| {
                let mut w: Vec<f64> = (0..d)
                    .map(|j| (0..n).map(|i| u[i] * centered[i * d + j]).sum())
                    .collect();
                let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
                w.iter_mut().for_each(|x| *x /= norm);
                w
            })
            .collect();
        (values, axes)
    };
    for c in &mut components {
        let big = c
            .iter()
            .copied()
            .fold(0f64, |m, x| if x.abs() > m.abs() { x } else { m });
        if big < 0.0 {
            c.iter_mut().for_each(|x| *x = -*x);
        }
    }
    let total: f64 = values.iter().map(|v| v.max(0.0)).sum::<f64>().max(1e-300);
    let explained_variance: Vec<f64> = values.iter().take(k).map(|v| v.max(0.0)).collect();
    let fit = Pca {
        mean,
        explained_variance_ratio: explained_variance.iter().map(|v| v / total).collect(),
        explained_variance,
        components,
    };
    let coords = fit.transform(points, d);
    (fit, coords)
}

/// t-SNE settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TsneConfig {
    /// Perplexity (effective number of neighbours); lowered to `(n − 1) / 3` for small `n`.
    pub perplexity: f32,
    /// Gradient-descent iterations.
    pub epochs: usize,
    /// Barnes–Hut accuracy (0 = exact; 0.5 is the usual trade-off).
    pub theta: f32,
}

impl Default for TsneConfig {
    fn default() -> Self {
        Self {
            perplexity: 30.0,
            epochs: 1000,
            theta: 0.5,
        }
    }
}

/// Barnes–Hut t-SNE of `points` `[n, d]` to `[n, 2]`, PCA-initialised.
///
/// # Panics
/// If `n < 4` (t-SNE needs neighbours) or `points.len() != n·d`.
pub fn tsne(points: &[f32], n: usize, d: usize, config: TsneConfig) -> Vec<f32> {
    assert!(n >= 4 && points.len() == n * d, "t-SNE needs ≥ 4 points of [n, d]");
    let (_, init) = pca(points, n, d, 2);
    let std = (init.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / init.len() as f64)
        .sqrt()
        .max(1e-30);
    let init: Vec<f32> = init.iter().map(|&x| (x as f64 / std * 1e-4) as f32).collect();
    let samples: Vec<&[f32]> = points.chunks(d).collect();
    let perplexity = config.perplexity.min((n as f32 - 1.0) / 3.0 - 1e-3).max(1.0);
    let fit = || {
        let mut fit = tSNE::<f32, &[f32], 2>::new(&samples);
        fit.perplexity(perplexity)
            .epochs(config.epochs)
            .initial_embedding(init.clone())
            .barnes_hut(config.theta, |a, b| {
                a.iter()
                    .zip(b.iter())
                    .map(|(x, y)| (x - y) * (x - y))
                    .sum::<f32>()
                    .sqrt()
            });
        fit.embedding()
    };
    // One thread: the crate's reductions are `par_iter().sum()`, whose float result depends on
    // how rayon splits the work.
    match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
        Ok(pool) => pool.install(fit),
        Err(_) => fit(),
    }
}

/// UMAP settings (umap-learn's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UmapConfig {
    /// Size of each point's neighbourhood in the fuzzy graph, the point itself included (as
    /// umap-learn's `n_neighbors`); at most `n`.
    pub neighbours: usize,
    /// Smallest distance between embedded points.
    pub min_dist: f64,
    /// Scale of the embedded points.
    pub spread: f64,
    /// Optimisation epochs.
    pub epochs: usize,
    /// Negative samples per positive sample.
    pub negative_samples: usize,
    /// Seed of the negative sampling.
    pub seed: u64,
}

impl Default for UmapConfig {
    fn default() -> Self {
        Self {
            neighbours: 15,
            min_dist: 0.1,
            spread: 1.0,
            epochs: 500,
            negative_samples: 5,
            seed: 42,
        }
    }
}

/// `(a, b)` of the embedding's similarity curve `1/(1 + a·x^{2b})`, least-squares fitted to
/// `1` below `min_dist` and `exp(−(x − min_dist)/spread)` above, on 300 points of
/// `[0, 3·spread]` (as umap-learn's `find_ab_params`): Gauss–Newton from `(1, 1)`.
pub fn umap_curve(min_dist: f64, spread: f64) -> (f64, f64) {
    let xs: Vec<f64> = (0..300).map(|i| 3.0 * spread * i as f64 / 299.0).collect();
    let target = |x: f64| {
        if x < min_dist {
            1.0
        } else {
            (-(x - min_dist) / spread).exp()
        }
    };
    let (mut a, mut b) = (1.0f64, 1.0f64);
    for _ in 0..200 {
        // Residuals r = f(x) − t and the Jacobian of f = 1/(1 + a x^{2b}).
        let (mut jtj, mut jtr) = ([[0.0f64; 2]; 2], [0.0f64; 2]);
        for &x in xs.iter().filter(|&&x| x > 0.0) {
            let p = x.powf(2.0 * b);
            let f = 1.0 / (1.0 + a * p);
            let r = f - target(x);
            let da = -p * f * f;
            let db = -a * p * 2.0 * x.ln() * f * f;
            let j = [da, db];
            for u in 0..2 {
                jtr[u] += j[u] * r;
                for v in 0..2 {
                    jtj[u][v] += j[u] * j[v];
                }
            }
        }
        let det = jtj[0][0] * jtj[1][1] - jtj[0][1] * jtj[1][0];
        if det.abs() < 1e-300 {
            break;
        }
        let step_a = (jtj[1][1] * jtr[0] - jtj[0][1] * jtr[1]) / det;
        let step_b = (jtj[0][0] * jtr[1] - jtj[1][0] * jtr[0]) / det;
        a = (a - step_a).max(1e-6);
        b = (b - step_b).max(1e-6);
        if step_a.abs() < 1e-12 && step_b.abs() < 1e-12 {
            break;
        }
    }
    (a, b)
}

/// UMAP of `points` `[n, d]` to `[n, 2]`. `O(n²·d)` for the exact neighbours (a few thousand
/// points take seconds), then `epochs × edges`.
///
/// # Panics
/// If `n < 4` or `points.len() != n·d`.
pub fn umap(points: &[f32], n: usize, d: usize, config: UmapConfig) -> Vec<f32> {
    assert!(n >= 4 && points.len() == n * d, "UMAP needs ≥ 4 points of [n, d]");
    // `neighbours` counts the point itself, as umap-learn's n_neighbors does.
    let k = config.neighbours.clamp(3, n);
    let (edges, max_w) = fuzzy_graph(points, n, d, k, config.epochs);
    let mut y = pca_start(points, n, d);
    let (a, b) = umap_curve(config.min_dist, config.spread);
    let per_sample: Vec<f64> = edges.iter().map(|e| max_w / e.2).collect();
    let mut next = per_sample.clone();
    let per_negative: Vec<f64> = per_sample
        .iter()
        .map(|p| p / config.negative_samples.max(1) as f64)
        .collect();
    let mut next_negative = per_negative.clone();
    // Negative samples from kiln's one seeded generator (SplitMix64, `rand_xoshiro`'s).
    let mut rng = {
        use rand_xoshiro::rand_core::SeedableRng;
        rand_xoshiro::SplitMix64::seed_from_u64(config.seed)
    };
    let mut draw = move || rand_xoshiro::rand_core::RngCore::next_u64(&mut rng);
    let clip = |g: f64| g.clamp(-4.0, 4.0);
    for epoch in 0..config.epochs {
        let alpha = 1.0 - epoch as f64 / config.epochs as f64;
        let e = epoch as f64;
        for (m, &(i, j, _)) in edges.iter().enumerate() {
            if next[m] > e {
                continue;
            }
            let (dx, dy) = (y[2 * i] - y[2 * j], y[2 * i + 1] - y[2 * j + 1]);
            let d2 = dx * dx + dy * dy;
            let coeff = if d2 > 0.0 {
                -2.0 * a * b * d2.powf(b - 1.0) / (1.0 + a * d2.powf(b))
            } else {
                0.0
            };
            for (c, delta) in [(0, dx), (1, dy)] {
                let g = clip(coeff * delta) * alpha;
                y[2 * i + c] += g;
                y[2 * j + c] -= g;
            }
            next[m] += per_sample[m];
            // Negative samples owed since the last visit.
            let owed = ((e - next_negative[m]) / per_negative[m]).floor().max(0.0) as usize;
            for _ in 0..owed {
                let o = (draw() % n as u64) as usize;
                if o == i {
                    continue;
                }
                let (dx, dy) = (y[2 * i] - y[2 * o], y[2 * i + 1] - y[2 * o + 1]);
                let d2 = dx * dx + dy * dy;
                let coeff = 2.0 * b / ((0.001 + d2) * (1.0 + a * d2.powf(b)));
                for (c, delta) in [(0, dx), (1, dy)] {
                    y[2 * i + c] += clip(coeff * delta) * alpha;
                }
            }
            next_negative[m] += owed as f64 * per_negative[m];
        }
    }
    y.into_iter().map(|v| v as f32).collect()
}

/// UMAP's fuzzy graph of `points` (`[n, d]`) with `k` neighbours (the point included), as
/// directed edges in both directions with their weights, after dropping edges sampled fewer
/// than once in `epochs`; and the largest weight.
fn fuzzy_graph(points: &[f32], n: usize, d: usize, k: usize, epochs: usize) -> (Vec<(usize, usize, f64)>, f64) {
    // Fuzzy simplicial set: directed memberships exp(−(d_ij − ρ_i)/σ_i) over the k − 1
    // nearest others, Σ_j = log₂ k.
    let mut weights = std::collections::BTreeMap::<(usize, usize), f64>::new();
    for i in 0..n {
        let dist = squared_distances(points, n, d, i);
        let mut order: Vec<usize> = (0..n).filter(|&j| j != i).collect();
        order.sort_by(|&a, &b| dist[a].total_cmp(&dist[b]).then(a.cmp(&b)));
        let near: Vec<(usize, f64)> = order[..k - 1].iter().map(|&j| (j, dist[j].sqrt())).collect();
        let rho = near.iter().map(|&(_, x)| x).find(|&x| x > 0.0).unwrap_or(0.0);
        let target = (k as f64).log2();
        let mass = |sigma: f64| -> f64 { near.iter().map(|&(_, x)| (-(x - rho).max(0.0) / sigma).exp()).sum() };
        let (mut lo, mut hi, mut sigma) = (0.0f64, f64::INFINITY, 1.0f64);
        for _ in 0..64 {
            let current = mass(sigma);
            if (current - target).abs() < 1e-5 {
                break;
            }
            if current > target {
                hi = sigma;
                sigma = (lo + hi) / 2.0;
            } else {
                lo = sigma;
                sigma = if hi.is_finite() { (lo + hi) / 2.0 } else { sigma * 2.0 };
            }
        }
        // umap-learn's floor on σ: 1e-3 of the mean neighbour distance.
        let mean = near.iter().map(|&(_, x)| x).sum::<f64>() / (k - 1) as f64;
        let sigma = sigma.max(1e-3 * mean).max(1e-12);
        for &(j, x) in &near {
            weights.insert((i, j), (-(x - rho).max(0.0) / sigma).exp());
        }
    }
    // Fuzzy union: w = a + b − a·b, one undirected edge per pair.
    let mut edges: Vec<(usize, usize, f64)> = Vec::new();
    for (&(i, j), &w) in &weights {
        let back = weights.get(&(j, i)).copied().unwrap_or(0.0);
        if i < j || back == 0.0 {
            let w = w + back - w * back;
            if w > 0.0 {
                edges.push((i.min(j), i.max(j), w));
            }
        }
    }
    edges.sort_by_key(|e| (e.0, e.1));
    let max_w = edges.iter().map(|e| e.2).fold(0.0, f64::max);
    // umap-learn drops edges that would be sampled fewer than once over the run.
    edges.retain(|e| e.2 >= max_w / epochs as f64);
    // Both directions, as the symmetric graph's two triangles: each end is pulled in turn.
    let reversed: Vec<_> = edges.iter().map(|&(i, j, w)| (j, i, w)).collect();
    edges.extend(reversed);
    (edges, max_w)
}

/// The PCA projection of `points` to 2-D, each coordinate scaled to [0, 10] (UMAP's start).
fn pca_start(points: &[f32], n: usize, d: usize) -> Vec<f64> {
    let (_, init) = pca(points, n, d, 2);
    let mut y: Vec<f64> = init.iter().map(|&v| v as f64).collect();
    for c in 0..2 {
        let (lo, hi) = y
            .iter()
            .skip(c)
            .step_by(2)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
        let span = (hi - lo).max(1e-12);
        for v in y.iter_mut().skip(c).step_by(2) {
            *v = 10.0 * (*v - lo) / span;
        }
    }
    y
}

fn squared_distances(points: &[f32], n: usize, dim: usize, i: usize) -> Vec<f64> {
    let p = &points[i * dim..(i + 1) * dim];
    (0..n)
        .map(|j| {
            points[j * dim..(j + 1) * dim]
                .iter()
                .zip(p)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum()
        })
        .collect()
}

/// Indices of all other points ordered by distance to `i` (ties by index).
fn ranking(points: &[f32], n: usize, dim: usize, i: usize) -> Vec<usize> {
    let dist = squared_distances(points, n, dim, i);
    let mut order: Vec<usize> = (0..n).filter(|&j| j != i).collect();
    order.sort_by(|&a, &b| dist[a].total_cmp(&dist[b]).then(a.cmp(&b)));
    order
}

/// How much a projection distorts neighbourhoods at `k`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProjectionScores {
    /// Mean over points of `|kNN_high(i) ∩ kNN_low(i)| / k` (1 = every neighbourhood kept).
    pub neighbourhood_preservation: f64,
    /// Trustworthiness (Venna & Kaski 2001):
    /// `1 − 2/(n k (2n − 3k − 1)) Σ_i Σ_{j ∈ U_k(i)} (r(i, j) − k)`, where `U_k(i)` are the
    /// projected `k` nearest neighbours of `i` that are not among its original ones and
    /// `r(i, j)` is `j`'s rank in the original space (1 = no false neighbours).
    pub trustworthiness: f64,
}

/// Both scores of each projection in `lows` (`(coords, d_low)`) of `high` `[n, d_high]`, with
/// the original-space ranking of each point computed once for all of them. `O(n²·d)`.
///
/// Trustworthiness is only meaningful for `k < n/2`.
///
/// # Panics
/// If not `1 ≤ k < n`.
pub fn projection_scores(high: &[f32], d_high: usize, lows: &[(&[f32], usize)], k: usize) -> Vec<ProjectionScores> {
    let n = high.len() / d_high;
    assert!(k >= 1 && k < n, "need 1 ≤ k < n");
    let mut overlap = vec![0usize; lows.len()];
    let mut penalty = vec![0f64; lows.len()];
    let mut rank = vec![0usize; n];
    for i in 0..n {
        for (r, j) in ranking(high, n, d_high, i).into_iter().enumerate() {
            rank[j] = r + 1;
        }
        for (m, (low, d_low)) in lows.iter().enumerate() {
            for j in ranking(low, n, *d_low, i).into_iter().take(k) {
                if rank[j] <= k {
                    overlap[m] += 1;
                } else {
                    penalty[m] += (rank[j] - k) as f64;
                }
            }
        }
    }
    let (nf, kf) = (n as f64, k as f64);
    (0..lows.len())
        .map(|m| ProjectionScores {
            neighbourhood_preservation: overlap[m] as f64 / (nf * kf),
            trustworthiness: 1.0 - 2.0 / (nf * kf * (2.0 * nf - 3.0 * kf - 1.0)) * penalty[m],
        })
        .collect()
}

/// [`ProjectionScores::neighbourhood_preservation`] of one projection.
pub fn neighbourhood_preservation(high: &[f32], d_high: usize, low: &[f32], d_low: usize, k: usize) -> f64 {
    projection_scores(high, d_high, &[(low, d_low)], k)[0].neighbourhood_preservation
}

/// [`ProjectionScores::trustworthiness`] of one projection.
///
/// # Panics
/// If not `1 ≤ k < n/2`.
pub fn trustworthiness(high: &[f32], d_high: usize, low: &[f32], d_low: usize, k: usize) -> f64 {
    assert!(2 * k < high.len() / d_high, "need 1 ≤ k < n/2");
    projection_scores(high, d_high, &[(low, d_low)], k)[0].trustworthiness
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random numbers in [-1, 1) (no RNG dependency in tests).
    fn noise(seed: u64, len: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f64 / (1u64 << 31) as f64 - 1.0) as f32
            })
            .collect()
    }

    #[test]
    fn jacobi_reconstructs_the_matrix() {
        let m = 7;
        let r = noise(3, m * m);
        // A = R Rᵀ (symmetric, positive semi-definite).
        let a: Vec<f64> = (0..m * m)
            .map(|idx| {
                (0..m)
                    .map(|t| (r[(idx / m) * m + t] * r[(idx % m) * m + t]) as f64)
                    .sum()
            })
            .collect();
        let (values, vectors) = symmetric_eigen(a.clone(), m);
        assert!(values.windows(2).all(|w| w[0] >= w[1]));
        for p in 0..m {
            for q in 0..m {
                let back: f64 = (0..m).map(|e| values[e] * vectors[e][p] * vectors[e][q]).sum();
                assert!(
                    (back - a[p * m + q]).abs() < 1e-10,
                    "[{p},{q}] {back} vs {}",
                    a[p * m + q]
                );
                let dot: f64 = (0..m).map(|t| vectors[p][t] * vectors[q][t]).sum();
                assert!((dot - f64::from(p == q)).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn pca_recovers_a_planted_plane_and_both_routes_agree() {
        // Points on the plane spanned by u = (1, 2, 2)/3 (spread 10) and v = (2, 1, -2)/3
        // (spread 3) plus a little noise, in 3-D.
        let n = 200;
        let t = noise(5, 2 * n);
        let e = noise(9, 3 * n);
        let u = [1.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0];
        let v = [2.0 / 3.0, 1.0 / 3.0, -2.0 / 3.0];
        let points: Vec<f32> = (0..n)
            .flat_map(|i| {
                let (a, b) = (10.0 * t[2 * i], 3.0 * t[2 * i + 1]);
                let e = &e;
                (0..3).map(move |c| a * u[c] + b * v[c] + 0.01 * e[3 * i + c] + 5.0)
            })
            .collect();
        let (fit, coords) = pca(&points, n, 3, 2);
        // The two axes span the planted plane (the sample's a and b are slightly correlated,
        // so the axes may turn within it): u and v lie in their span.
        for w in [u, v] {
            let in_span: f64 = fit
                .components
                .iter()
                .map(|c| (0..3).map(|k| c[k] * w[k] as f64).sum::<f64>().powi(2))
                .sum();
            assert!(in_span > 0.99999, "{in_span}");
        }
        let first: f64 = (0..3).map(|k| fit.components[0][k] * u[k] as f64).sum();
        assert!(first.abs() > 0.99, "the wide direction comes first: {first}");
        assert!(fit.explained_variance_ratio[0] + fit.explained_variance_ratio[1] > 0.9999);
        // The first coordinate's sample variance is the first eigenvalue.
        let c0: Vec<f64> = coords.iter().step_by(2).map(|&x| x as f64).collect();
        let var = c0.iter().map(|x| x * x).sum::<f64>() / (n - 1) as f64;
        assert!((var - fit.explained_variance[0]).abs() < 1e-4 * var);
        // Gram route (4 points, 6 features) against the covariance route on the same points
        // listed twice (8 ≥ 6): same axes, variances in the ratio of the denominators 3 : 7/2.
        let few: Vec<f32> = noise(11, 4 * 6);
        let (a, ca) = pca(&few, 4, 6, 2);
        let twice: Vec<f32> = few.iter().chain(few.iter()).copied().collect();
        let (b, _) = pca(&twice, 8, 6, 2);
        for c in 0..2 {
            for j in 0..6 {
                assert!((a.components[c][j] - b.components[c][j]).abs() < 1e-9);
            }
            assert!((a.explained_variance[c] * 3.0 - b.explained_variance[c] * 7.0 / 2.0).abs() < 1e-9);
        }
        let direct_var: f64 = ca.iter().step_by(2).map(|&x| (x as f64).powi(2)).sum::<f64>() / 3.0;
        assert!((direct_var - a.explained_variance[0]).abs() < 1e-5);
    }

    #[test]
    fn preservation_scores_are_one_for_an_isometry_and_drop_for_a_shuffle() {
        let n = 60;
        let p = noise(21, n * 2);
        // A rotation + translation of 2-D points preserves every neighbourhood.
        let (c, s) = (0.6f32, 0.8f32);
        let q: Vec<f32> = p
            .chunks(2)
            .flat_map(|r| [c * r[0] - s * r[1] + 3.0, s * r[0] + c * r[1]])
            .collect();
        assert!((neighbourhood_preservation(&p, 2, &q, 2, 5) - 1.0).abs() < 1e-12);
        assert!((trustworthiness(&p, 2, &q, 2, 5) - 1.0).abs() < 1e-12);
        // Unrelated coordinates: the overlap is near chance (k/(n−1) ≈ 0.085).
        let r = noise(99, n * 2);
        assert!(neighbourhood_preservation(&p, 2, &r, 2, 5) < 0.3);
        assert!(trustworthiness(&p, 2, &r, 2, 5) < 0.75);
    }

    #[test]
    fn umap_curve_matches_umap_learns_parameters() {
        // umap-learn's find_ab_params(spread=1, min_dist=0.1) gives a ≈ 1.577, b ≈ 0.8951
        // (the values its documentation and source quote for the defaults).
        let (a, b) = umap_curve(0.1, 1.0);
        assert!((a - 1.577).abs() < 0.01, "a = {a}");
        assert!((b - 0.8951).abs() < 0.005, "b = {b}");
        // Larger min_dist flattens the curve's head: b grows, a shrinks (umap-learn: 0.5 →
        // a ≈ 0.583, b ≈ 1.334).
        let (a, b) = umap_curve(0.5, 1.0);
        assert!((a - 0.583).abs() < 0.01 && (b - 1.334).abs() < 0.01, "a = {a}, b = {b}");
    }

    #[test]
    fn umap_separates_three_clusters_and_is_reproducible() {
        let (n, d) = (120, 12);
        let e = noise(8, n * d);
        let centre =
            |i: usize, c: usize| [6.0, -6.0, 0.0][i / 40] * if (c + i / 40).is_multiple_of(2) { 1.0 } else { -0.5 };
        let points: Vec<f32> = (0..n * d).map(|t| e[t] + centre(t / d, t % d) as f32).collect();
        let config = UmapConfig {
            epochs: 200,
            ..UmapConfig::default()
        };
        let y = umap(&points, n, d, config);
        assert_eq!(y.len(), n * 2);
        assert!(y.iter().all(|v| v.is_finite()));
        assert_eq!(y, umap(&points, n, d, config), "same seed, same embedding");
        // Every point's nearest embedded neighbour is from its own cluster, and local
        // neighbourhoods survive much better than chance (k/(n−1) ≈ 0.08).
        for i in 0..n {
            let nearest = ranking(&y, n, 2, i)[0];
            assert_eq!(i / 40, nearest / 40, "point {i}");
        }
        let kept = neighbourhood_preservation(&points, d, &y, 2, 10);
        assert!(kept > 0.3, "neighbourhood preservation {kept}");
    }

    #[test]
    fn tsne_separates_two_clusters() {
        let (n, d) = (80, 10);
        let e = noise(4, n * d);
        let points: Vec<f32> = (0..n * d)
            .map(|i| e[i] * 0.3 + if i / d < n / 2 { 4.0 } else { -4.0 })
            .collect();
        let y = tsne(
            &points,
            n,
            d,
            TsneConfig {
                perplexity: 10.0,
                epochs: 300,
                theta: 0.5,
            },
        );
        assert_eq!(y.len(), n * 2);
        assert!(neighbourhood_preservation(&points, d, &y, 2, 10) > 0.5);
        let config = TsneConfig {
            perplexity: 10.0,
            epochs: 300,
            theta: 0.5,
        };
        // Reproducible: a parallel fit differed from run to run (its float sums follow the
        // thread schedule); three more fits must equal the first exactly.
        for _ in 0..3 {
            assert_eq!(y, tsne(&points, n, d, config), "same input, same embedding");
        }
        // Every point's nearest projected neighbour is from its own cluster.
        for i in 0..n {
            let nearest = ranking(&y, n, 2, i)[0];
            assert_eq!(i < n / 2, nearest < n / 2, "point {i}");
        }
    }
}
