//! Rollout against a direct float64 product; IG completeness; gradient × input against finite
//! differences.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::{Distribution, TensorData};
use kiln_lens::attribution::{gradient_x_input, integrated_gradients, rollout};
use kiln_model::{BertModel, Capture};

type A = Autodiff<Flex>;

/// A scalar per sequence that depends on every token: a fixed projection of the mean state.
fn target(model: &BertModel<A>, e: Tensor<A, 3>) -> Tensor<A, 1> {
    let [n, s, d] = e.dims();
    let h = model.encode(e, None, Capture::none()).last_hidden_state;
    let w = Tensor::<A, 1, Int>::arange(0..d as i64, &h.device())
        .float()
        .sin()
        .reshape([1, 1, d]);
    (h * w).sum_dim(2).sum_dim(1).reshape([n]).div_scalar(s as f64)
}

/// `M_L ⋯ M_1` of square float64 matrices, applied bottom-up from the identity.
fn product_f64(layers: &[Vec<Vec<f64>>]) -> Vec<Vec<f64>> {
    let len = layers[0].len();
    let identity: Vec<Vec<f64>> = (0..len)
        .map(|i| (0..len).map(|j| f64::from(i == j)).collect())
        .collect();
    layers.iter().fold(identity, |r, m| {
        (0..len)
            .map(|i| (0..len).map(|j| (0..len).map(|k| m[i][k] * r[k][j]).sum()).collect())
            .collect()
    })
}

#[test]
fn rollout_is_the_renormalised_product_of_half_identity_mixtures() {
    let _rng = kiln_testkit::rng_lock();
    let device = Default::default();
    Flex::seed(&device, 1);
    let (n, h, s) = (2, 3, 5);
    let raw = |seed| {
        Flex::seed(&device, seed);
        burn::tensor::activation::softmax(
            Tensor::<Flex, 4>::random([n, h, s, s], Distribution::Normal(0.0, 1.0), &device),
            3,
        )
    };
    let atts = vec![raw(2), raw(3)];
    let mask =
        Tensor::<Flex, 2, Int>::from_data(TensorData::new(vec![1i64, 1, 1, 1, 1, 1, 1, 1, 0, 0], [n, s]), &device);
    let got: Vec<f32> = rollout(&atts, mask).into_data().to_vec().unwrap();
    for b in 0..n {
        let len = if b == 0 { s } else { 3 };
        let mut layers = Vec::new();
        for a in &atts {
            let a: Vec<f32> = a.clone().into_data().to_vec().unwrap();
            let mut m = vec![vec![0.0; len]; len];
            for i in 0..len {
                for j in 0..len {
                    let mean = (0..h).map(|hh| a[((b * h + hh) * s + i) * s + j] as f64).sum::<f64>() / h as f64;
                    m[i][j] = 0.5 * mean + 0.5 * f64::from(i == j);
                }
                let z: f64 = m[i].iter().sum();
                m[i].iter_mut().for_each(|x| *x /= z);
            }
            layers.push(m);
        }
        let r = product_f64(&layers);
        for i in 0..s {
            for j in 0..s {
                let want = if i < len && j < len { r[i][j] } else { 0.0 };
                let g = got[(b * s + i) * s + j] as f64;
                assert!((g - want).abs() < 1e-5, "[{b},{i},{j}] {g} vs {want}");
            }
        }
    }
}

#[test]
fn integrated_gradients_are_complete_and_gradient_x_input_matches_finite_differences() {
    let _rng = kiln_testkit::rng_lock();
    let model = common::tiny_bert::<A>(3);
    let device = Default::default();
    let ids = Tensor::<A, 2, Int>::from_data(TensorData::new(vec![3i64, 7, 11, 19, 23, 5], [2, 3]), &device);
    let e = model.embed(ids, None).detach();
    let f = |x: Tensor<A, 3>| target(&model, x);
    // Baseline: the embeddings of a [PAD]-only sequence (as usual for BERT; the zero vector is
    // degenerate for a post-LN encoder, whose output is nearly scale invariant along t·x).
    let pad = Tensor::<A, 2, Int>::zeros([2, 3], &device);
    let baseline = model.embed(pad, None).detach();
    let (_, per_token) = integrated_gradients(e.clone(), Some(baseline.clone()), 64, 24, f);
    let sums: Vec<f32> = per_token.sum_dim(1).into_data().to_vec().unwrap();
    let fx: Vec<f32> = target(&model, e.clone()).into_data().to_vec().unwrap();
    let f0: Vec<f32> = target(&model, baseline).into_data().to_vec().unwrap();
    for b in 0..2 {
        let gap = (fx[b] - f0[b]) as f64;
        assert!(
            (sums[b] as f64 - gap).abs() < 0.01 * gap.abs().max(1e-3),
            "sequence {b}: Σ IG {} vs f(x) − f(0) {gap}",
            sums[b]
        );
    }
    // Gradient × input: ∂f/∂e at one coordinate by central differences.
    let (attr, _) = gradient_x_input(e.clone(), f);
    let attr: Vec<f32> = attr.into_data().to_vec().unwrap();
    let base: Vec<f32> = e.clone().inner().into_data().to_vec().unwrap();
    for idx in [0usize, 17, 40, 95] {
        let h = 1e-2f32;
        let bump = |delta: f32| {
            let mut v = base.clone();
            v[idx] += delta;
            let t = Tensor::<A, 3>::from_data(TensorData::new(v, [2, 3, 16]), &device);
            target(&model, t).into_data().to_vec::<f32>().unwrap()[idx / 48]
        };
        let grad = (bump(h) - bump(-h)) as f64 / (2.0 * h as f64);
        let want = grad * base[idx] as f64;
        assert!(
            (attr[idx] as f64 - want).abs() < 2e-3 + 0.02 * want.abs(),
            "[{idx}] {} vs {want}",
            attr[idx]
        );
    }
}

#[test]
fn rollout_of_residual_matrices_is_the_product_of_row_normalised_layers() {
    let _rng = kiln_testkit::rng_lock();
    use kiln_lens::attribution::rollout_matrices;
    let device = Default::default();
    let (n, s) = (1, 4);
    let layer = |seed| {
        Flex::seed(&device, seed);
        Tensor::<Flex, 3>::random([n, s, s], Distribution::Uniform(0.1, 1.0), &device)
    };
    let mats = vec![layer(5), layer(6), layer(7)];
    let mask = Tensor::<Flex, 2, Int>::from_data(TensorData::new(vec![1i64, 1, 1, 0], [n, s]), &device);
    let got: Vec<f32> = rollout_matrices(&mats, mask, false).into_data().to_vec().unwrap();
    let len = 3;
    let mut layers = Vec::new();
    for m in &mats {
        let m: Vec<f32> = m.clone().into_data().to_vec().unwrap();
        let rows: Vec<Vec<f64>> = (0..len)
            .map(|i| {
                let z: f64 = (0..len).map(|j| m[i * s + j] as f64).sum();
                (0..len).map(|j| m[i * s + j] as f64 / z).collect()
            })
            .collect();
        layers.push(rows);
    }
    let r = product_f64(&layers);
    for i in 0..s {
        let sum: f32 = got[i * s..(i + 1) * s].iter().sum();
        assert!(
            (sum - f32::from(u8::from(i < len))).abs() < 1e-5,
            "row {i} sums to {sum}"
        );
        for j in 0..s {
            let want = if i < len && j < len { r[i][j] } else { 0.0 };
            assert!((got[i * s + j] as f64 - want).abs() < 1e-5);
        }
    }
}

#[test]
fn mixing_rollout_gives_each_token_its_measured_context_share() {
    let _rng = kiln_testkit::rng_lock();
    use kiln_lens::norm::{mixing_rollout, LayerNorms};
    let device = Default::default();
    let (n, s, len) = (1, 4, 3);
    let layer = |seed| {
        Flex::seed(&device, seed);
        let norm_afx = Tensor::<Flex, 3>::random([n, s, s], Distribution::Uniform(0.1, 2.0), &device);
        let ratio = Tensor::<Flex, 2>::random([n, s], Distribution::Uniform(0.05, 0.4), &device);
        let zeros = Tensor::<Flex, 2>::zeros([n, s], &device);
        LayerNorms {
            norm_afx,
            attn_w: zeros.clone(),
            attnres_w: zeros.clone(),
            attn_n: zeros.clone(),
            attnres_n: zeros,
            attnresln_n: ratio,
        }
    };
    let layers = vec![layer(11), layer(12)];
    let mask = Tensor::<Flex, 2, Int>::from_data(TensorData::new(vec![1i64, 1, 1, 0], [n, s]), &device);
    let got: Vec<f32> = mixing_rollout(&layers, mask).into_data().to_vec().unwrap();
    // float64: M_ij = r_i·N_ij/Σ_{k≠i} N_ik (j ≠ i, real), M_ii = 1 − r_i; R = M_L ⋯ M_1.
    let mut matrices = Vec::new();
    for l in &layers {
        let nm: Vec<f32> = l.norm_afx.clone().into_data().to_vec().unwrap();
        let ratio: Vec<f32> = l.attnresln_n.clone().into_data().to_vec().unwrap();
        let m: Vec<Vec<f64>> = (0..len)
            .map(|i| {
                let others: f64 = (0..len).filter(|&j| j != i).map(|j| nm[i * s + j] as f64).sum();
                (0..len)
                    .map(|j| {
                        if i == j {
                            1.0 - ratio[i] as f64
                        } else {
                            ratio[i] as f64 * nm[i * s + j] as f64 / others
                        }
                    })
                    .collect()
            })
            .collect();
        matrices.push(m);
    }
    let r = product_f64(&matrices);
    for i in 0..s {
        for j in 0..s {
            let want = if i < len && j < len { r[i][j] } else { 0.0 };
            assert!(
                (got[i * s + j] as f64 - want).abs() < 1e-5,
                "[{i},{j}] {} vs {want}",
                got[i * s + j]
            );
        }
    }
    // One layer: token i keeps exactly 1 − r_i of itself.
    let one: Vec<f32> = mixing_rollout(&layers[..1], Tensor::ones([n, s], &device))
        .into_data()
        .to_vec()
        .unwrap();
    let ratio: Vec<f32> = layers[0].attnresln_n.clone().into_data().to_vec().unwrap();
    for i in 0..s {
        assert!((one[i * s + i] - (1.0 - ratio[i])).abs() < 1e-6);
    }
}
