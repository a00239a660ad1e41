//! The one strided GEMM call every kernel makes (`gemm` crate, f32).

use gemm::{gemm, Parallelism};

/// `dst[m×n] = (read ? dst : 0) + beta·lhs[m×k]·rhs[k×n]`, each with (row, column) strides.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    read: bool,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
    beta: f32,
    parallelism: Parallelism,
) {
    // SAFETY: the caller guarantees every strided element is inside its buffer.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs,
            read,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}
