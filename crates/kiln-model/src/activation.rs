//! Activations with the exact definitions (and exact gradients) of the reference models.

use burn::prelude::*;

/// GELU with the exact erf form, `x · ½ · (1 + erf(x / √2))` (Hendrycks & Gimpel 2016),
/// as BERT's `hidden_act = "gelu"`.
///
/// On Flex and `Autodiff<Flex>` this is kiln-kernels' fused kernel (one vectorised pass
/// forward, one backward, erf as PyTorch's AVX2 path computes it). Elsewhere it is composed
/// from `erf`: burn 0.21's default `gelu_backward` (used by NdArray, WGPU and CUDA under
/// autodiff) is the derivative of the *tanh approximation*, which would make gradients drift
/// from PyTorch's; composed, the autodiff backend differentiates `erf` exactly.
pub fn gelu_exact<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match kiln_kernels::ops::gelu(x) {
        Ok(y) => y,
        Err(x) => gelu_composed(x),
    }
}

/// [`gelu_exact`] composed from burn operations on every backend (the reference path).
pub fn gelu_composed<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let cdf = x
        .clone()
        .div_scalar(std::f64::consts::SQRT_2)
        .erf()
        .add_scalar(1.0)
        .mul_scalar(0.5);
    x * cdf
}

/// GPT-2's `gelu_new`: `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`.
pub fn gelu_new<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715)).mul_scalar(c);
    x.mul_scalar(0.5) * inner.tanh().add_scalar(1.0)
}

/// Activation functions named as in Hugging Face configs (`hidden_act`, `activation_function`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Activation {
    /// Exact GELU (`"gelu"`).
    #[serde(rename = "gelu")]
    Gelu,
    /// Tanh-approximated GELU (`"gelu_new"`, `"gelu_pytorch_tanh"`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluNew,
    /// `"relu"`.
    #[serde(rename = "relu")]
    Relu,
}

impl Activation {
    /// Applies the activation elementwise.
    pub fn forward<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Self::Gelu => gelu_exact(x),
            Self::GeluNew => gelu_new(x),
            Self::Relu => burn::tensor::activation::relu(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    type B = Flex;

    fn erf64(x: f64) -> f64 {
        // Abramowitz–Stegun 7.1.26 is too coarse; integrate the Gaussian instead.
        let n = 20_000;
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut s = f(0.0) + f(x);
        for i in 1..n {
            s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn gelu_exact_and_its_gradient_match_the_closed_form() {
        let device = Default::default();
        let xs = [-3.0f32, -1.2, -0.3, 0.0, 0.4, 1.7, 2.5];
        for gelu in [gelu_exact::<Autodiff<B>, 1>, gelu_composed::<Autodiff<B>, 1>] {
            let x = Tensor::<Autodiff<B>, 1>::from_floats(xs, &device).require_grad();
            let y = gelu(x.clone());
            let grads = y.clone().sum().backward();
            let g = x.grad(&grads).unwrap().to_data().to_vec::<f32>().unwrap();
            let y = y.into_data().to_vec::<f32>().unwrap();
            for (i, &xi) in xs.iter().enumerate() {
                let x = xi as f64;
                let cdf = 0.5 * (1.0 + erf64(x / std::f64::consts::SQRT_2));
                let pdf = (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
                assert!((y[i] as f64 - x * cdf).abs() < 1e-6, "gelu({x})");
                assert!(
                    (g[i] as f64 - (cdf + x * pdf)).abs() < 1e-6,
                    "gelu'({x}) = {} vs {}",
                    g[i],
                    cdf + x * pdf
                );
            }
        }
    }

    #[test]
    fn gelu_new_matches_the_tanh_formula() {
        let device = Default::default();
        let xs = [-2.0f32, -0.5, 0.0, 0.7, 3.0];
        let y = gelu_new(Tensor::<B, 1>::from_floats(xs, &device))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        for (i, &xi) in xs.iter().enumerate() {
            let x = xi as f64;
            let want = 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
            assert!((y[i] as f64 - want).abs() < 1e-6);
        }
    }
}
