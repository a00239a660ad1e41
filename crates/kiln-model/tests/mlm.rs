//! The MLM head against PyTorch `BertForMaskedLM` on the committed tiny fixture
//! (`fixtures/tiny-bert-mlm`, written by `scripts/make_tiny_mlm_fixture.py`), and the typed
//! error for a checkpoint without a head.

mod common;

use std::path::PathBuf;

use burn::backend::Flex;
use kiln_model::parity::ReferenceFile;
use kiln_model::{BertMlmHead, BertModel, Capture, ModelError};

type B = Flex;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-bert-mlm")
}

#[test]
fn mlm_logits_match_pytorch() {
    let device = Default::default();
    let (model, config) = BertModel::<B>::from_pretrained(fixture(), false, &device).unwrap();
    let head = BertMlmHead::<B>::from_checkpoint(&config, fixture().join("model.safetensors"), &device).unwrap();
    let reference = ReferenceFile::open(fixture().join("reference.safetensors")).unwrap();
    let ids = reference.int_tensor::<B>("input_ids", &device).unwrap();
    let mask = reference.int_tensor::<B>("attention_mask", &device).unwrap();
    let out = model.forward(ids, None, Some(mask.clone()), Capture::none());
    let logits: Vec<f32> = head
        .forward(&model, out.last_hidden_state)
        .into_data()
        .to_vec()
        .unwrap();
    let (shape, want) = reference.f32("logits").unwrap();
    let (_, m) = reference.i64("attention_mask").unwrap();
    let (seq, vocab) = (shape[1], shape[2]);
    let mut worst = 0f64;
    for (i, (&g, &w)) in logits.iter().zip(want).enumerate() {
        if m[i / vocab] == 1 {
            worst = worst.max((g - w).abs() as f64);
        }
    }
    println!(
        "max abs logit diff {worst:.2e}; logit range {:?}",
        want.iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)))
    );
    assert_eq!(logits.len(), shape.iter().product::<usize>());
    assert!(seq == 8 && worst < 1e-5, "max |Δlogit| {worst}");
}

#[test]
fn a_checkpoint_without_a_head_is_a_typed_error() {
    let device = Default::default();
    let config = kiln_model::BertConfig::from_file(common::minilm_dir().join("config.json")).unwrap();
    match BertMlmHead::<B>::from_checkpoint(&config, common::minilm_dir().join("model.safetensors"), &device) {
        Err(ModelError::Mismatch { missing, .. }) => {
            assert!(missing.contains(&"cls.predictions.bias".to_string()), "{missing:?}");
            assert!(
                missing.iter().any(|n| n == "cls.predictions.transform.dense.weight"),
                "{missing:?}"
            );
        }
        other => panic!("expected a mismatch, got {:?}", other.map(|_| ())),
    }
}
