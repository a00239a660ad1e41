//! Exact scaled dot-product softmax attention (Vaswani et al. 2017, eq. 1).

use burn::nn::{Dropout, DropoutConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use crate::{Attention, AttentionMask, AttentionOutput};

/// `softmax(q kᵀ / √d + mask) v`. Masked scores are filled with the most negative finite
/// float (as Hugging Face does), so a fully masked row yields a uniform row, never NaN.
///
/// Without `need_weights`, Flex and `Autodiff<Flex>` run kiln-kernels' fused attention
/// (dropout included, custom backward); other backends use burn's fused attention op when
/// dropout is inactive and the explicit form otherwise. With `need_weights` the explicit form
/// runs everywhere. Returned weights are the probabilities *before* dropout.
#[derive(Module, Debug, Clone)]
pub struct SoftmaxAttention {
    /// Dropout on the attention probabilities (active only on autodiff backends).
    pub dropout: Dropout,
}

impl Default for SoftmaxAttention {
    fn default() -> Self {
        Self::new(0.0)
    }
}

impl SoftmaxAttention {
    /// Creates the mechanism with dropout probability `dropout` on the probabilities.
    pub fn new(dropout: f64) -> Self {
        Self {
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    /// Explicit `softmax(q kᵀ·scale + mask)`, `[batch, heads, seq_q, seq_k]`.
    pub fn probabilities<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, mask: &AttentionMask<B>) -> Tensor<B, 4> {
        softmax(Self::masked_scores(q, k, mask), 3)
    }

    /// `q kᵀ·scale` with padded and (if causal) future keys filled with the most negative
    /// finite float, `[batch, heads, seq_q, seq_k]`.
    pub fn masked_scores<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, mask: &AttentionMask<B>) -> Tensor<B, 4> {
        let [_, heads, seq_q, head_dim] = q.dims();
        let seq_k = k.dims()[2];
        let scale = (head_dim as f64).powf(-0.5);
        let mut scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
        if let Some(fill) = mask.padding_fill_mask(heads, seq_q) {
            scores = scores.mask_fill(fill, f32::MIN);
        }
        if mask.causal {
            let causal = AttentionMask::<B>::causal_fill_mask(seq_q, seq_k, &scores.device());
            let shape = scores.shape();
            scores = scores.mask_fill(causal.expand(shape), f32::MIN);
        }
        scores
    }
}

impl<B: Backend> Attention<B> for SoftmaxAttention {
    fn attend(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        mask: &AttentionMask<B>,
        need_weights: bool,
    ) -> AttentionOutput<B> {
        let dropout_active = self.dropout.prob > 0.0 && B::ad_enabled(&q.device());
        let (q, k, v) = if need_weights {
            (q, k, v)
        } else {
            let p = if dropout_active { self.dropout.prob } else { 0.0 };
            match kiln_kernels::ops::attention(q, k, v, mask.key_padding.as_ref(), mask.causal, p) {
                Ok(context) => return AttentionOutput { context, weights: None },
                Err(inputs) => inputs,
            }
        };
        if need_weights || dropout_active {
            let weights = Self::probabilities(q, k, mask);
            let context = self.dropout.forward(weights.clone()).matmul(v);
            return AttentionOutput {
                context,
                weights: need_weights.then_some(weights),
            };
        }
        let [_, heads, seq_q, _] = q.dims();
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: mask.causal,
        };
        let context = attention(q, k, v, mask.padding_fill_mask(heads, seq_q), None, options);
        AttentionOutput { context, weights: None }
    }

    fn name(&self) -> &'static str {
        "softmax"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    type B = Flex;

    /// Reference: per (batch, head, i) a direct loop over keys in f64.
    fn naive(q: &[f32], k: &[f32], v: &[f32], dims: [usize; 4], keep: &[bool], causal: bool) -> Vec<f32> {
        let [b, h, s, d] = dims;
        let at = |t: &[f32], bi: usize, hi: usize, i: usize, x: usize| t[((bi * h + hi) * s + i) * d + x] as f64;
        let mut out = vec![0f32; b * h * s * d];
        for bi in 0..b {
            for hi in 0..h {
                for i in 0..s {
                    let allowed: Vec<usize> = (0..s).filter(|&j| keep[bi * s + j] && (!causal || j <= i)).collect();
                    let scores: Vec<f64> = allowed
                        .iter()
                        .map(|&j| {
                            (0..d).map(|x| at(q, bi, hi, i, x) * at(k, bi, hi, j, x)).sum::<f64>() / (d as f64).sqrt()
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                    for x in 0..d {
                        let val: f64 = allowed
                            .iter()
                            .zip(&scores)
                            .map(|(&j, s)| (s - m).exp() / z * at(v, bi, hi, j, x))
                            .sum();
                        out[((bi * h + hi) * s + i) * d + x] = val as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn fused_and_explicit_paths_match_a_naive_loop() {
        let device = Default::default();
        let dims = [2, 3, 5, 4];
        let q = Tensor::<B, 4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
        let k = Tensor::<B, 4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
        let v = Tensor::<B, 4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
        let am =
            Tensor::<B, 2, Int>::from_data(TensorData::new(vec![1i64, 1, 1, 1, 1, 1, 1, 1, 0, 0], [2, 5]), &device);
        let keep: Vec<bool> = am.to_data().iter::<i64>().map(|x| x == 1).collect();
        let flat = |t: &Tensor<B, 4>| t.to_data().to_vec::<f32>().unwrap();
        for causal in [false, true] {
            let mask = AttentionMask::from_attention_mask(am.clone()).with_causal(causal);
            let expected = naive(&flat(&q), &flat(&k), &flat(&v), dims, &keep, causal);
            let expected = TensorData::new(expected, dims);
            for need_weights in [false, true] {
                let out = SoftmaxAttention::default().attend(q.clone(), k.clone(), v.clone(), &mask, need_weights);
                out.context
                    .to_data()
                    .assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
                assert_eq!(out.weights.is_some(), need_weights);
            }
        }
    }

    #[test]
    fn probabilities_are_rows_summing_to_one_with_zeros_at_masked_keys() {
        let device = Default::default();
        let q = Tensor::<B, 4>::random([1, 2, 4, 8], Distribution::Normal(0.0, 1.0), &device);
        let k = Tensor::<B, 4>::random([1, 2, 4, 8], Distribution::Normal(0.0, 1.0), &device);
        let am = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![1i64, 1, 1, 0], [1, 4]), &device);
        let mask = AttentionMask::from_attention_mask(am).with_causal(true);
        let p = SoftmaxAttention::probabilities(q, k, &mask);
        let sums = p.clone().sum_dim(3).to_data().to_vec::<f32>().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6), "{sums:?}");
        let p = p.to_data().to_vec::<f32>().unwrap();
        for h in 0..2 {
            for i in 0..4 {
                for j in 0..4 {
                    let masked = j > i || j == 3;
                    if masked {
                        assert_eq!(p[(h * 4 + i) * 4 + j], 0.0, "h{h} i{i} j{j}");
                    }
                }
            }
        }
    }
}
