//! Softmax attention, forward and backward, flash-style: per (batch, head) the queries are
//! processed in blocks of [`ROW_BLOCK`] rows, so no thread holds more than a
//! `ROW_BLOCK × seq_k` block of scores and memory grows linearly with the sequence.
//!
//! Q, K, V (and the output gradient) are read through strided [`View4`]s, so the
//! `[batch, seq, heads·dim]` projections are used where they lie — the head split is a
//! stride, not a copy — and outputs and gradients are written as `[batch, seq, heads, dim]`
//! (the layout the head merge wants), viewed as `[batch, heads, seq, dim]` by the caller.
//!
//! Semantics are Hugging Face's eager attention: scores `q·kᵀ/√d`; padded keys and (when
//! causal, bottom-right aligned) future keys are filled with `f32::MIN`, so a row whose keys
//! are all masked is uniform over every key rather than NaN; softmax; dropout on the
//! probabilities with the counter-based [`RowMask`] of row `(b·H + h)·S_q + i`, so the backward
//! regenerates the mask from the seed; `· v`. The backward is the exact gradient of that
//! (masked scores get no gradient), using `Σ_j P'_ij dP'_ij = dO_i·O_i`.
//!
//! Parallel over (batch, head) with rayon; the GEMMs inside a task run on one thread
//! (`gemm`, `Parallelism::None`).

// The `exp` polynomial's published coefficients expand here (see `math`); the scalar twin of
// `dot` spells its multiply–add out.
#![allow(clippy::excessive_precision)]

use gemm::Parallelism;
use rayon::prelude::*;

use crate::math::{dot_into as dot, dropout_row, exp_body, twin};
use crate::mm::mm;
use crate::rng::RowMask;

/// Query rows per block.
pub const ROW_BLOCK: usize = 64;

/// A read-only `[batch, heads, seq, dim]` view of an f32 buffer with non-negative strides.
#[derive(Debug, Clone, Copy)]
pub struct View4<'a> {
    data: &'a [f32],
    offset: usize,
    dims: [usize; 4],
    strides: [usize; 4],
}

impl<'a> View4<'a> {
    /// A view of `data` at `offset`; `None` when an element would lie outside `data`.
    pub fn new(data: &'a [f32], offset: usize, dims: [usize; 4], strides: [usize; 4]) -> Option<Self> {
        let last = dims
            .iter()
            .zip(&strides)
            .map(|(&n, &s)| n.saturating_sub(1).checked_mul(s))
            .try_fold(offset, |acc, x| acc.checked_add(x?))?;
        (dims.iter().product::<usize>() == 0 || last < data.len()).then_some(Self {
            data,
            offset,
            dims,
            strides,
        })
    }

    /// A contiguous `[batch, heads, seq, dim]` buffer.
    pub fn contiguous(data: &'a [f32], dims: [usize; 4]) -> Option<Self> {
        let [_, h, s, d] = dims;
        Self::new(data, 0, dims, [h * s * d, s * d, d, 1])
    }

    /// A `[batch, seq, heads, dim]` buffer seen as `[batch, heads, seq, dim]`.
    pub fn seq_major(data: &'a [f32], dims: [usize; 4]) -> Option<Self> {
        let [_, h, s, d] = dims;
        Self::new(data, 0, dims, [s * h * d, d, h * d, 1])
    }

    /// Dimensions `[batch, heads, seq, dim]`.
    pub fn dims(&self) -> [usize; 4] {
        self.dims
    }

    fn at(&self, b: usize, h: usize, s: usize) -> *const f32 {
        let i = self.offset + b * self.strides[0] + h * self.strides[1] + s * self.strides[2];
        self.data[i..].as_ptr()
    }

    fn rs(&self) -> isize {
        self.strides[2] as isize
    }

    fn cs(&self) -> isize {
        self.strides[3] as isize
    }
}

/// What the scores see besides Q and K.
#[derive(Debug, Clone, Copy, Default)]
pub struct Masking<'a> {
    /// `[batch, seq_k]`, true at real keys; `None`: every key is real.
    pub key_keep: Option<&'a [bool]>,
    /// Query `i` sees keys `j ≤ i + seq_k − seq_q`.
    pub causal: bool,
    /// Dropout probability on the attention probabilities, in [0, 1).
    pub dropout: f32,
    /// Seed of the dropout stream.
    pub seed: u64,
}

/// Output of [`forward`].
#[derive(Debug, Clone)]
pub struct Forward {
    /// Context vectors, `[batch, seq_q, heads, dim_v]`.
    pub out: Vec<f32>,
    /// Per row `(max, 1/Σ)` of the masked scores, `[batch, heads, seq_q, 2]`; the backward
    /// recomputes the probabilities from them.
    pub stats: Vec<f32>,
}

/// Gradients of [`backward`], each `[batch, seq, heads, dim]`.
#[derive(Debug, Clone)]
pub struct Grads {
    /// ∂L/∂q.
    pub dq: Vec<f32>,
    /// ∂L/∂k.
    pub dk: Vec<f32>,
    /// ∂L/∂v.
    pub dv: Vec<f32>,
}

#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: tasks write disjoint (batch, head) column slices of the buffers behind these
// pointers, and the buffers outlive the parallel loop.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

fn check(q: &View4, k: &View4, v: &View4, m: &Masking) -> (usize, usize, usize, usize, usize, usize) {
    let [b, h, sq, d] = q.dims;
    let [bk, hk, sk, dk] = k.dims;
    let [bv, hv, sv, dv] = v.dims;
    assert!(b == bk && b == bv && h == hk && h == hv, "batch/heads differ");
    assert!(d == dk && sk == sv, "q/k dims or k/v lengths differ");
    if let Some(keep) = m.key_keep {
        assert_eq!(keep.len(), b * sk, "key mask is not [batch, seq_k]");
    }
    assert!((0.0..1.0).contains(&m.dropout), "dropout {} outside [0, 1)", m.dropout);
    (b, h, sq, sk, d, dv)
}

/// Fills masked scores of row `i` with `f32::MIN`.
#[inline]
fn mask_row(row: &mut [f32], keep: Option<&[bool]>, limit: Option<usize>) {
    if let Some(keep) = keep {
        for (s, &k) in row.iter_mut().zip(keep) {
            *s = if k { *s } else { f32::MIN };
        }
    }
    if let Some(limit) = limit {
        for s in row.iter_mut().skip(limit) {
            *s = f32::MIN;
        }
    }
}

/// Scores `q·kᵀ/√d` of query rows `i0..i0 + s.len()/seq_k` of `(batch, head)` against every
/// key, written into `s` row by row, with masked keys filled with `f32::MIN`.
fn masked_scores(
    q: &View4,
    k: &View4,
    (bi, hi): (usize, usize),
    i0: usize,
    s: &mut [f32],
    keep: Option<&[bool]>,
    causal: bool,
) {
    let [_, _, sq, d] = q.dims;
    let sk = k.dims[2];
    let r = s.len() / sk;
    // SAFETY: the views were bounds-checked at construction; `s` is r×sk.
    unsafe {
        mm(
            r,
            sk,
            d,
            s.as_mut_ptr(),
            sk as isize,
            false,
            q.at(bi, hi, i0),
            q.rs(),
            q.cs(),
            k.at(bi, hi, 0),
            k.cs(),
            k.rs(),
            (d as f32).powf(-0.5),
            Parallelism::None,
        );
    }
    for (ii, row) in s.chunks_mut(sk).enumerate() {
        mask_row(row, keep, causal_limit(causal, i0 + ii, sq, sk));
    }
}

/// Batch `b`'s key mask, `None` when it masks nothing.
fn batch_keep(mask: Option<&[bool]>, b: usize, sk: usize) -> Option<&[bool]> {
    mask.map(|m| &m[b * sk..(b + 1) * sk]).filter(|k| k.iter().any(|&k| !k))
}

/// Number of keys row `i` may see when causal (`None`: all).
#[inline]
fn causal_limit(causal: bool, i: usize, sq: usize, sk: usize) -> Option<usize> {
    causal.then(|| (i as isize + sk as isize - sq as isize + 1).clamp(0, sk as isize) as usize)
}

twin!(fn exp_shift_sum / exp_shift_sum_scalar (row: &mut [f32], max: f32, sum: &mut f32) {
    // eight independent partial sums, so the loop vectorises (float addition is not
    // reassociated by the compiler)
    let mut acc = [0.0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for (a, s) in acc.iter_mut().zip(c.iter_mut()) {
            let e = exp_body!(*s - max, fma);
            *s = e;
            *a += e;
        }
    }
    let mut tail = 0.0f32;
    for s in chunks.into_remainder() {
        let e = exp_body!(*s - max, fma);
        *s = e;
        tail += e;
    }
    *sum = acc.iter().sum::<f32>() + tail;
});

twin!(fn row_max / row_max_scalar (row: &[f32], out: &mut f32) {
    let mut acc = [f32::MIN; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (a, &s) in acc.iter_mut().zip(c) {
            *a = if s > *a { s } else { *a };
        }
    }
    let mut m = f32::MIN;
    for &s in acc.iter().chain(chunks.remainder()) {
        m = if s > m { s } else { m };
    }
    *out = m;
});

twin!(fn scale_row / scale_row_scalar (row: &mut [f32], by: f32) {
    for s in row.iter_mut() {
        *s *= by;
    }
});

twin!(fn score_grad / score_grad_scalar (ds: &mut [f32], p: &[f32], di: f32, scale: f32) {
    for (d, &p) in ds.iter_mut().zip(p) {
        *d = p * (*d - di) * scale;
    }
});

/// Softmax of one masked row in place; returns `(max, 1/Σ)`.
fn softmax_row(row: &mut [f32]) -> (f32, f32) {
    let mut max = f32::MIN;
    row_max(row, &mut max);
    let mut sum = 0.0;
    exp_shift_sum(row, max, &mut sum);
    let inv = 1.0 / sum;
    scale_row(row, inv);
    (max, inv)
}

/// Row `i` of a `[.., seq, dim]` view as a slice, copied into `buf` unless contiguous.
fn row_of<'b>(v: &'b View4, b: usize, h: usize, i: usize, buf: &'b mut Vec<f32>) -> &'b [f32] {
    let d = v.dims[3];
    let start = v.offset + b * v.strides[0] + h * v.strides[1] + i * v.strides[2];
    if v.strides[3] == 1 {
        &v.data[start..start + d]
    } else {
        buf.clear();
        buf.extend((0..d).map(|x| v.data[start + x * v.strides[3]]));
        buf
    }
}

/// Attention forward. `q` is `[B, H, S_q, D]`, `k` `[B, H, S_k, D]`, `v` `[B, H, S_k, D_v]`.
pub fn forward(q: View4, k: View4, v: View4, masking: Masking) -> Forward {
    let (b, h, sq, sk, _, dv) = check(&q, &k, &v, &masking);
    let mut out = vec![0.0f32; b * sq * h * dv];
    let mut stats = vec![0.0f32; b * h * sq * 2];
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let row_stride = (h * dv) as isize;
    let keep_scale = 1.0 / (1.0 - masking.dropout);
    stats.par_chunks_mut(sq * 2).enumerate().for_each_init(
        || vec![0.0f32; ROW_BLOCK.min(sq) * sk],
        |scores, (bh, stats)| {
            // capture the Send wrapper, not its raw-pointer field
            #[allow(clippy::redundant_locals)]
            let out_ptr = out_ptr;
            let (bi, hi) = (bh / h, bh % h);
            let keep = batch_keep(masking.key_keep, bi, sk);
            for i0 in (0..sq).step_by(ROW_BLOCK) {
                let r = ROW_BLOCK.min(sq - i0);
                let s = &mut scores[..r * sk];
                masked_scores(&q, &k, (bi, hi), i0, s, keep, masking.causal);
                for ii in 0..r {
                    let i = i0 + ii;
                    let row = &mut s[ii * sk..(ii + 1) * sk];
                    let (max, inv) = softmax_row(row);
                    stats[2 * i] = max;
                    stats[2 * i + 1] = inv;
                    if masking.dropout > 0.0 {
                        let rm = RowMask::new(masking.seed, (bh * sq + i) as u64, masking.dropout);
                        dropout_row(row, rm, keep_scale);
                    }
                }
                // SAFETY: rows i0..i0+r, columns hi·dv..(hi+1)·dv of `out` belong to this task.
                unsafe {
                    let dst = out_ptr.0.add((bi * sq + i0) * h * dv + hi * dv);
                    mm(
                        r,
                        dv,
                        sk,
                        dst,
                        row_stride,
                        false,
                        s.as_ptr(),
                        sk as isize,
                        1,
                        v.at(bi, hi, 0),
                        v.rs(),
                        v.cs(),
                        1.0,
                        Parallelism::None,
                    );
                }
            }
        },
    );
    Forward { out, stats }
}

/// The row-wise parts of the backward pass for one (batch, head): recomputing P from the saved
/// statistics, and turning dP' into the score gradient dS.
struct BackwardRows<'a> {
    q: &'a View4<'a>,
    k: &'a View4<'a>,
    out: &'a View4<'a>,
    dout: &'a View4<'a>,
    /// (batch, head, batch·heads + head)
    at: (usize, usize, usize),
    sq: usize,
    sk: usize,
    /// This (batch, head)'s `[sq][max, 1/sum]`.
    stats: &'a [f32],
    masking: &'a Masking<'a>,
    keep: Option<&'a [bool]>,
    keep_scale: f32,
    scale: f32,
}

impl BackwardRows<'_> {
    /// The dropout mask of query row `i`, when there is dropout.
    fn row_mask(&self, i: usize) -> Option<RowMask> {
        let m = self.masking;
        (m.dropout > 0.0).then(|| RowMask::new(m.seed, (self.at.2 * self.sq + i) as u64, m.dropout))
    }

    /// Rows `i0..`: P from the masked scores in `p` and the saved max and 1/sum (in place),
    /// P' = dropout(P) into `pd`, and Dᵢ = dOᵢ·Oᵢ into `di`.
    fn recompute(
        &self,
        i0: usize,
        p: &mut [f32],
        pd: &mut [f32],
        di: &mut [f32],
        bufs: (&mut Vec<f32>, &mut Vec<f32>),
    ) {
        let (sk, (bi, hi, _)) = (self.sk, self.at);
        for (ii, d_i) in di.iter_mut().enumerate().take(p.len() / sk) {
            let i = i0 + ii;
            let mut dot_io = 0.0;
            dot(
                row_of(self.dout, bi, hi, i, bufs.0),
                row_of(self.out, bi, hi, i, bufs.1),
                &mut dot_io,
            );
            *d_i = dot_io;
            let row = &mut p[ii * sk..(ii + 1) * sk];
            let (max, inv) = (self.stats[2 * i], self.stats[2 * i + 1]);
            let mut sum = 0.0;
            exp_shift_sum(row, max, &mut sum);
            scale_row(row, inv);
            let prow = &mut pd[ii * sk..(ii + 1) * sk];
            prow.copy_from_slice(row);
            if let Some(rm) = self.row_mask(i) {
                dropout_row(prow, rm, self.keep_scale);
            }
        }
    }

    /// Rows `i0..` of dS from dP' in `ds` (in place): undo the dropout scaling, the softmax
    /// gradient with Dᵢ, and zero where the score was masked (a constant: no gradient, which
    /// matters for all-masked rows).
    fn score_grads(&self, i0: usize, ds: &mut [f32], p: &[f32], di: &[f32]) {
        let sk = self.sk;
        for (ii, &d_i) in di.iter().enumerate().take(p.len() / sk) {
            let i = i0 + ii;
            let limit = causal_limit(self.masking.causal, i, self.sq, sk).unwrap_or(sk);
            let row = &mut ds[ii * sk..(ii + 1) * sk];
            if let Some(rm) = self.row_mask(i) {
                dropout_row(row, rm, self.keep_scale);
            }
            score_grad(row, &p[ii * sk..(ii + 1) * sk], d_i, self.scale);
            for x in row.iter_mut().skip(limit) {
                *x = 0.0;
            }
            if let Some(keep) = self.keep {
                for (x, &k) in row.iter_mut().zip(keep) {
                    if !k {
                        *x = 0.0;
                    }
                }
            }
        }
    }

    /// dQ = dS·K into rows `i0..i0 + r` of dq; dK += dSᵀ·Q (the first row block writes, the
    /// later ones add).
    ///
    /// # Safety
    /// `dq_ptr` and `dk_ptr` point at `[b][s][h][d]` buffers that outlive the call, whose rows
    /// `i0..i0 + r` (dq) and (batch, head) columns (dk) only this task writes.
    unsafe fn dq_dk(&self, i0: usize, r: usize, ds: &[f32], dq_ptr: SyncPtr, dk_ptr: SyncPtr) {
        let (q, k, (bi, hi, _)) = (self.q, self.k, self.at);
        let [_, h, sq, d] = q.dims;
        let sk = self.sk;
        // SAFETY: the caller's contract; the views are bounds-checked by `check`.
        unsafe {
            let dst = dq_ptr.0.add((bi * sq + i0) * h * d + hi * d);
            mm(
                r,
                d,
                sk,
                dst,
                (h * d) as isize,
                false,
                ds.as_ptr(),
                sk as isize,
                1,
                k.at(bi, hi, 0),
                k.rs(),
                k.cs(),
                1.0,
                Parallelism::None,
            );
            let dst = dk_ptr.0.add(bi * sk * h * d + hi * d);
            mm(
                sk,
                d,
                r,
                dst,
                (h * d) as isize,
                i0 > 0,
                ds.as_ptr(),
                1,
                sk as isize,
                q.at(bi, hi, i0),
                q.rs(),
                q.cs(),
                1.0,
                Parallelism::None,
            );
        }
    }
}

/// Attention backward: the gradients of `q`, `k`, `v` given the forward's inputs, its
/// output `out` (`[B, H, S_q, D_v]` view) and `stats`, and the output gradient `dout`.
#[allow(clippy::too_many_arguments)]
pub fn backward(q: View4, k: View4, v: View4, out: View4, stats: &[f32], dout: View4, masking: Masking) -> Grads {
    let (b, h, sq, sk, d, dv) = check(&q, &k, &v, &masking);
    assert_eq!(out.dims, [b, h, sq, dv]);
    assert_eq!(dout.dims, [b, h, sq, dv]);
    assert_eq!(stats.len(), b * h * sq * 2);
    let scale = (d as f32).powf(-0.5);
    let keep_scale = 1.0 / (1.0 - masking.dropout);
    let mut dq = vec![0.0f32; b * sq * h * d];
    let mut dk = vec![0.0f32; b * sk * h * d];
    let mut dvv = vec![0.0f32; b * sk * h * dv];
    let (dq_ptr, dk_ptr, dv_ptr) = (
        SyncPtr(dq.as_mut_ptr()),
        SyncPtr(dk.as_mut_ptr()),
        SyncPtr(dvv.as_mut_ptr()),
    );
    let rb = ROW_BLOCK.min(sq);
    (0..b * h).into_par_iter().for_each_init(
        || {
            let block = || vec![0.0f32; rb * sk];
            (block(), block(), block(), vec![0.0f32; rb], Vec::new(), Vec::new())
        },
        |(p, pd, ds, di, rb1, rb2), bh| {
            let (dq_ptr, dk_ptr, dv_ptr) = (dq_ptr, dk_ptr, dv_ptr);
            let (bi, hi) = (bh / h, bh % h);
            let keep = batch_keep(masking.key_keep, bi, sk);
            let rows = BackwardRows {
                q: &q,
                k: &k,
                out: &out,
                dout: &dout,
                at: (bi, hi, bh),
                sq,
                sk,
                stats: &stats[bh * sq * 2..(bh + 1) * sq * 2],
                masking: &masking,
                keep,
                keep_scale,
                scale,
            };
            for i0 in (0..sq).step_by(ROW_BLOCK) {
                let r = ROW_BLOCK.min(sq - i0);
                let (p, pd, ds) = (&mut p[..r * sk], &mut pd[..r * sk], &mut ds[..r * sk]);
                masked_scores(&q, &k, (bi, hi), i0, p, keep, masking.causal);
                rows.recompute(i0, p, pd, di, (rb1, rb2));
                // SAFETY (all GEMMs below): views are bounds-checked; local buffers are r×sk;
                // rows i0..i0+r of dq and the (bi, hi) columns of dk/dv belong to this task.
                unsafe {
                    // dV += P'ᵀ·dO
                    let dst = dv_ptr.0.add(bi * sk * h * dv + hi * dv);
                    mm(
                        sk,
                        dv,
                        r,
                        dst,
                        (h * dv) as isize,
                        i0 > 0,
                        pd.as_ptr(),
                        1,
                        sk as isize,
                        dout.at(bi, hi, i0),
                        dout.rs(),
                        dout.cs(),
                        1.0,
                        Parallelism::None,
                    );
                    // dP' = dO·Vᵀ
                    mm(
                        r,
                        sk,
                        dv,
                        ds.as_mut_ptr(),
                        sk as isize,
                        false,
                        dout.at(bi, hi, i0),
                        dout.rs(),
                        dout.cs(),
                        v.at(bi, hi, 0),
                        v.cs(),
                        v.rs(),
                        1.0,
                        Parallelism::None,
                    );
                }
                rows.score_grads(i0, ds, p, di);
                // SAFETY: as above.
                unsafe { rows.dq_dk(i0, r, ds, dq_ptr, dk_ptr) };
            }
        },
    );
    Grads { dq, dk, dv: dvv }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-normal values.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let u = crate::rng::splitmix64(seed, i as u64);
                ((u >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
            })
            .collect()
    }

    struct Case {
        dims: [usize; 4],
        sk: usize,
        keep: Option<Vec<bool>>,
        causal: bool,
        dropout: f32,
    }

    /// float64 reference: P = softmax(masked scores), P' = dropout(P) with the same RowMask,
    /// O = P'V; gradients by the chain rule written out element by element.
    #[allow(clippy::type_complexity)]
    fn reference(
        c: &Case,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dout: &[f32],
        seed: u64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let [b, h, sq, d] = c.dims;
        let sk = c.sk;
        // contiguous [B, H, S, D]
        let at =
            |t: &[f32], bi: usize, hi: usize, s: usize, n: usize, x: usize| t[((bi * h + hi) * n + s) * d + x] as f64;
        let (mut o, mut dq, mut dk, mut dv) = (
            vec![0.0; b * h * sq * d],
            vec![0.0; b * h * sq * d],
            vec![0.0; b * h * sk * d],
            vec![0.0; b * h * sk * d],
        );
        let keep_scale = 1.0 / (1.0 - c.dropout as f64);
        for bi in 0..b {
            for hi in 0..h {
                for i in 0..sq {
                    let masked = |j: usize| {
                        c.keep.as_ref().is_some_and(|m| !m[bi * sk + j])
                            || (c.causal && j as isize > i as isize + sk as isize - sq as isize)
                    };
                    let s: Vec<f64> = (0..sk)
                        .map(|j| {
                            if masked(j) {
                                f32::MIN as f64
                            } else {
                                (0..d)
                                    .map(|x| at(q, bi, hi, i, sq, x) * at(k, bi, hi, j, sk, x))
                                    .sum::<f64>()
                                    / (d as f64).sqrt()
                            }
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = s.iter().map(|s| (s - m).exp()).sum();
                    let p: Vec<f64> = s.iter().map(|s| (s - m).exp() / z).collect();
                    let rm = RowMask::new(seed, ((bi * h + hi) * sq + i) as u64, c.dropout);
                    let zmask: Vec<f64> = (0..sk)
                        .map(|j| {
                            if c.dropout == 0.0 || rm.keep(j as u32) {
                                keep_scale
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    let orow = ((bi * h + hi) * sq + i) * d;
                    for x in 0..d {
                        o[orow + x] = (0..sk).map(|j| p[j] * zmask[j] * at(v, bi, hi, j, sk, x)).sum();
                    }
                    let g = |x: usize| dout[orow + x] as f64;
                    // dP'_j = dO·V_j ; dP_j = dP'_j·Z_j ; dS_j = P_j (dP_j − Σ P dP)
                    let dp: Vec<f64> = (0..sk)
                        .map(|j| zmask[j] * (0..d).map(|x| g(x) * at(v, bi, hi, j, sk, x)).sum::<f64>())
                        .collect();
                    let sum_pdp: f64 = (0..sk).map(|j| p[j] * dp[j]).sum();
                    for j in 0..sk {
                        let ds = if masked(j) {
                            0.0
                        } else {
                            p[j] * (dp[j] - sum_pdp) / (d as f64).sqrt()
                        };
                        for x in 0..d {
                            dq[orow + x] += ds * at(k, bi, hi, j, sk, x);
                            dk[((bi * h + hi) * sk + j) * d + x] += ds * at(q, bi, hi, i, sq, x);
                            dv[((bi * h + hi) * sk + j) * d + x] += p[j] * zmask[j] * g(x);
                        }
                    }
                }
            }
        }
        (o, dq, dk, dv)
    }

    /// `[B, S, H, D]` → `[B, H, S, D]`.
    fn to_head_major(x: &[f32], [b, h, s, d]: [usize; 4]) -> Vec<f64> {
        let mut y = vec![0.0; x.len()];
        for bi in 0..b {
            for si in 0..s {
                for hi in 0..h {
                    for di in 0..d {
                        y[((bi * h + hi) * s + si) * d + di] = x[((bi * s + si) * h + hi) * d + di] as f64;
                    }
                }
            }
        }
        y
    }

    fn close(got: &[f64], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
        let worst = got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
        assert!(worst <= tol * scale, "{what}: max |Δ| {worst:e} (scale {scale:e})");
    }

    fn run(c: Case) {
        let [b, h, sq, d] = c.dims;
        let sk = c.sk;
        let seed = 99;
        let (q, k, v) = (
            values(b * h * sq * d, 1),
            values(b * h * sk * d, 2),
            values(b * h * sk * d, 3),
        );
        let dout = values(b * h * sq * d, 4);
        let m = Masking {
            key_keep: c.keep.as_deref(),
            causal: c.causal,
            dropout: c.dropout,
            seed,
        };
        let qv = View4::contiguous(&q, [b, h, sq, d]).unwrap();
        let kv = View4::contiguous(&k, [b, h, sk, d]).unwrap();
        let vv = View4::contiguous(&v, [b, h, sk, d]).unwrap();
        let f = forward(qv, kv, vv, m);
        let (o, dq, dk, dv) = reference(&c, &q, &k, &v, &dout, seed);
        close(&to_head_major(&f.out, [b, h, sq, d]), &o, 1e-5, "out");
        let ov = View4::seq_major(&f.out, [b, h, sq, d]).unwrap();
        let dov = View4::contiguous(&dout, [b, h, sq, d]).unwrap();
        let g = backward(qv, kv, vv, ov, &f.stats, dov, m);
        close(&to_head_major(&g.dq, [b, h, sq, d]), &dq, 1e-5, "dq");
        close(&to_head_major(&g.dk, [b, h, sk, d]), &dk, 1e-5, "dk");
        close(&to_head_major(&g.dv, [b, h, sk, d]), &dv, 1e-5, "dv");
    }

    #[test]
    fn bidirectional_with_padding_matches_float64() {
        let keep = (0..2 * 70).map(|i| !(i >= 70 + 60 || i == 5)).collect();
        run(Case {
            dims: [2, 3, 70, 8],
            sk: 70,
            keep: Some(keep),
            causal: false,
            dropout: 0.0,
        });
    }

    #[test]
    fn causal_with_more_keys_than_queries_matches_float64() {
        run(Case {
            dims: [1, 2, 67, 4],
            sk: 80,
            keep: None,
            causal: true,
            dropout: 0.0,
        });
    }

    #[test]
    fn dropout_regenerated_in_backward_matches_float64() {
        let keep = (0..2 * 33).map(|i| i % 33 < 30).collect();
        run(Case {
            dims: [2, 2, 33, 16],
            sk: 33,
            keep: Some(keep),
            causal: true,
            dropout: 0.3,
        });
    }

    #[test]
    fn a_fully_masked_row_is_uniform_and_gets_no_score_gradient() {
        let keep = vec![false; 9];
        run(Case {
            dims: [1, 1, 9, 4],
            sk: 9,
            keep: Some(keep),
            causal: false,
            dropout: 0.0,
        });
    }

    #[test]
    fn strided_seq_major_inputs_equal_contiguous_ones() {
        let (b, h, s, d) = (2, 4, 20, 8);
        let q = values(b * s * h * d, 5);
        let qc = to_head_major(&q, [b, h, s, d])
            .iter()
            .map(|&x| x as f32)
            .collect::<Vec<_>>();
        let m = Masking::default();
        let strided = View4::seq_major(&q, [b, h, s, d]).unwrap();
        let contig = View4::contiguous(&qc, [b, h, s, d]).unwrap();
        let a = forward(strided, strided, strided, m);
        let c = forward(contig, contig, contig, m);
        close(
            &a.out.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            &c.out.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            1e-6,
            "strided",
        );
    }

    #[test]
    fn views_outside_their_buffer_are_refused() {
        let x = vec![0.0f32; 10];
        assert!(View4::contiguous(&x, [1, 1, 3, 4]).is_none());
        assert!(View4::contiguous(&x, [1, 1, 2, 5]).is_some());
    }
}
