//! Bad checkpoints and configs give typed errors that name what is wrong, never a panic.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::backend::Flex;
use kiln_model::{load_gpt2_weights, BertConfig, BertModel, Gpt2Model, GptConfig, ModelError};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

type B = Flex;

/// The tiny GPT-2 checkpoint's tensors as (name → (shape, f32 bytes)).
fn gpt2_tensors() -> BTreeMap<String, (Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(common::gpt2_tiny().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

fn write(path: &Path, tensors: &BTreeMap<String, (Vec<usize>, Vec<u8>)>) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, (s, d))| (n.clone(), TensorView::new(Dtype::F32, s.clone(), d).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn load_modified(modify: impl FnOnce(&mut BTreeMap<String, (Vec<usize>, Vec<u8>)>)) -> Result<(), ModelError> {
    let config = GptConfig::from_file(common::gpt2_tiny().join("config.json")).unwrap();
    let mut tensors = gpt2_tensors();
    modify(&mut tensors);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write(&path, &tensors);
    let mut model = Gpt2Model::<B>::new(&config, &Default::default());
    load_gpt2_weights(&mut model, &path).map(|_| ())
}

#[test]
fn unmodified_copy_loads() {
    load_modified(|_| {}).unwrap();
}

#[test]
fn missing_tensor_is_listed_by_checkpoint_name() {
    let err = load_modified(|t| {
        t.remove("transformer.h.1.mlp.c_fc.weight");
    })
    .unwrap_err();
    match &err {
        ModelError::Mismatch {
            missing,
            unexpected,
            wrong_shape,
            ..
        } => {
            assert_eq!(missing, &vec!["h.1.mlp.c_fc.weight".to_string()]);
            assert!(unexpected.is_empty() && wrong_shape.is_empty());
        }
        e => panic!("expected Mismatch, got {e:?}"),
    }
    assert!(err.to_string().contains("1 missing: h.1.mlp.c_fc.weight"), "{err}");
}

#[test]
fn wrong_shape_is_reported_with_both_shapes() {
    let err = load_modified(|t| {
        // [64, 256] → [32, 256]: same dtype, half the rows.
        let (shape, data) = t.get_mut("transformer.h.0.mlp.c_fc.weight").unwrap();
        *shape = vec![32, 256];
        data.truncate(32 * 256 * 4);
    })
    .unwrap_err();
    match err {
        ModelError::Mismatch { wrong_shape, .. } => {
            assert_eq!(wrong_shape.len(), 1, "{wrong_shape:?}");
            assert_eq!(wrong_shape[0].name, "h.0.mlp.c_fc.weight");
            assert_eq!(
                (wrong_shape[0].expected.clone(), wrong_shape[0].found.clone()),
                (vec![64, 256], vec![32, 256])
            );
        }
        e => panic!("expected Mismatch, got {e:?}"),
    }
}

#[test]
fn unexpected_tensor_is_an_error_but_known_buffers_are_ignored() {
    let err = load_modified(|t| {
        t.insert("transformer.h.0.attn.q_norm.weight".into(), (vec![4], vec![0; 16]));
    })
    .unwrap_err();
    assert!(
        matches!(&err, ModelError::Mismatch { unexpected, .. } if unexpected == &vec!["h.0.attn.q_norm.weight".to_string()]),
        "{err:?}"
    );
    // Old GPT-2 exports carry causal-mask buffers and an lm_head copy: fine to ignore.
    load_modified(|t| {
        t.insert("transformer.h.0.attn.bias".into(), (vec![1, 1, 2, 2], vec![0; 16]));
        t.insert("lm_head.weight".into(), (vec![4], vec![0; 16]));
    })
    .unwrap();
}

#[test]
fn truncated_file_is_a_checkpoint_error() {
    let bytes = std::fs::read(common::gpt2_tiny().join("model.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    for cut in [4, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let config = GptConfig::from_file(common::gpt2_tiny().join("config.json")).unwrap();
        let mut model = Gpt2Model::<B>::new(&config, &Default::default());
        let err = load_gpt2_weights(&mut model, &path).unwrap_err();
        assert!(matches!(err, ModelError::Checkpoint { .. }), "cut at {cut}: {err:?}");
        assert!(err.to_string().contains("model.safetensors"), "{err}");
    }
}

#[test]
fn missing_files_are_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = BertModel::<B>::from_pretrained(dir.path(), false, &Default::default()).unwrap_err();
    assert!(
        matches!(err, ModelError::Io { .. }) && err.to_string().contains("config.json"),
        "{err}"
    );
}

#[test]
fn malformed_config_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"vocab_size": "many"}"#).unwrap();
    let err = BertConfig::from_file(dir.path().join("config.json")).unwrap_err();
    assert!(
        matches!(err, ModelError::Config { .. }) && err.to_string().contains("invalid type"),
        "{err}"
    );
}

#[test]
fn bert_without_pooler_in_checkpoint_but_requested_reports_pooler_missing() {
    // Write a MiniLM copy without its pooler, then ask for a pooler.
    let dir = tempfile::tempdir().unwrap();
    let src = common::minilm_dir();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("pooler."))
        .collect();
    safetensors::serialize_to_file(kept, None, &dir.path().join("model.safetensors")).unwrap();
    let err = BertModel::<B>::from_pretrained(dir.path(), true, &Default::default()).unwrap_err();
    match err {
        ModelError::Mismatch { mut missing, .. } => {
            missing.sort();
            assert_eq!(
                missing,
                vec!["pooler.dense.bias".to_string(), "pooler.dense.weight".to_string()]
            );
        }
        e => panic!("expected Mismatch, got {e:?}"),
    }
    // Without a pooler the same file loads.
    BertModel::<B>::from_pretrained(dir.path(), false, &Default::default()).unwrap();
}

/// Inputs a model cannot embed are typed errors before any gather (which would panic):
/// too long for the positions, ids outside the vocabulary or the token types, an empty batch.
#[test]
fn inputs_out_of_the_models_range_are_errors_naming_the_limit() {
    let config: BertConfig = serde_json::from_str(
        r#"{"vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 16, "max_position_embeddings": 12}"#,
    )
    .unwrap();
    let bert = BertModel::<B>::new(&config, false, &Default::default());
    bert.check_input(2, 12, &[1; 24], &[0; 24]).unwrap();
    let err = |r: Result<(), ModelError>| r.unwrap_err().to_string();
    assert_eq!(
        err(bert.check_input(1, 13, &[1; 13], &[0; 13])),
        "input sequence length = 13 is out of range: this model has 12 positions; truncate to max_length ≤ 12"
    );
    assert_eq!(
        err(bert.check_input(1, 3, &[1, 50, 2], &[0; 3])),
        "input token id = 50 is out of range: the vocabulary has ids 0..50"
    );
    assert!(err(bert.check_input(1, 3, &[1, -1, 2], &[0; 3])).contains("token id = -1"));
    assert_eq!(
        err(bert.check_input(1, 2, &[1, 2], &[0, 2])),
        "input token type id = 2 is out of range: the model has 2 token types"
    );
    assert!(err(bert.check_input(0, 4, &[], &[])).contains("at least one row"));
    let gpt: GptConfig =
        serde_json::from_str(r#"{"vocab_size": 30, "n_embd": 8, "n_layer": 1, "n_head": 2, "n_positions": 6}"#)
            .unwrap();
    let gpt = Gpt2Model::<B>::new(&gpt, &Default::default());
    gpt.check_input(1, 6, &[0; 6]).unwrap();
    assert!(err(gpt.check_input(1, 7, &[0; 7])).contains("sequence length = 7"));
    assert!(err(gpt.check_input(1, 2, &[0, 30])).contains("token id = 30"));
}
