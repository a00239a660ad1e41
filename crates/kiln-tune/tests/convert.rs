//! Swap-then-finetune: converting a model's attention keeps every other weight, adds only the
//! feature maps (which train under any strategy), and a wide sliding window changes nothing.

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::TensorData;
use kiln_attention::AttentionVariant;
use kiln_model::{BertConfig, BertModel};
use kiln_tune::classifier::SequenceClassifier;
use kiln_tune::params::param_infos;
use kiln_tune::strategy::{StrategyConfig, Tuning};

type A = Autodiff<Flex>;

/// burn's backend RNG is process-global: tests that seed it take turns.
static BACKEND_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn tiny(seed: u64) -> SequenceClassifier<A> {
    let device = Default::default();
    A::seed(&device, seed);
    let config: BertConfig = serde_json::from_str(
        r#"{"vocab_size": 100, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 32, "max_position_embeddings": 64, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0}"#,
    )
    .unwrap();
    SequenceClassifier::new_head(BertModel::new(&config, true, &device), &config, 2, &device)
}

fn logits(m: &SequenceClassifier<A>) -> Vec<f32> {
    let device = Default::default();
    let m = m.valid();
    let ids: Vec<i64> = (0..12).map(|i| (i * 37 % 97 + 1) as i64).collect();
    let ids = Tensor::<Flex, 2, Int>::from_data(TensorData::new(ids, [2, 6]), &device);
    m.forward(ids.clone(), ids.zeros_like(), ids.ones_like())
        .into_data()
        .to_vec()
        .unwrap()
}

#[test]
fn conversion_adds_only_feature_maps_and_they_train_under_any_strategy() {
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let base = tiny(1);
    let before: Vec<String> = param_infos(&base).into_iter().map(|p| p.path).collect();
    let mut converted = base.clone();
    converted
        .bert
        .convert_attention(&AttentionVariant::T2r { features: 8, eps: 1e-2 }, Some(&[1]), 0.0);
    let after = param_infos(&converted);
    let new: Vec<(String, usize)> = after
        .iter()
        .filter(|p| !before.contains(&p.path))
        .map(|p| (p.path.clone(), p.numel()))
        .collect();
    // Layer 1 only: W [heads, head_dim, k] and b [heads, k].
    assert_eq!(new.len(), 2, "{new:?}");
    assert!(
        new.iter()
            .all(|(p, _)| p.starts_with("bert.encoder.layer.1.") && p.contains("feature_map")),
        "{new:?}"
    );
    assert_eq!(new.iter().map(|(_, n)| n).sum::<usize>(), 2 * 8 * 8 + 2 * 8);
    assert_ne!(logits(&converted), logits(&base));
    let lora = Tuning::new(&[StrategyConfig::Lora {
        r: 2,
        alpha: 4.0,
        dropout: 0.0,
        targets: vec!["query".into()],
    }])
    .unwrap();
    for (path, _) in &new {
        assert!(lora.trains(path) && Tuning::new(&[StrategyConfig::BitFit]).unwrap().trains(path));
    }
}

#[test]
fn a_window_covering_the_sequence_is_the_original_model() {
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let base = tiny(2);
    let mut converted = base.clone();
    converted
        .bert
        .convert_attention(&AttentionVariant::SlidingWindow { window: 64 }, None, 0.0);
    let (a, b) = (logits(&base), logits(&converted));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    assert!(worst < 1e-5, "{worst}");
}

#[test]
fn converted_full_finetuning_resumes_bit_for_bit() {
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    use kiln_data::{Example, GlueTask, Label, TextInput, TextTokenizer};
    use kiln_model::hub::{locate_model, DEFAULT_MODEL_ID};
    use kiln_tune::trainer::{train, RunDir, StopAt, TaskData, TrainConfig};
    let (dir, _) = locate_model(DEFAULT_MODEL_ID, None).unwrap_or_else(|e| panic!("{e}"));
    let tok = TextTokenizer::from_file(dir.join("tokenizer.json"), 32).unwrap();
    let ex = |i: usize| Example {
        input: TextInput::Single(format!("film {} was {}", i, ["good", "bad"][i % 2])),
        label: Label::Class(i % 2),
    };
    let data = TaskData {
        task: GlueTask::Sst2,
        train: (0..24).map(ex).collect(),
        dev: (24..32).map(ex).collect(),
    };
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: 8,
        lr: 1e-3,
        eval_every: Some(1),
        attention: Some(AttentionVariant::T2r { features: 8, eps: 1e-2 }),
        ..TrainConfig::default()
    };
    let wide = || {
        let device = Default::default();
        A::seed(&device, 3);
        let config: BertConfig = serde_json::from_str(
            r#"{"vocab_size": 30522, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 32, "max_position_embeddings": 64}"#,
        )
        .unwrap();
        SequenceClassifier::<A>::new_head(BertModel::new(&config, true, &device), &config, 2, &device)
    };
    let device = Default::default();
    let a = tempfile::tempdir().unwrap();
    let (full, _) = train(
        wide(),
        &tok,
        &data,
        &cfg,
        &RunDir(a.path().into()),
        false,
        StopAt::default(),
        &device,
    )
    .unwrap();
    let b = tempfile::tempdir().unwrap();
    train(
        wide(),
        &tok,
        &data,
        &cfg,
        &RunDir(b.path().into()),
        false,
        StopAt { step: Some(2) },
        &device,
    )
    .unwrap();
    let (resumed, res) = train(
        wide(),
        &tok,
        &data,
        &cfg,
        &RunDir(b.path().into()),
        true,
        StopAt::default(),
        &device,
    )
    .unwrap();
    assert!(res.resumed);
    assert_eq!(logits_wide(&full), logits_wide(&resumed));
}

fn logits_wide(m: &SequenceClassifier<A>) -> Vec<f32> {
    let device = Default::default();
    let m = m.valid();
    let ids = Tensor::<Flex, 2, Int>::from_data(TensorData::new(vec![101i64, 2023, 2143, 102], [1, 4]), &device);
    m.forward(ids.clone(), ids.zeros_like(), ids.ones_like())
        .into_data()
        .to_vec()
        .unwrap()
}
