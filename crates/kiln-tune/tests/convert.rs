//! Swap-then-finetune: converting a model's attention keeps every other weight, adds only the
//! feature maps (which train under any strategy), and a wide sliding window changes nothing.

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::TensorData;
use kiln_attention::AttentionVariant;
use kiln_model::roles::ModelRoles;
use kiln_model::{BertConfig, BertModel};
use kiln_tune::classifier::SequenceClassifier;
use kiln_tune::params::param_infos;
use kiln_tune::strategy::{BitFit, Lora};
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
    let _rng = kiln_testkit::rng_lock();
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let base = tiny(1);
    let before: Vec<String> = param_infos(&base).into_iter().map(|p| p.path).collect();
    let mut converted = base.clone();
    converted
        .bert
        .convert_attention(&AttentionVariant::T2r { features: 8, eps: 1e-2 }, Some(&[1]), 0.0);
    let after = param_infos(&converted);
    let roles = converted.param_roles();
    let new_ids: Vec<_> = after
        .iter()
        .filter(|p| !before.contains(&p.path))
        .map(|p| p.id)
        .collect();
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
    let lora = Tuning::new(&[StrategyConfig::Lora(Lora {
        r: 2,
        alpha: 4.0,
        dropout: 0.0,
        targets: vec!["query".into()],
    })])
    .unwrap();
    let bitfit = Tuning::new(&[StrategyConfig::BitFit(BitFit {})]).unwrap();
    for id in new_ids {
        let role = roles.get(id).expect("a feature map has a role");
        assert_eq!(role.part, kiln_model::roles::Part::Mechanism { fixed: false });
        assert!(lora.trains(role) && bitfit.trains(role));
    }
}

#[test]
fn a_window_covering_the_sequence_is_the_original_model() {
    let _rng = kiln_testkit::rng_lock();
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
    let _rng = kiln_testkit::rng_lock();
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    use kiln_data::{Example, GlueTask, Label, TextInput, TextTokenizer};
    use kiln_model::hub::{locate_or_fetch, DEFAULT_MODEL_ID};
    use kiln_tune::trainer::{train, RunDir, StopAt, TaskData, TrainConfig};
    let dir = locate_or_fetch(DEFAULT_MODEL_ID, None, true).unwrap_or_else(|e| panic!("{e}"));
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
        &RunDir::new(a.path()),
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
        &RunDir::new(b.path()),
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
        &RunDir::new(b.path()),
        true,
        StopAt::default(),
        &device,
    )
    .unwrap();
    assert!(res.resumed);
    assert_eq!(logits_wide(&full), logits_wide(&resumed));
    // What `lens analyse` and `export` load: the run's config converts a fresh base the same
    // way before the checkpoint goes in, so the restored model is the trained one (loading
    // it into an unconverted softmax model used to fail or analyse the wrong mechanism).
    let config = kiln_tune::run_files::RunConfig::read(a.path()).unwrap();
    assert_eq!(config.format, kiln_tune::run_files::FORMAT_VERSION);
    let (restored, tuning) =
        kiln_tune::run_files::Restore::restore(&config, wide(), a.path(), "last", &device).unwrap();
    assert_eq!(tuning.name(), "full");
    assert_eq!(logits_wide(&full), logits_wide(&restored));
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

#[test]
fn attention_transfer_moves_only_feature_maps_and_lowers_the_loss() {
    let _rng = kiln_testkit::rng_lock();
    use kiln_tune::transfer::{attention_transfer, teacher_of, TransferBatch, TransferConfig, TransferLoss};
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    // A teacher with peaked attention (random BERT initialisation attends almost uniformly,
    // which any feature map already imitates): scale the query and key projections up.
    let mut base = tiny(4);
    for layer in &mut base.bert.encoder.layer {
        let sa = &mut layer.attention.self_attention;
        sa.query.weight = burn::module::Param::from_tensor(sa.query.weight.val().mul_scalar(15.0).detach());
        sa.key.weight = burn::module::Param::from_tensor(sa.key.weight.val().mul_scalar(15.0).detach());
    }
    let teacher = teacher_of(&base);
    let batches: Vec<TransferBatch> = (0..4)
        .map(|b| {
            let ids: Vec<i64> = (0..4 * 10).map(|i| ((i * 31 + b * 7) % 97 + 1) as i64).collect();
            let mask: Vec<i64> = (0..40).map(|i| i64::from(i % 10 < 8 || i < 10)).collect();
            TransferBatch {
                types: vec![0; 40],
                ids,
                mask,
                shape: [4, 10],
            }
        })
        .collect();
    for loss in [TransferLoss::CrossEntropy, TransferLoss::OutputMse] {
        let mut student = base.clone();
        A::seed(&device, 5);
        student
            .bert
            .convert_attention(&AttentionVariant::Hedgehog { features: 8 }, None, 0.0);
        let before = param_infos(&student);
        let snapshot = |m: &SequenceClassifier<A>| -> Vec<(String, Vec<f32>)> {
            let mut v = Vec::new();
            let bytes = kiln_tune::strategy::tuned_bytes(m, &Tuning::new(&[]).unwrap());
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            for (n, t) in st.tensors() {
                v.push((
                    n,
                    t.data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                        .collect(),
                ));
            }
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let s0 = snapshot(&student);
        let cfg = TransferConfig {
            steps: 150,
            lr: 1e-1,
            batch_size: 4,
            loss,
        };
        let (trained, losses) = attention_transfer(student, &teacher, &batches, &cfg, &device);
        let s1 = snapshot(&trained);
        for ((name, a), (_, b)) in s0.iter().zip(&s1) {
            assert_eq!(a != b, name.contains("feature_map"), "{loss:?}: {name}");
        }
        // The cross-entropy's floor is the teacher's own row entropy (per batch): compare the
        // excess over it (the KL divergence) at the start and at the end.
        let floor: Vec<f64> = batches
            .iter()
            .map(|b| match loss {
                TransferLoss::CrossEntropy => teacher_entropy(&teacher, b),
                TransferLoss::OutputMse => 0.0,
            })
            .collect();
        let excess = |range: std::ops::Range<usize>| -> f64 {
            range.clone().map(|s| losses[s] - floor[s % batches.len()]).sum::<f64>() / range.len() as f64
        };
        let (first, last) = (excess(0..4), excess(losses.len() - 4..losses.len()));
        assert!(
            first > 0.0 && last < 0.5 * first,
            "{loss:?}: excess loss {first} → {last}"
        );
        assert_eq!(before.len(), param_infos(&trained).len());
    }
}

/// Mean entropy of the teacher's attention rows at real query tokens (over heads and layers).
fn teacher_entropy(teacher: &BertModel<Flex>, b: &kiln_tune::transfer::TransferBatch) -> f64 {
    let device = Default::default();
    let t = |v: &Vec<i64>| Tensor::<Flex, 2, Int>::from_data(TensorData::new(v.clone(), b.shape), &device);
    let capture = kiln_model::Capture {
        attention_probs: true,
        ..kiln_model::Capture::none()
    };
    let out = teacher.forward(t(&b.ids), Some(t(&b.types)), Some(t(&b.mask)), capture);
    let [n_b, n] = b.shape;
    let mut total = 0.0;
    for layer in &out.layers {
        let p: Vec<f32> = layer.attention_probs.clone().unwrap().into_data().to_vec().unwrap();
        let heads = p.len() / (n_b * n * n);
        let mut sum = 0.0;
        let mut rows = 0.0;
        for bi in 0..n_b {
            for h in 0..heads {
                for i in 0..n {
                    if b.mask[bi * n + i] == 0 {
                        continue;
                    }
                    let row = &p[((bi * heads + h) * n + i) * n..][..n];
                    sum += row
                        .iter()
                        .filter(|&&x| x > 0.0)
                        .map(|&x| -(x as f64) * (x as f64).ln())
                        .sum::<f64>();
                    rows += 1.0;
                }
            }
        }
        total += sum / rows;
    }
    total / out.layers.len() as f64
}
