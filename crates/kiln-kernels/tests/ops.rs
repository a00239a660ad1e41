//! The burn-facing operations on `Autodiff<Flex>` (fused kernels, custom backward nodes)
//! against the same functions composed from burn operations on `Autodiff<NdArray>`: outputs
//! and every input gradient, element by element. The reference runs in float64, so the
//! tolerances bound the kernels' own f32 error, not the difference between two f32 summation
//! orders (those change with the SIMD width a CPU offers).

use burn::backend::{Autodiff, Flex, NdArray};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::{Distribution, TensorData};
use kiln_kernels::ops;

type K = Autodiff<Flex>;
type R = Autodiff<NdArray<f64>>;

fn data<const D: usize>(shape: [usize; D], seed: u64) -> TensorData {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((kiln_kernels::rng::splitmix64(seed, i as u64) >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0)
        .collect();
    TensorData::new(v, shape)
}

fn close<A: Backend, C: Backend, const D: usize, const E: usize>(
    a: Tensor<A, D>,
    b: Tensor<C, E>,
    tol: f32,
    what: &str,
) {
    let a = a.into_data().convert::<f64>().to_vec::<f64>().unwrap();
    let b = b.into_data().convert::<f64>().to_vec::<f64>().unwrap();
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f64, f64::max);
    assert!(
        worst <= tol as f64 * scale,
        "{what}: max |Δ| {worst:e}, scale {scale:e}"
    );
}

/// Composed reference: softmax(q kᵀ/√d with f32::MIN at masked keys) v.
fn attention_ref(q: Tensor<R, 4>, k: Tensor<R, 4>, v: Tensor<R, 4>, keep: &[bool], causal: bool) -> Tensor<R, 4> {
    let [b, h, s, d] = q.dims();
    let dev = q.device();
    let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar((d as f64).powf(-0.5));
    let mut fill = vec![false; b * h * s * s];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..s {
                for j in 0..s {
                    fill[((bi * h + hi) * s + i) * s + j] = !keep[bi * s + j] || (causal && j > i);
                }
            }
        }
    }
    let fill = Tensor::<R, 4, Bool>::from_data(TensorData::new(fill, [b, h, s, s]), &dev);
    softmax(scores.mask_fill(fill, f32::MIN), 3).matmul(v)
}

#[test]
fn attention_forward_and_gradients_match_the_composed_form() {
    let (kd, rd) = (Default::default(), Default::default());
    let (b, h, s, d) = (2, 3, 70, 8);
    // [b, s, h·d] projections split into heads as the model does (a strided view)
    let split_k = |t: TensorData| Tensor::<K, 3>::from_data(t, &kd).reshape([b, s, h, d]).swap_dims(1, 2);
    let keep: Vec<bool> = (0..b * s).map(|i| i % s < 60 || i < s).collect();
    for causal in [false, true] {
        let (qd, kd_, vd) = (data([b, s, h * d], 1), data([b, s, h * d], 2), data([b, s, h * d], 3));
        let (q, k, v) = (
            split_k(qd.clone()).require_grad(),
            split_k(kd_.clone()).require_grad(),
            split_k(vd.clone()).require_grad(),
        );
        let mask = Tensor::<K, 2, Bool>::from_data(TensorData::new(keep.clone(), [b, s]), &kd);
        let out =
            ops::attention(q.clone(), k.clone(), v.clone(), Some(&mask), causal, 0.0).expect("Flex has the kernel");
        let w = Tensor::<K, 4>::from_data(data([b, h, s, d], 4), &kd);
        let g = (out.clone() * w).sum().backward();

        let split_r = |t: TensorData| Tensor::<R, 3>::from_data(t, &rd).reshape([b, s, h, d]).swap_dims(1, 2);
        let (qr, kr, vr) = (
            split_r(qd).require_grad(),
            split_r(kd_).require_grad(),
            split_r(vd).require_grad(),
        );
        let outr = attention_ref(qr.clone(), kr.clone(), vr.clone(), &keep, causal);
        let wr = Tensor::<R, 4>::from_data(data([b, h, s, d], 4), &rd);
        let gr = (outr.clone() * wr).sum().backward();
        close(out, outr, 5e-6, "out");
        close(q.grad(&g).unwrap(), qr.grad(&gr).unwrap(), 5e-6, "dq");
        close(k.grad(&g).unwrap(), kr.grad(&gr).unwrap(), 5e-6, "dk");
        close(v.grad(&g).unwrap(), vr.grad(&gr).unwrap(), 5e-6, "dv");
    }
}

#[test]
fn linear_forward_and_gradients_match_matmul_plus_bias_and_skip_frozen_inputs() {
    let (kd, rd) = (Default::default(), Default::default());
    let (m, k, n) = (300, 48, 40);
    for bias in [true, false] {
        for frozen_w in [false, true] {
            let x = Tensor::<K, 2>::from_data(data([m, k], 5), &kd).require_grad();
            let w = Tensor::<K, 2>::from_data(data([k, n], 6), &kd);
            let w = if frozen_w { w } else { w.require_grad() };
            let bt = bias.then(|| Tensor::<K, 1>::from_data(data([n], 7), &kd).require_grad());
            let y = ops::linear(x.clone(), w.clone(), bt.clone()).expect("kernel");
            let g = (y.clone() * Tensor::<K, 2>::from_data(data([m, n], 8), &kd))
                .sum()
                .backward();

            let xr = Tensor::<R, 2>::from_data(data([m, k], 5), &rd).require_grad();
            let wr = Tensor::<R, 2>::from_data(data([k, n], 6), &rd).require_grad();
            let br = Tensor::<R, 1>::from_data(data([n], 7), &rd).require_grad();
            let yr = if bias {
                xr.clone().matmul(wr.clone()) + br.clone().unsqueeze()
            } else {
                xr.clone().matmul(wr.clone())
            };
            let gr = (yr.clone() * Tensor::<R, 2>::from_data(data([m, n], 8), &rd))
                .sum()
                .backward();
            close(y, yr, 5e-6, "y");
            close(x.grad(&g).unwrap(), xr.grad(&gr).unwrap(), 5e-6, "dx");
            assert_eq!(w.grad(&g).is_some(), !frozen_w, "a frozen weight gets no gradient");
            if !frozen_w {
                close(w.grad(&g).unwrap(), wr.grad(&gr).unwrap(), 5e-6, "dw");
            }
            if let Some(bt) = bt {
                close(bt.grad(&g).unwrap(), br.grad(&gr).unwrap(), 5e-6, "db");
            }
        }
    }
}

#[test]
fn gelu_gradient_matches_the_composed_erf_form() {
    let (kd, rd) = (Default::default(), Default::default());
    let x = Tensor::<K, 2>::random([64, 33], Distribution::Normal(0.0, 3.0), &kd);
    let xd = x.to_data();
    let x = x.require_grad();
    let y = ops::gelu(x.clone()).expect("kernel");
    let g = y.clone().sum().backward();
    let xr = Tensor::<R, 2>::from_data(xd, &rd).require_grad();
    let yr = xr.clone()
        * xr.clone()
            .div_scalar(std::f64::consts::SQRT_2)
            .erf()
            .add_scalar(1.0)
            .mul_scalar(0.5);
    let gr = yr.clone().sum().backward();
    close(y, yr, 1e-6, "gelu");
    close(x.grad(&g).unwrap(), xr.grad(&gr).unwrap(), 5e-6, "gelu'");
}

#[test]
fn dropout_backward_regenerates_the_forward_mask() {
    let kd = Default::default();
    let x = Tensor::<K, 2>::random([128, 300], Distribution::Normal(1.0, 0.1), &kd).require_grad();
    let w = Tensor::<K, 2>::random([128, 300], Distribution::Normal(0.0, 1.0), &kd);
    let y = ops::dropout(x.clone(), 0.3).expect("kernel");
    let g = (y.clone() * w.clone()).sum().backward();
    let (y, x0, w, gx) = (
        y.into_data().to_vec::<f32>().unwrap(),
        x.clone().inner().into_data().to_vec::<f32>().unwrap(),
        w.inner().into_data().to_vec::<f32>().unwrap(),
        x.grad(&g).unwrap().into_data().to_vec::<f32>().unwrap(),
    );
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / y.len() as f64;
    assert!((kept - 0.7).abs() < 0.01, "kept {kept}");
    for i in 0..y.len() {
        let keep = y[i] != 0.0;
        let want_y = if keep { x0[i] / 0.7 } else { 0.0 };
        let want_g = if keep { w[i] / 0.7 } else { 0.0 };
        assert!(
            (y[i] - want_y).abs() < 1e-5 && (gx[i] - want_g).abs() < 1e-5,
            "element {i}"
        );
    }
    // off autodiff (and on other backends) the kernel declines
    assert!(ops::dropout(Tensor::<Flex, 1>::ones([4], &Default::default()), 0.3).is_err());
}

#[test]
fn layer_norm_forward_and_gradients_match_burns_layer_norm() {
    let (kd, rd) = (Default::default(), Default::default());
    let (b, s, d) = (3, 17, 48);
    let x = || data([b, s, d], 11);
    let w = || data([b, s, d], 12);
    let xk = Tensor::<K, 3>::from_data(x(), &kd).require_grad();
    let gk = Tensor::<K, 1>::from_data(data([d], 13), &kd).require_grad();
    let bk = Tensor::<K, 1>::from_data(data([d], 14), &kd).require_grad();
    let y = ops::layer_norm(xk.clone(), gk.clone(), Some(bk.clone()), 1e-5).expect("kernel");
    let g = (y.clone() * Tensor::<K, 3>::from_data(w(), &kd)).sum().backward();

    let xr = Tensor::<R, 3>::from_data(x(), &rd).require_grad();
    let gr = Tensor::<R, 1>::from_data(data([d], 13), &rd).require_grad();
    let br = Tensor::<R, 1>::from_data(data([d], 14), &rd).require_grad();
    let (var, mean) = xr.clone().var_mean_bias(2);
    let yr = (xr.clone() - mean).div((var + 1e-5).sqrt()) * gr.clone().unsqueeze::<3>() + br.clone().unsqueeze::<3>();
    let grr = (yr.clone() * Tensor::<R, 3>::from_data(w(), &rd)).sum().backward();
    close(y, yr, 5e-6, "y");
    close(xk.grad(&g).unwrap(), xr.grad(&grr).unwrap(), 5e-6, "dx");
    close(gk.grad(&g).unwrap(), gr.grad(&grr).unwrap(), 5e-6, "dγ");
    close(bk.grad(&g).unwrap(), br.grad(&grr).unwrap(), 5e-6, "dβ");
}
