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
