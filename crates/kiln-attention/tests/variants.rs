//! Attention variants against direct float64 loops: linear attention (ELU+1, T2R, Hedgehog),
//! bidirectional and causal, chunked parallel form against the recurrent form, padding, and
//! the sliding window.

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::{Distribution, TensorData};
use kiln_attention::{
    Attention, AttentionMask, FeatureKind, FeatureMap, HybridAttention, LinearAttention, SlidingWindowAttention,
    SoftmaxAttention,
};

type B = Flex;
const BATCH: usize = 2;
const HEADS: usize = 2;
const N: usize = 11;
const D: usize = 8;

fn rand4(seed: u64) -> Tensor<B, 4> {
    let device = Default::default();
    B::seed(&device, seed);
    Tensor::random([BATCH, HEADS, N, D], Distribution::Normal(0.0, 1.0), &device)
}

fn data(t: &Tensor<B, 4>) -> Vec<f64> {
    t.clone()
        .into_data()
        .to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

fn row(t: &[f64], b: usize, h: usize, i: usize) -> Vec<f64> {
    t[((b * HEADS + h) * N + i) * D..][..D].to_vec()
}

/// φ in float64 for one `[D]` row of head `h`.
fn phi(map: &FeatureMap<B>, h: usize, x: &[f64]) -> Vec<f64> {
    let learned = |x: &[f64]| -> Vec<f64> {
        let w = map.weight.as_ref().unwrap().val();
        let [_, d, k] = w.dims();
        let w: Vec<f64> = w
            .into_data()
            .to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        let b: Vec<f64> = map
            .bias
            .as_ref()
            .unwrap()
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        (0..k)
            .map(|j| (0..d).map(|i| x[i] * w[(h * d + i) * k + j]).sum::<f64>() + b[h * k + j])
            .collect()
    };
    match map.kind {
        FeatureKind::EluPlusOne => x.iter().map(|&v| if v > 0.0 { v + 1.0 } else { v.exp() }).collect(),
        FeatureKind::T2r => learned(x).into_iter().map(|u| u.max(0.0)).collect(),
        FeatureKind::Hedgehog => {
            let u = learned(x);
            let sm = |u: Vec<f64>| {
                let m = u.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = u.iter().map(|v| (v - m).exp()).collect();
                let s: f64 = e.iter().sum();
                e.into_iter().map(|v| v / s).collect::<Vec<_>>()
            };
            let mut out = sm(u.clone());
            out.extend(sm(u.into_iter().map(|v| -v).collect()));
            out
        }
        FeatureKind::Performer => unreachable!("checked against softmax instead"),
    }
}

/// `out_i = Σ_j a_ij v_j / max(Σ_j a_ij, eps)` over the `j` for which `weight(b, h, i, j)`
/// gives a weight.
fn weighted_average(v: &[f64], eps: f64, weight: impl Fn(usize, usize, usize, usize) -> Option<f64>) -> Vec<f64> {
    let mut out = vec![0.0; BATCH * HEADS * N * D];
    for b in 0..BATCH {
        for h in 0..HEADS {
            for i in 0..N {
                let mut num = [0.0; D];
                let mut den = 0.0;
                for j in 0..N {
                    let Some(a) = weight(b, h, i, j) else { continue };
                    den += a;
                    for (n, vj) in num.iter_mut().zip(row(v, b, h, j)) {
                        *n += a * vj;
                    }
                }
                for x in 0..D {
                    out[((b * HEADS + h) * N + i) * D + x] = num[x] / den.max(eps);
                }
            }
        }
    }
    out
}

/// Direct loop: out_i = Σ_j φq_i·φk_j v_j / max(Σ_j φq_i·φk_j, eps) over visible j.
fn naive_linear(
    m: &LinearAttention<B>,
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    keep: &[bool],
    causal: bool,
) -> Vec<f64> {
    let (q, k, v) = (data(q), data(k), data(v));
    let q_scale = if m.feature_map.kind == FeatureKind::T2r {
        (D as f64).powf(-0.5)
    } else {
        1.0
    };
    weighted_average(&v, m.eps, |b, h, i, j| {
        if !keep[b * N + j] || (causal && j > i) {
            return None;
        }
        let qi: Vec<f64> = row(&q, b, h, i).iter().map(|x| x * q_scale).collect();
        let fq = phi(&m.feature_map, h, &qi);
        let fk = phi(&m.feature_map, h, &row(&k, b, h, j));
        Some(fq.iter().zip(&fk).map(|(x, y)| x * y).sum())
    })
}

fn mechanisms() -> Vec<LinearAttention<B>> {
    let device = Default::default();
    B::seed(&device, 99);
    vec![
        LinearAttention::new(FeatureMap::elu_plus_one(), 1e-6),
        LinearAttention::new(FeatureMap::learned(FeatureKind::T2r, HEADS, D, 16, &device), 1e-2),
        LinearAttention::new(FeatureMap::learned(FeatureKind::Hedgehog, HEADS, D, 6, &device), 1e-6),
    ]
}

fn keep_mask() -> (Vec<bool>, AttentionMask<B>) {
    // Batch 0 full, batch 1 with its last 4 keys padded.
    let keep: Vec<bool> = (0..BATCH * N).map(|i| i < N || i % N < N - 4).collect();
    let ints: Vec<i64> = keep.iter().map(|&k| k as i64).collect();
    let mask = AttentionMask::from_attention_mask(Tensor::<B, 2, Int>::from_data(
        TensorData::new(ints, [BATCH, N]),
        &Default::default(),
    ));
    (keep, mask)
}

fn assert_close(got: &Tensor<B, 4>, want: &[f64], tol: f64, what: &str) {
    let got = data(got);
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst <= tol, "{what}: max |diff| {worst:e} > {tol:e}");
}

#[test]
fn linear_attention_matches_the_direct_formula_bidirectional_and_causal_with_padding() {
    let _rng = kiln_testkit::rng_lock();
    let (q, k, v) = (rand4(1), rand4(2), rand4(3));
    let (keep, mask) = keep_mask();
    for mut m in mechanisms() {
        let name = m.name();
        let bi = m.attend(q.clone(), k.clone(), v.clone(), &mask, false).context;
        assert_close(&bi, &naive_linear(&m, &q, &k, &v, &keep, false), 1e-4, name);
        let want = naive_linear(&m, &q, &k, &v, &keep, true);
        for chunk in [1, 3, 4, N, 64] {
            m.chunk = chunk;
            let causal = m
                .attend(q.clone(), k.clone(), v.clone(), &mask.clone().with_causal(true), false)
                .context;
            assert_close(&causal, &want, 1e-4, &format!("{name} causal chunk {chunk}"));
        }
    }
}

/// Max |difference| between the chunked causal form and token-by-token decoding; also checks
/// that the recurrent state's size does not grow with the position.
fn recurrent_vs_parallel(m: &LinearAttention<B>, q: &Tensor<B, 4>, k: &Tensor<B, 4>, v: &Tensor<B, 4>) -> f32 {
    let device = Default::default();
    let causal = AttentionMask::none().with_causal(true);
    let parallel = m.attend(q.clone(), k.clone(), v.clone(), &causal, false).context;
    let mut state = m.initial_state(BATCH, HEADS, D, D, &device);
    let mut steps = Vec::new();
    for t in 0..N {
        let at = |x: &Tensor<B, 4>| x.clone().slice([0..BATCH, 0..HEADS, t..t + 1, 0..D]);
        let (out, next) = m.step(state, at(q), at(k), at(v));
        assert_eq!(next.s.dims(), [BATCH, HEADS, m.feature_map.num_features(D), D]);
        state = next;
        steps.push(out);
    }
    (Tensor::cat(steps, 2) - parallel).abs().max().into_scalar()
}

#[test]
fn recurrent_decoding_equals_the_parallel_causal_form() {
    let _rng = kiln_testkit::rng_lock();
    let (q, k, v) = (rand4(4), rand4(5), rand4(6));
    for m in mechanisms() {
        let worst = recurrent_vs_parallel(&m, &q, &k, &v);
        assert!(worst < 1e-5, "{}: recurrent vs parallel {worst:e}", m.name());
    }
}

#[test]
fn t2r_normaliser_floor_prevents_division_by_zero() {
    let _rng = kiln_testkit::rng_lock();
    // Very negative biases make every ReLU feature zero.
    let device = Default::default();
    let mut map = FeatureMap::<B>::learned(FeatureKind::T2r, HEADS, D, 4, &device);
    map.bias = Some(burn::module::Param::from_tensor(Tensor::full(
        [HEADS, 4],
        -100.0,
        &device,
    )));
    let m = LinearAttention::new(map, 1e-2);
    let out = m
        .attend(rand4(7), rand4(8), rand4(9), &AttentionMask::none(), false)
        .context;
    assert!(data(&out).iter().all(|x| *x == 0.0));
}

fn in_band(causal: bool, w: usize, i: usize, j: usize) -> bool {
    if causal {
        j <= i && i - j < w
    } else {
        i.abs_diff(j) < w
    }
}

#[test]
fn sliding_window_matches_a_banded_direct_softmax_and_a_wide_window_is_exact_softmax() {
    let _rng = kiln_testkit::rng_lock();
    let (q, k, v) = (rand4(10), rand4(11), rand4(12));
    let (keep, mask) = keep_mask();
    let (qd, kd, vd) = (data(&q), data(&k), data(&v));
    for causal in [false, true] {
        for w in [1usize, 3] {
            let m = SlidingWindowAttention::new(w, 0.0);
            let got = data(
                &m.attend(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    &mask.clone().with_causal(causal),
                    false,
                )
                .context,
            );
            for b in 0..BATCH {
                for h in 0..HEADS {
                    for i in 0..N {
                        let visible: Vec<usize> = (0..N)
                            .filter(|&j| keep[b * N + j] && in_band(causal, w, i, j))
                            .collect();
                        // A row whose whole band is padding has no defined answer; skip it.
                        if visible.is_empty() {
                            continue;
                        }
                        let qi = row(&qd, b, h, i);
                        let s: Vec<f64> = visible
                            .iter()
                            .map(|&j| {
                                qi.iter().zip(row(&kd, b, h, j)).map(|(a, b)| a * b).sum::<f64>() / (D as f64).sqrt()
                            })
                            .collect();
                        let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
                        for x in 0..D {
                            let want: f64 = visible
                                .iter()
                                .zip(&s)
                                .map(|(&j, sj)| (sj - mx).exp() / z * row(&vd, b, h, j)[x])
                                .sum();
                            let got = got[((b * HEADS + h) * N + i) * D + x];
                            assert!(
                                (got - want).abs() < 1e-4,
                                "w={w} causal={causal} [{b},{h},{i},{x}] {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
        let wide = SlidingWindowAttention::new(N, 0.0).attend(
            q.clone(),
            k.clone(),
            v.clone(),
            &mask.clone().with_causal(causal),
            false,
        );
        let exact = SoftmaxAttention::new(0.0).attend(
            q.clone(),
            k.clone(),
            v.clone(),
            &mask.clone().with_causal(causal),
            false,
        );
        let diff = (wide.context - exact.context).abs().max().into_scalar();
        assert!(diff < 1e-5, "window ≥ n vs softmax: {diff:e}");
    }
}

#[test]
fn requested_weights_give_the_same_context_and_rows_sum_to_one() {
    let _rng = kiln_testkit::rng_lock();
    let (q, k, v) = (rand4(13), rand4(14), rand4(15));
    let (_, mask) = keep_mask();
    for m in mechanisms() {
        for causal in [false, true] {
            let mask = mask.clone().with_causal(causal);
            let fast = m.attend(q.clone(), k.clone(), v.clone(), &mask, false).context;
            let out = m.attend(q.clone(), k.clone(), v.clone(), &mask, true);
            let diff = (out.context - fast).abs().max().into_scalar();
            assert!(diff < 1e-5, "{} causal={causal}: {diff:e}", m.name());
            let w = out.weights.unwrap();
            if m.name() != "t2r" {
                let sums = data(&w.sum_dim(3).reshape([BATCH, HEADS, N, 1]));
                assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{} rows", m.name());
            }
        }
    }
}

#[test]
fn performer_features_are_blockwise_orthogonal_and_approximate_softmax() {
    let _rng = kiln_testkit::rng_lock();
    let (d, m) = (D, 3 * D + 2);
    let omega = kiln_attention::linear::orthogonal_gaussian(d, m, 7);
    let col = |j: usize| (0..d).map(|i| omega[i * m + j] as f64).collect::<Vec<_>>();
    for block in 0..m.div_ceil(d) {
        let cols: Vec<usize> = (block * d..((block + 1) * d).min(m)).collect();
        for &a in &cols {
            for &b in &cols {
                if a < b {
                    let (x, y) = (col(a), col(b));
                    let cos = x.iter().zip(&y).map(|(p, q)| p * q).sum::<f64>()
                        / (x.iter().map(|p| p * p).sum::<f64>().sqrt() * y.iter().map(|p| p * p).sum::<f64>().sqrt());
                    assert!(cos.abs() < 1e-5, "columns {a}, {b}: cos {cos}");
                }
            }
        }
    }
    // With many features FAVOR+ estimates softmax attention (unbiased kernel estimate);
    // small-norm inputs keep the estimator's variance low.
    let device = Default::default();
    let (q, k, v) = (rand4(20).mul_scalar(0.5), rand4(21).mul_scalar(0.5), rand4(22));
    let favor = LinearAttention::new(FeatureMap::<B>::performer(D, 8192, 3, &device), 1e-12);
    let exact = SoftmaxAttention::new(0.0);
    for causal in [false, true] {
        let mask = AttentionMask::none().with_causal(causal);
        let a = favor.attend(q.clone(), k.clone(), v.clone(), &mask, false).context;
        let b = exact.attend(q.clone(), k.clone(), v.clone(), &mask, false).context;
        let err = (a - b).abs().mean().into_scalar();
        assert!(err < 0.03, "causal={causal}: mean |FAVOR+ − softmax| = {err}");
    }
    // Parallel causal and recurrent decoding agree for Performer too.
    let small = LinearAttention::new(FeatureMap::<B>::performer(D, 16, 4, &device), 1e-12);
    let diff = recurrent_vs_parallel(&small, &q, &k, &v);
    assert!(diff < 1e-5, "performer recurrent vs parallel {diff}");
}

/// LoLCATs hybrid, direct: window keys weigh `exp(s_ij − m_i)` (m_i = max over visible window
/// keys), older visible keys `φq_i·φk_j`, one normaliser.
fn naive_hybrid(
    m: &HybridAttention<B>,
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    keep: &[bool],
    causal: bool,
) -> Vec<f64> {
    let (q, k, v) = (data(q), data(k), data(v));
    let map = &m.linear.feature_map;
    let visible = |b: usize, i: usize, j: usize| keep[b * N + j] && !(causal && j > i);
    let score = |b: usize, h: usize, i: usize, j: usize| -> f64 {
        row(&q, b, h, i)
            .iter()
            .zip(row(&k, b, h, j))
            .map(|(x, y)| x * y)
            .sum::<f64>()
            / (D as f64).sqrt()
    };
    weighted_average(&v, m.linear.eps, |b, h, i, j| {
        if !visible(b, i, j) {
            return None;
        }
        if in_band(causal, m.window, i, j) {
            let max = (0..N)
                .filter(|&l| visible(b, i, l) && in_band(causal, m.window, i, l))
                .map(|l| score(b, h, i, l))
                .fold(f64::NEG_INFINITY, f64::max);
            Some((score(b, h, i, j) - max).exp())
        } else {
            let fq = phi(map, h, &row(&q, b, h, i));
            Some(fq.iter().zip(phi(map, h, &row(&k, b, h, j))).map(|(x, y)| x * y).sum())
        }
    })
}

#[test]
fn lolcats_hybrid_matches_the_direct_formula_and_decodes_in_bounded_memory() {
    let _rng = kiln_testkit::rng_lock();
    let (q, k, v) = (rand4(21), rand4(22), rand4(23));
    let (keep, mask) = keep_mask();
    let device = Default::default();
    B::seed(&device, 5);
    for w in [1usize, 3, N] {
        let m = HybridAttention::new(
            w,
            LinearAttention::new(FeatureMap::learned(FeatureKind::Hedgehog, HEADS, D, 6, &device), 1e-6),
        );
        for causal in [false, true] {
            let got = m.attend(
                q.clone(),
                k.clone(),
                v.clone(),
                &mask.clone().with_causal(causal),
                false,
            );
            let want = naive_hybrid(&m, &q, &k, &v, &keep, causal);
            assert_close(&got.context, &want, 1e-4, &format!("hybrid w={w} causal={causal}"));
            let weighted = m.attend(q.clone(), k.clone(), v.clone(), &mask.clone().with_causal(causal), true);
            assert_close(&weighted.context, &want, 1e-4, &format!("hybrid weights path w={w}"));
        }
        // Decoding token by token (no padding) equals the causal parallel form.
        let full = AttentionMask::none().with_causal(true);
        let want = data(&m.attend(q.clone(), k.clone(), v.clone(), &full, false).context);
        let mut state = m.initial_state(BATCH, HEADS, D, D, &device);
        let mut got = vec![0.0; BATCH * HEADS * N * D];
        for t in 0..N {
            let at = |x: &Tensor<B, 4>| x.clone().slice([0..BATCH, 0..HEADS, t..t + 1, 0..D]);
            let (out, next) = m.step(state, at(&q), at(&k), at(&v));
            state = next;
            assert!(state.k.dims()[2] <= w, "window grew past {w}");
            let out = data(&out);
            for b in 0..BATCH {
                for h in 0..HEADS {
                    for x in 0..D {
                        got[((b * HEADS + h) * N + t) * D + x] = out[(b * HEADS + h) * D + x];
                    }
                }
            }
        }
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst <= 1e-5, "hybrid w={w}: decode vs parallel {worst:e}");
    }
}

#[test]
fn identity_feature_map_on_tiny_inputs_equals_the_explicit_formula() {
    let _rng = kiln_testkit::rng_lock();
    // φ = identity: a T2R map with W = I, b = 0 on non-negative inputs (ReLU(x) = x); its
    // query scaling d^-½ cancels between numerator and normaliser.
    let device = Default::default();
    let mut map = FeatureMap::<B>::learned(FeatureKind::T2r, 1, 2, 2, &device);
    map.weight = Some(burn::module::Param::from_tensor(Tensor::from_data(
        TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0], [1, 2, 2]),
        &device,
    )));
    map.bias = Some(burn::module::Param::from_tensor(Tensor::zeros([1, 2], &device)));
    let m = LinearAttention::new(map, 1e-6);
    let t = |v: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v, [1, 1, 3, 2]), &device);
    let (q, k, v) = (
        t(vec![1.0, 0.0, 1.0, 1.0, 0.0, 2.0]),
        t(vec![1.0, 2.0, 3.0, 0.0, 1.0, 1.0]),
        t(vec![1.0, 0.0, 0.0, 1.0, 2.0, 2.0]),
    );
    // Scores q_i·k_j: row 0 = [1, 3, 1], row 1 = [3, 3, 2], row 2 = [4, 0, 2].
    // Bidirectional: out_i = Σ_j s_ij v_j / Σ_j s_ij.
    let bi = [[3.0 / 5.0, 5.0 / 5.0], [7.0 / 8.0, 7.0 / 8.0], [8.0 / 6.0, 4.0 / 6.0]];
    // Causal: row 0 = v_0; row 1 = (3 v_0 + 3 v_1) / 6; row 2 = (4 v_0 + 0 v_1 + 2 v_2) / 6.
    let causal = [[1.0, 0.0], [0.5, 0.5], [8.0 / 6.0, 4.0 / 6.0]];
    for (is_causal, want) in [(false, bi), (true, causal)] {
        let mask = AttentionMask::none().with_causal(is_causal);
        let got = data(&m.attend(q.clone(), k.clone(), v.clone(), &mask, false).context);
        let want: Vec<f64> = want.iter().flatten().copied().collect();
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-6, "causal={is_causal}: {got:?} vs {want:?}");
    }
}
