//! Vectorisable `exp` and `erf` for f32, and the exact GELU built on them.
//!
//! Each function is written once, branch-free (selects instead of branches, bit tricks instead
//! of library calls), and compiled twice by [`twin!`]: once with `#[target_feature(enable =
//! "avx2,fma")]`, where LLVM turns the element loops into 8-wide AVX2/FMA code, and once for
//! the baseline target as the scalar twin. [`avx2_fma`] picks one at run time
//! (`is_x86_feature_detected!`, cached by std). Both twins evaluate the same formula; they may
//! differ in the last bit because only the AVX2 one fuses multiply–adds.
//!
//! - `exp`: Cody–Waite range reduction `x = n ln2 + r`, `|r| ≤ ln2/2`, and Cephes' degree-6
//!   polynomial for `e^r` (≤ 2 ulp over the normal range, tested against f64).
//! - `erf` / `Φ`: `erfc z = t·exp(−z² + P(t))`, `t = 1/(1 + z/2)`, with Numerical Recipes'
//!   degree-9 Chebyshev fit `P` (relative error < 1.2e-7 for every `z ≥ 0`; measured here:
//!   |erf error| ≤ 2e-7). Abramowitz & Stegun 7.1.26, the form PyTorch's AVX2 `erf` uses, was
//!   tried first: 2.2e-7 in f32 and no relative accuracy in the tail. GELU evaluates
//!   `Φ(x) = ½·erfc(|x|/√2)` for `x < 0`, so the negative tail keeps its relative accuracy
//!   instead of cancelling against 1.

// Polynomial coefficients are kept digit for digit as published (Cephes, Numerical Recipes),
// even where f32 cannot represent every digit.
#![allow(clippy::excessive_precision, clippy::assign_op_pattern)]

/// Runs `$body` compiled for AVX2+FMA when the CPU has them, else compiled for the baseline.
macro_rules! twin {
    (fn $name:ident / $scalar:ident ($($arg:ident: $ty:ty),*) $body:block) => {
        pub(crate) fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) {
                    #[allow(unused_macros)]
                    macro_rules! fma { ($a:expr, $b:expr, $c:expr) => { f32::mul_add($a, $b, $c) }; }
                    $body
                }
                if $crate::math::avx2_fma() {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    return unsafe { fast($($arg),*) };
                }
            }
            $scalar($($arg),*)
        }

        /// The baseline-target twin (no FMA).
        #[allow(dead_code)]
        pub(crate) fn $scalar($($arg: $ty),*) {
            #[allow(unused_macros)]
            macro_rules! fma { ($a:expr, $b:expr, $c:expr) => { $a * $b + $c }; }
            $body
        }
    };
}
pub(crate) use twin;

/// Whether this CPU runs the AVX2+FMA twins.
pub fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
/// Largest input whose `exp` is finite.
pub(crate) const EXP_HI: f32 = 88.376_26;
/// Inputs below this give 0 (the result would be subnormal).
pub(crate) const EXP_LO: f32 = -87.336_54;
/// 1.5·2²³: adding and subtracting it rounds to the nearest integer (ties to even).
pub(crate) const ROUND_MAGIC: f32 = 12_582_912.0;

/// `e^x` with the multiply–add `$fma`; inlined into the twins.
macro_rules! exp_body {
    ($x:expr, $fma:ident) => {{
        let x: f32 = $x;
        let xc = x.clamp($crate::math::EXP_LO, $crate::math::EXP_HI);
        let k = xc * $crate::math::LOG2E + $crate::math::ROUND_MAGIC;
        let n = k - $crate::math::ROUND_MAGIC;
        let r = $fma!(n, -$crate::math::LN2_HI, xc);
        let r = $fma!(n, -$crate::math::LN2_LO, r);
        let mut p = 1.987_569_1e-4f32;
        p = $fma!(p, r, 1.398_199_9e-3);
        p = $fma!(p, r, 8.333_452e-3);
        p = $fma!(p, r, 4.166_579_6e-2);
        p = $fma!(p, r, 1.666_666_5e-1);
        p = $fma!(p, r, 5.000_000_1e-1);
        let p = $fma!(p, r * r, r + 1.0);
        // k's mantissa holds n + 1.5·2²³ exactly: the exponent bits come from integer
        // arithmetic (a float→int cast would not vectorise)
        let scale = f32::from_bits(
            k.to_bits()
                .wrapping_sub($crate::math::ROUND_MAGIC.to_bits())
                .wrapping_add(127)
                << 23,
        );
        let y = p * scale;
        let y = if x < $crate::math::EXP_LO { 0.0 } else { y };
        let y = if x > $crate::math::EXP_HI { f32::INFINITY } else { y };
        if x.is_nan() {
            x
        } else {
            y
        }
    }};
}
pub(crate) use exp_body;

/// Numerical Recipes' Chebyshev fit of `erfc` (relative error < 1.2e-7 everywhere).
pub(crate) const NR: [f32; 10] = [
    -1.265_512_2,
    1.000_023_7,
    0.374_091_96,
    0.096_784_18,
    -0.186_288_06,
    0.278_868_07,
    -1.135_203_98,
    1.488_515_87,
    -0.822_152_23,
    0.170_872_77,
];
pub(crate) const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
pub(crate) const INV_SQRT_2PI: f32 = 0.398_942_3;

/// `erfc(z)` for `z ≥ 0`.
macro_rules! erfc_body {
    ($z:expr, $fma:ident) => {{
        let z: f32 = $z;
        let t = 1.0 / $fma!(0.5, z, 1.0);
        let c = $crate::math::NR;
        let mut poly = c[9];
        poly = $fma!(poly, t, c[8]);
        poly = $fma!(poly, t, c[7]);
        poly = $fma!(poly, t, c[6]);
        poly = $fma!(poly, t, c[5]);
        poly = $fma!(poly, t, c[4]);
        poly = $fma!(poly, t, c[3]);
        poly = $fma!(poly, t, c[2]);
        poly = $fma!(poly, t, c[1]);
        poly = $fma!(poly, t, c[0]);
        t * $crate::math::exp_body!($fma!(-z, z, poly), $fma)
    }};
}

/// `Φ(x)`, the standard normal CDF, for the GELU kernels.
macro_rules! phi_body {
    ($x:expr, $fma:ident) => {{
        let x: f32 = $x;
        let half_tail = 0.5 * erfc_body!(x.abs() * $crate::math::FRAC_1_SQRT_2, $fma);
        if x < 0.0 {
            half_tail
        } else {
            1.0 - half_tail
        }
    }};
}

/// Maclaurin coefficients of `erf(x)/x` in `x²` (to `x¹²`), used for `|x| < ½` where
/// `1 − erfc` would cancel.
pub(crate) const ERF_SMALL: [f32; 7] = [
    std::f32::consts::FRAC_2_SQRT_PI,
    -0.376_126_4,
    0.112_837_92,
    -0.026_866_17,
    0.005_223_977,
    -0.000_854_832,
    0.000_120_553_33,
];

twin!(fn exp_slice / exp_scalar_slice (x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = exp_body!(x, fma);
    }
});

twin!(fn erf_slice / erf_scalar (x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        let a = x.abs();
        let big = 1.0 - erfc_body!(a, fma);
        let x2 = x * x;
        let c = ERF_SMALL;
        let mut p = c[6];
        p = fma!(p, x2, c[5]);
        p = fma!(p, x2, c[4]);
        p = fma!(p, x2, c[3]);
        p = fma!(p, x2, c[2]);
        p = fma!(p, x2, c[1]);
        p = fma!(p, x2, c[0]);
        let small = a * p;
        let e = if a < 0.5 { small } else { big };
        *y = if x.is_nan() { x } else { e.copysign(x) };
    }
});

twin!(fn gelu_slice / gelu_scalar (x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        let phi = phi_body!(x, fma);
        *y = x * phi;
    }
});

twin!(fn gelu_backward_slice / gelu_backward_scalar (x: &[f32], dy: &[f32], dx: &mut [f32]) {
    for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
        let phi = phi_body!(x, fma);
        let g = exp_body!(-0.5 * x * x, fma);
        *dx = dy * fma!(x * INV_SQRT_2PI, g, phi);
    }
});

twin!(fn dropout_row / dropout_row_scalar (row: &mut [f32], rm: crate::rng::RowMask, keep_scale: f32) {
    for (j, p) in row.iter_mut().enumerate() {
        *p = if rm.keep(j as u32) { *p * keep_scale } else { 0.0 };
    }
});

twin!(fn dot_into / dot_into_scalar (a: &[f32], b: &[f32], out: &mut f32) {
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] = fma!(x[i], y[i], acc[i]);
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    *out = acc.iter().sum::<f32>() + tail;
});

twin!(fn sum_into / sum_into_scalar (a: &[f32], out: &mut f32) {
    // eight partial sums, so the reduction vectorises
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    for x in &mut ca {
        for i in 0..8 {
            acc[i] += x[i];
        }
    }
    *out = acc.iter().sum::<f32>() + ca.remainder().iter().sum::<f32>();
});

/// Elements per parallel task of the element-wise kernels.
const CHUNK: usize = 1 << 14;

fn par_map(x: &[f32], y: &mut [f32], f: fn(&[f32], &mut [f32])) {
    use rayon::prelude::*;
    assert_eq!(x.len(), y.len());
    if x.len() <= CHUNK {
        return f(x, y);
    }
    x.par_chunks(CHUNK)
        .zip(y.par_chunks_mut(CHUNK))
        .for_each(|(x, y)| f(x, y));
}

/// `y = e^x` element-wise (≤ 2 ulp; `x < −87.34` gives 0, NaN stays NaN), in parallel.
pub fn exp(x: &[f32], y: &mut [f32]) {
    par_map(x, y, exp_slice);
}

/// `y = erf(x)` element-wise (|error| ≤ 2e-7), in parallel.
pub fn erf(x: &[f32], y: &mut [f32]) {
    par_map(x, y, erf_slice);
}

/// Exact GELU, `y = x·Φ(x)`, in parallel.
///
/// ```
/// let x = [-1.0f32, 0.0, 1.0, 3.0];
/// let mut y = [0.0f32; 4];
/// kiln_kernels::math::gelu(&x, &mut y);
/// // x·Φ(x) with Φ(1) = 0.841344746, Φ(-1) = 1 − Φ(1), Φ(3) = 0.998650102
/// let want = [-(1.0 - 0.841_344_75), 0.0, 0.841_344_75, 3.0 * 0.998_650_1];
/// for (a, b) in y.iter().zip(want) {
///     assert!((a - b).abs() < 1e-6, "{a} vs {b}");
/// }
/// ```
pub fn gelu(x: &[f32], y: &mut [f32]) {
    par_map(x, y, gelu_slice);
}

/// GELU's backward: `dx = dy·(Φ(x) + x·φ(x))`, in parallel.
pub fn gelu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    use rayon::prelude::*;
    assert!(x.len() == dy.len() && x.len() == dx.len());
    if x.len() <= CHUNK {
        return gelu_backward_slice(x, dy, dx);
    }
    x.par_chunks(CHUNK)
        .zip(dy.par_chunks(CHUNK))
        .zip(dx.par_chunks_mut(CHUNK))
        .for_each(|((x, dy), dx)| gelu_backward_slice(x, dy, dx));
}

/// Inverted dropout in place: element `i` is kept (and scaled by `1/(1 − p)`) when the
/// counter-based draw of `(seed, i / CHUNK, i % CHUNK)` says so ([`crate::rng::RowMask`]), so
/// the same `(seed, p)` regenerates the same mask for the backward; parallel over chunks.
pub fn dropout(x: &mut [f32], seed: u64, p: f32) {
    use rayon::prelude::*;
    assert!((0.0..1.0).contains(&p), "dropout {p} outside [0, 1)");
    let scale = 1.0 / (1.0 - p);
    x.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, x)| dropout_row(x, crate::rng::RowMask::new(seed, c as u64, p), scale));
}

/// Scalar `e^x` of the same formula (no FMA), for callers outside the slice kernels.
pub fn exp_scalar(x: f32) -> f32 {
    macro_rules! fma {
        ($a:expr, $b:expr, $c:expr) => {
            $a * $b + $c
        };
    }
    exp_body!(x, fma)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(lo: f32, hi: f32, n: usize) -> Vec<f32> {
        (0..=n).map(|i| lo + (hi - lo) * i as f32 / n as f32).collect()
    }

    /// Distance in units in the last place between `got` and the correctly rounded `want`.
    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        let ulp = (f32::from_bits(w.to_bits() + 1) - w) as f64;
        (got as f64 - want).abs() / ulp
    }

    /// Applies `f` to `xs` and checks every output.
    fn both(f: impl Fn(&[f32], &mut [f32]), xs: &[f32], check: impl Fn(f32, f32)) {
        let mut y = vec![0.0; xs.len()];
        f(xs, &mut y);
        for (&x, &y) in xs.iter().zip(&y) {
            check(x, y);
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64_over_the_normal_range() {
        let xs = grid(-87.0, 88.3, 400_000);
        let mut worst = 0.0f64;
        let check = |x: f32, y: f32| {
            let u = ulps(y, (x as f64).exp());
            assert!(u <= 2.0, "exp({x}) = {y}, want {}, {u} ulp", (x as f64).exp());
        };
        both(exp, &xs, check);
        both(exp_scalar_slice, &xs, check);
        for &x in &xs {
            worst = worst.max(ulps(exp_scalar(x), (x as f64).exp()));
        }
        assert!(worst <= 2.0, "scalar twin: {worst} ulp");
    }

    #[test]
    fn exp_edges_underflow_overflow_and_nan() {
        let xs = [
            f32::MIN,
            -1e30,
            -100.0,
            89.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            0.0,
        ];
        let mut y = [0.0f32; 8];
        exp(&xs, &mut y);
        assert_eq!(&y[..4], &[0.0, 0.0, 0.0, f32::INFINITY]);
        assert_eq!(y[4], f32::INFINITY);
        assert_eq!(y[5], 0.0);
        assert!(y[6].is_nan());
        assert_eq!(y[7], 1.0);
    }

    #[test]
    fn erf_is_within_2e7_of_f64() {
        let xs = grid(-6.0, 6.0, 200_000);
        let check = |x: f32, y: f32| {
            let want = libm::erf(x as f64);
            assert!((y as f64 - want).abs() <= 2e-7, "erf({x}) = {y}, want {want}");
        };
        both(erf, &xs, check);
        both(erf_scalar, &xs, check);
    }

    fn phi64(x: f64) -> f64 {
        0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
    }

    #[test]
    fn gelu_and_its_backward_match_float64_closed_forms() {
        type Fwd = fn(&[f32], &mut [f32]);
        type Bwd = fn(&[f32], &[f32], &mut [f32]);
        let twins: [(Fwd, Bwd); 2] = [(gelu, gelu_backward), (gelu_scalar, gelu_backward_scalar)];
        for (gelu, gelu_backward) in twins {
            let xs = grid(-12.0, 12.0, 100_003);
            let mut y = vec![0.0; xs.len()];
            gelu(&xs, &mut y);
            for (&x, &y) in xs.iter().zip(&y) {
                let x = x as f64;
                let want = x * phi64(x);
                // absolute 2e-7·|x| (A&S) plus relative rounding; the negative tail stays relative
                assert!(
                    (y as f64 - want).abs() <= 2e-7 * x.abs().max(1.0) + 4e-7 * want.abs(),
                    "gelu({x}) = {y}, want {want}"
                );
            }
            let dy: Vec<f32> = xs.iter().map(|x| 0.5 + (x * 3.0).sin()).collect();
            let mut dx = vec![0.0; xs.len()];
            gelu_backward(&xs, &dy, &mut dx);
            for i in 0..xs.len() {
                let x = xs[i] as f64;
                let pdf = (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
                let want = dy[i] as f64 * (phi64(x) + x * pdf);
                assert!(
                    (dx[i] as f64 - want).abs() <= 1e-6 * (dy[i] as f64).abs().max(1.0),
                    "gelu'({x})·{} = {}, want {want}",
                    dy[i],
                    dx[i]
                );
            }
        }
    }

    #[test]
    fn dropout_keeps_about_one_minus_p_scaled_and_is_reproducible() {
        let n = 200_000;
        let mut a = vec![1.0f32; n];
        dropout(&mut a, 5, 0.25);
        let kept = a.iter().filter(|&&x| x != 0.0).count() as f64;
        assert!(a.iter().all(|&x| x == 0.0 || (x - 1.0 / 0.75).abs() < 1e-6));
        let sd = (n as f64 * 0.25 * 0.75).sqrt();
        assert!((kept - 0.75 * n as f64).abs() < 4.0 * sd, "{kept}");
        let mut b = vec![1.0f32; n];
        dropout(&mut b, 5, 0.25);
        assert_eq!(a, b);
        let mut c = vec![1.0f32; n];
        dropout(&mut c, 6, 0.25);
        assert_ne!(a, c);
    }

    #[test]
    fn gelu_negative_tail_keeps_relative_accuracy() {
        let xs = [-5.0f32, -7.0, -9.0];
        let mut y = [0.0f32; 3];
        gelu(&xs, &mut y);
        for (&x, &y) in xs.iter().zip(&y) {
            let want = x as f64 * phi64(x as f64);
            assert!(((y as f64 - want) / want).abs() < 1e-5, "gelu({x}) = {y}, want {want}");
        }
    }
}
