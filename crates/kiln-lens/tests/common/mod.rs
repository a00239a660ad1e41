//! Helpers shared by kiln-lens's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::prelude::*;
use kiln_model::{BertConfig, BertModel};

/// A random 2-layer, 4-head, 16-wide BERT (no dropout) drawn from `seed`.
pub fn tiny_bert<B: Backend>(seed: u64) -> BertModel<B> {
    let device = Default::default();
    B::seed(&device, seed);
    let config: BertConfig = serde_json::from_str(
        r#"{"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 32, "max_position_embeddings": 32, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0}"#,
    )
    .unwrap();
    BertModel::new(&config, false, &device)
}

/// The committed tiny BertForMaskedLM (`fixtures/tiny-bert-mlm`).
pub fn mlm_fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-bert-mlm")
}

/// A tensor's values as float64.
pub fn vec64<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// Head gates `[layers][heads]`: all ones but `value` at (`layer`, `head`).
pub fn one_gate(layers: usize, heads: usize, layer: usize, head: usize, value: f32) -> Vec<Vec<f32>> {
    (0..layers)
        .map(|l| {
            (0..heads)
                .map(|h| if l == layer && h == head { value } else { 1.0 })
                .collect()
        })
        .collect()
}

/// Layer `l`'s Taylor scores `got` equal a host recomputation `want` (each positive) to 1e-4
/// relative.
pub fn assert_taylor_row(l: usize, got: &[f64], want: &[f64]) {
    for (h, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(*w > 0.0);
        assert!((g - w).abs() < 1e-4 * w, "[{l}][{h}] {g} vs {w}");
    }
}
