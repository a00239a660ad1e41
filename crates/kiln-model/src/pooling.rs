//! Sentence embeddings from token states (sentence-transformers' mean pooling).

use burn::prelude::*;

/// Mean of `hidden` `[batch, seq, hidden]` over positions where `attention_mask`
/// `[batch, seq]` is 1 → `[batch, hidden]`. The denominator is clamped at 1e-9 as in
/// sentence-transformers, so an all-padding row yields zeros rather than NaN.
pub fn mean_pool<B: Backend>(hidden: Tensor<B, 3>, attention_mask: Tensor<B, 2, Int>) -> Tensor<B, 2> {
    let [batch, seq, width] = hidden.dims();
    let weights = attention_mask.float().reshape([batch, seq, 1]);
    let summed = (hidden * weights.clone()).sum_dim(1).reshape([batch, width]);
    let count = weights.sum_dim(1).reshape([batch, 1]).clamp_min(1e-9);
    summed / count
}

/// Rows divided by their L2 norm (clamped at 1e-12, as `torch.nn.functional.normalize`).
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// Mean pooling then L2 normalisation: the all-MiniLM-L6-v2 sentence embedding.
pub fn sentence_embedding<B: Backend>(hidden: Tensor<B, 3>, attention_mask: Tensor<B, 2, Int>) -> Tensor<B, 2> {
    l2_normalize(mean_pool(hidden, attention_mask))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    #[test]
    fn mean_pool_ignores_padding_and_normalize_gives_unit_rows() {
        let device = Default::default();
        let h = Tensor::<Flex, 3>::from_data(
            TensorData::new(
                vec![1.0f32, 2.0, 3.0, 4.0, 100.0, 100.0, 0.0, 3.0, 4.0, 0.0, 5.0, 6.0],
                [2, 3, 2],
            ),
            &device,
        );
        let m = Tensor::<Flex, 2, Int>::from_data(TensorData::new(vec![1i64, 1, 0, 1, 0, 0], [2, 3]), &device);
        let pooled = mean_pool(h.clone(), m.clone()).into_data().to_vec::<f32>().unwrap();
        assert_eq!(pooled, vec![2.0, 3.0, 0.0, 3.0]);
        let e = sentence_embedding(h, m).into_data().to_vec::<f32>().unwrap();
        let n0 = (2.0f32 * 2.0 + 9.0).sqrt();
        assert!((e[0] - 2.0 / n0).abs() < 1e-6 && (e[1] - 3.0 / n0).abs() < 1e-6);
        assert_eq!(&e[2..], &[0.0, 1.0]);
    }
}
