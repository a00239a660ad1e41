//! `y = x·W + b` and its backward with every product a multi-threaded `gemm` call and the
//! bias folded into the output before the product (no separate broadcast-add pass).
//!
//! Why not burn-flex's matmul: at MiniLM's shapes it reaches about half of what the same
//! `gemm` call reaches on a buffer allocated here (`examples/linear_parts.rs`: 41–47 ms vs
//! 23–27 ms for `[4096,384]·[384,1536]` on 2 cores — page faults in its fresh output, see
//! `crate::alloc`; `cargo xtask bench gemm` shows this module at 180–216 GFLOP/s at every
//! Linear shape, as `torch.mm`).

use gemm::Parallelism;

use crate::mm::mm;
use rayon::prelude::*;

/// A read-only `[rows, cols]` view with non-negative strides.
#[derive(Debug, Clone, Copy)]
pub struct View2<'a> {
    data: &'a [f32],
    offset: usize,
    dims: [usize; 2],
    strides: [usize; 2],
}

impl<'a> View2<'a> {
    /// A view of `data` at `offset`; `None` when an element would lie outside `data`.
    pub fn new(data: &'a [f32], offset: usize, dims: [usize; 2], strides: [usize; 2]) -> Option<Self> {
        let empty = dims[0] == 0 || dims[1] == 0;
        let last = offset + dims[0].saturating_sub(1) * strides[0] + dims[1].saturating_sub(1) * strides[1];
        (empty || last < data.len()).then_some(Self {
            data,
            offset,
            dims,
            strides,
        })
    }

    /// A contiguous row-major matrix.
    pub fn contiguous(data: &'a [f32], dims: [usize; 2]) -> Option<Self> {
        Self::new(data, 0, dims, [dims[1], 1])
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> [usize; 2] {
        self.dims
    }

    fn ptr(&self) -> *const f32 {
        self.data[self.offset.min(self.data.len())..].as_ptr()
    }

    fn rs(&self) -> isize {
        self.strides[0] as isize
    }

    fn cs(&self) -> isize {
        self.strides[1] as isize
    }
}

fn threads() -> Parallelism {
    Parallelism::Rayon(0)
}

/// A buffer of `len` floats that a GEMM with `read_dst = false` overwrites entirely: the
/// caller must write every element through the pointer before [`Vec::set_len`]. Skips the
/// zeroing pass `vec![0.0; len]` would make.
pub(crate) fn gemm_output(len: usize) -> Vec<f32> {
    Vec::with_capacity(len)
}

/// `x·w (+ b)`, `[m, n]` row-major. `x` `[m, k]`, `w` `[k, n]`, `b` `[n]`.
pub fn forward(x: View2, w: View2, b: Option<&[f32]>) -> Vec<f32> {
    let [m, k] = x.dims;
    let [kw, n] = w.dims;
    assert_eq!(k, kw, "x is [m, {k}] but w is [{kw}, n]");
    let mut y = match b {
        Some(b) => {
            assert_eq!(b.len(), n, "bias length");
            let mut y = Vec::with_capacity(m * n);
            for _ in 0..m {
                y.extend_from_slice(b);
            }
            y
        }
        None if k > 0 => gemm_output(m * n),
        None => vec![0.0; m * n],
    };
    if m * n > 0 && k > 0 {
        // SAFETY: the views were bounds-checked; `y` is m×n row-major.
        unsafe {
            mm(
                m,
                n,
                k,
                y.as_mut_ptr(),
                n as isize,
                b.is_some(),
                x.ptr(),
                x.rs(),
                x.cs(),
                w.ptr(),
                w.rs(),
                w.cs(),
                1.0,
                threads(),
            );
            // SAFETY: the GEMM wrote all m·n elements (or they were written before it).
            y.set_len(m * n);
        }
    }
    y
}

/// `dx = dy·wᵀ`, `[m, k]`.
pub fn backward_x(dy: View2, w: View2) -> Vec<f32> {
    let [m, n] = dy.dims;
    let [k, nw] = w.dims;
    assert_eq!(n, nw);
    let mut dx = if n > 0 { gemm_output(m * k) } else { vec![0.0; m * k] };
    if m * k > 0 && n > 0 {
        // SAFETY: bounds-checked views; `dx` is m×k row-major. wᵀ has (row, col) strides
        // (w.cs, w.rs).
        unsafe {
            mm(
                m,
                k,
                n,
                dx.as_mut_ptr(),
                k as isize,
                false,
                dy.ptr(),
                dy.rs(),
                dy.cs(),
                w.ptr(),
                w.cs(),
                w.rs(),
                1.0,
                threads(),
            );
            // SAFETY: the GEMM wrote all m·k elements.
            dx.set_len(m * k);
        }
    }
    dx
}

/// `dw = xᵀ·dy`, `[k, n]`.
pub fn backward_w(x: View2, dy: View2) -> Vec<f32> {
    let [m, k] = x.dims;
    let [md, n] = dy.dims;
    assert_eq!(m, md);
    let mut dw = if m > 0 { gemm_output(k * n) } else { vec![0.0; k * n] };
    if k * n > 0 && m > 0 {
        // SAFETY: bounds-checked views; `dw` is k×n row-major. xᵀ has (row, col) strides
        // (x.cs, x.rs).
        unsafe {
            mm(
                k,
                n,
                m,
                dw.as_mut_ptr(),
                n as isize,
                false,
                x.ptr(),
                x.cs(),
                x.rs(),
                dy.ptr(),
                dy.rs(),
                dy.cs(),
                1.0,
                threads(),
            );
            // SAFETY: the GEMM wrote all k·n elements.
            dw.set_len(k * n);
        }
    }
    dw
}

/// `db = Σ_rows dy`, `[n]` (partial sums over row blocks, added in a fixed order).
pub fn backward_b(dy: View2) -> Vec<f32> {
    let [m, n] = dy.dims;
    const ROWS: usize = 256;
    let partial: Vec<Vec<f32>> = (0..m.div_ceil(ROWS))
        .into_par_iter()
        .map(|blk| {
            let mut acc = vec![0.0f32; n];
            for r in blk * ROWS..((blk + 1) * ROWS).min(m) {
                let start = dy.offset + r * dy.strides[0];
                if dy.strides[1] == 1 {
                    add_row(&mut acc, &dy.data[start..start + n]);
                } else {
                    for (c, a) in acc.iter_mut().enumerate() {
                        *a += dy.data[start + c * dy.strides[1]];
                    }
                }
            }
            acc
        })
        .collect();
    let mut db = vec![0.0f32; n];
    for p in partial {
        add_row(&mut db, &p);
    }
    db
}

crate::math::twin!(fn add_row / add_row_scalar (acc: &mut [f32], row: &[f32]) {
    for (a, &x) in acc.iter_mut().zip(row) {
        *a += x;
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| ((crate::rng::splitmix64(seed, i as u64) >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0)
            .collect()
    }

    #[test]
    fn forward_and_backward_match_float64_loops_with_strided_inputs() {
        let (m, k, n) = (37, 19, 23);
        let x = values(m * k, 1);
        // w stored transposed ([n, k] row-major) and read through strides as [k, n]
        let wt = values(n * k, 2);
        let b = values(n, 3);
        let dy = values(m * n, 4);
        let xv = View2::contiguous(&x, [m, k]).unwrap();
        let wv = View2::new(&wt, 0, [k, n], [1, k]).unwrap();
        let dyv = View2::contiguous(&dy, [m, n]).unwrap();
        let w = |i: usize, j: usize| wt[j * k + i] as f64;
        let y = forward(xv, wv, Some(&b));
        let dx = backward_x(dyv, wv);
        let dw = backward_w(xv, dyv);
        let db = backward_b(dyv);
        for r in 0..m {
            for c in 0..n {
                let want = b[c] as f64 + (0..k).map(|i| x[r * k + i] as f64 * w(i, c)).sum::<f64>();
                assert!((y[r * n + c] as f64 - want).abs() < 1e-5, "y[{r},{c}]");
            }
            for i in 0..k {
                let want: f64 = (0..n).map(|c| dy[r * n + c] as f64 * w(i, c)).sum();
                assert!((dx[r * k + i] as f64 - want).abs() < 1e-5, "dx[{r},{i}]");
            }
        }
        for i in 0..k {
            for c in 0..n {
                let want: f64 = (0..m).map(|r| x[r * k + i] as f64 * dy[r * n + c] as f64).sum();
                assert!((dw[i * n + c] as f64 - want).abs() < 1e-4, "dw[{i},{c}]");
            }
        }
        for c in 0..n {
            let want: f64 = (0..m).map(|r| dy[r * n + c] as f64).sum();
            assert!((db[c] as f64 - want).abs() < 1e-4, "db[{c}]");
        }
        let y0 = forward(xv, wv, None);
        for r in 0..m {
            for c in 0..n {
                assert!((y0[r * n + c] + b[c] - y[r * n + c]).abs() < 1e-5);
            }
        }
    }
}
