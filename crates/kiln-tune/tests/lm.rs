//! Causal LM training of the decoder: the loss equals a host-side cross-entropy, perplexity
//! of a uniform model is the vocabulary size, training learns a periodic stream, frozen
//! parameters stay bit-identical, attention transfer lowers its loss, bad input is an error.

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Param};
use burn::prelude::*;
use burn::tensor::TensorData;
use kiln_attention::AttentionVariant;
use kiln_model::roles::ParamRole;
use kiln_model::{Capture, Gpt2Model, GptConfig};
use kiln_tune::lm::{next_token_loss, perplexity, train_lm, LmError, LmTrainConfig};
use kiln_tune::params::param_infos;
use kiln_tune::strategy::{Effect, Strategy, Tuning};
use kiln_tune::transfer::{decoder_attention_transfer, TransferConfig, TransferLoss};

type B = Autodiff<Flex>;
type I = Flex;

fn config() -> GptConfig {
    serde_json::from_str(
        r#"{"vocab_size": 12, "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 4,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}"#,
    )
    .unwrap()
}

fn model<BB: Backend>(seed: u64) -> Gpt2Model<BB> {
    let device = Default::default();
    BB::seed(&device, seed);
    Gpt2Model::new(&config(), &device)
}

/// A test-only strategy: trains every parameter `keep` selects.
#[derive(Debug)]
struct Select(fn(&ParamRole) -> bool);

impl Strategy for Select {
    fn name(&self) -> &'static str {
        "select"
    }
    fn effect(&self) -> Effect {
        Effect::Selects
    }
    fn selects(&self, role: &ParamRole) -> bool {
        (self.0)(role)
    }
}

fn selecting(keep: fn(&ParamRole) -> bool) -> Tuning {
    Tuning::new(&[])
        .unwrap()
        .with(std::sync::Arc::new(Select(keep)))
        .unwrap()
}

fn full() -> Tuning {
    Tuning::new(&[]).unwrap()
}

fn stream(n: usize) -> Vec<u32> {
    // Period 7 over 10 symbols: learnable exactly after 7 tokens of context.
    (0..n).map(|i| [3, 1, 4, 1, 5, 9, 2][i % 7]).collect()
}

#[test]
fn next_token_loss_equals_a_host_cross_entropy() {
    let _rng = kiln_testkit::rng_lock();
    let m = model::<I>(1);
    let ids: Vec<i64> = vec![1, 5, 3, 7, 2, 2, 9, 0, 4, 4, 11, 6];
    let windows = Tensor::<I, 2, Int>::from_data(TensorData::new(ids.clone(), [2, 6]), &Default::default());
    let loss = next_token_loss(&m, windows.clone()).into_scalar().elem::<f64>();
    let inputs = windows.slice([0..2, 0..5]);
    let logits = m.lm_logits(m.forward(inputs, None, Capture::none()).last_hidden_state);
    let logits = logits.into_data().to_vec::<f32>().unwrap();
    let mut total = 0.0;
    for b in 0..2 {
        for t in 0..5 {
            let row: Vec<f64> = logits[(b * 5 + t) * 12..(b * 5 + t + 1) * 12]
                .iter()
                .map(|&x| f64::from(x))
                .collect();
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            total += lse - row[ids[b * 6 + t + 1] as usize];
        }
    }
    let host = total / 10.0;
    assert!((loss - host).abs() < 1e-5, "{loss} vs {host}");
}

#[test]
fn a_model_with_uniform_logits_has_perplexity_equal_to_the_vocabulary() {
    let _rng = kiln_testkit::rng_lock();
    let mut m = model::<I>(2);
    let zeros = Tensor::<I, 2>::zeros(m.wte.weight.dims(), &Default::default());
    m.wte.weight = Param::from_tensor(zeros);
    let ppl = perplexity(&m, &stream(200), 16, 4, &Default::default());
    // 199 tokens after the first, 12 windows of 16 (the short tail is dropped).
    assert_eq!(ppl.tokens, 12 * 16);
    assert!((ppl.perplexity - 12.0).abs() < 1e-4, "{ppl:?}");
}

#[test]
fn training_learns_a_periodic_stream_and_leaves_frozen_weights_alone() {
    let _rng = kiln_testkit::rng_lock();
    let data = stream(2000);
    let (train, held_out) = data.split_at(1800);
    let m = model::<B>(3);
    let before: Vec<(String, Vec<f32>)> = weights(&m.valid());
    let cfg = LmTrainConfig {
        steps: 100,
        batch_size: 8,
        block_len: 16,
        lr: 5e-3,
        warmup_steps: 5,
        eval_every: 50,
        eval_tokens: 64,
        ..LmTrainConfig::default()
    };
    // Freeze the first block entirely.
    let trains = |r: &ParamRole| r.layer() != Some(0);
    let mut logged = 0;
    let (m, history) = train_lm(
        m,
        train,
        held_out,
        &cfg,
        &selecting(trains),
        |_| logged += 1,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(logged, 100);
    let last = history.evals.last().unwrap().1;
    assert!(history.steps[0].loss > 2.0, "{:?}", history.steps[0]);
    assert!(last.perplexity < 1.5, "held-out perplexity {last:?}");
    assert_eq!(history.evals.len(), 2);
    let after = weights(&m.valid());
    for ((path, a), (_, b)) in before.iter().zip(&after) {
        if path.starts_with("h.0.") {
            assert_eq!(a, b, "{path} is frozen but changed");
        } else if path.ends_with("weight") && !path.starts_with("wpe") {
            assert_ne!(a, b, "{path} trains but did not change");
        }
    }
    let roles = kiln_model::roles::ModelRoles::param_roles(&m);
    let expected: usize = param_infos(&m)
        .iter()
        .filter(|i| trains(roles.get(i.id).unwrap()))
        .map(|i| i.numel())
        .sum();
    assert_eq!(history.trainable, expected);
}

struct Scale(f32);

impl burn::module::ModuleMapper<B> for Scale {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.mul_scalar(self.0), mapper)
    }
}

fn weights(m: &Gpt2Model<I>) -> Vec<(String, Vec<f32>)> {
    let infos = param_infos(m);
    let mut values = Vec::new();
    struct Grab<'a>(&'a mut Vec<Vec<f32>>);
    impl burn::module::ModuleVisitor<I> for Grab<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<I, D>>) {
            self.0.push(p.val().into_data().to_vec::<f32>().unwrap());
        }
    }
    m.visit(&mut Grab(&mut values));
    infos.into_iter().map(|i| i.path).zip(values).collect()
}

#[test]
fn bad_settings_are_typed_errors() {
    let _rng = kiln_testkit::rng_lock();
    let cfg = LmTrainConfig {
        steps: 1,
        block_len: 16,
        ..LmTrainConfig::default()
    };
    let device = Default::default();
    let short = train_lm(model::<B>(4), &stream(10), &stream(40), &cfg, &full(), |_| {}, &device);
    assert!(matches!(short, Err(LmError::TooShort { tokens: 10, window: 17 })));
    let none = train_lm(
        model::<B>(4),
        &stream(100),
        &stream(40),
        &cfg,
        &selecting(|_| false),
        |_| {},
        &device,
    );
    assert!(matches!(none, Err(LmError::NothingTrains)));
    let long = LmTrainConfig { block_len: 64, ..cfg };
    let too_long = train_lm(
        model::<B>(4),
        &stream(100),
        &stream(40),
        &long,
        &full(),
        |_| {},
        &device,
    );
    assert!(matches!(
        too_long,
        Err(LmError::BlockTooLong { block_len: 64, max: 32 })
    ));
}

#[test]
fn decoder_attention_transfer_lowers_its_loss_and_trains_only_feature_maps() {
    let _rng = kiln_testkit::rng_lock();
    let device = Default::default();
    // Scaled so that the teacher's attention is far from uniform (GPT-2's init is not).
    let teacher_model = model::<B>(5).map(&mut Scale(6.0));
    let teacher = teacher_model.valid();
    let mut student = teacher_model;
    student.convert_attention(&AttentionVariant::Hedgehog { features: 8 }, None, 0.0);
    let before = weights(&student.valid());
    let data = stream(500);
    let cfg = TransferConfig {
        steps: 40,
        lr: 1e-2,
        batch_size: 4,
        loss: TransferLoss::CrossEntropy,
    };
    let (student, losses) = decoder_attention_transfer(student, &teacher, &cfg, |step| {
        let ids: Vec<i64> = kiln_data::lm::random_windows(&data, 16, 4, step as u64)
            .into_iter()
            .map(i64::from)
            .collect();
        Tensor::from_data(TensorData::new(ids, [4, 16]), &device)
    });
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[35..].iter().sum::<f64>() / 5.0;
    assert!(last < 0.9 * first, "transfer loss {first} → {last}");
    for ((path, a), (_, b)) in before.iter().zip(&weights(&student.valid())) {
        assert_eq!(path.contains("feature_map"), a != b, "{path}");
    }
}

#[test]
fn performer_projection_never_trains() {
    let _rng = kiln_testkit::rng_lock();
    let mut m = model::<B>(6);
    m.convert_attention(&AttentionVariant::Performer { features: 16, seed: 1 }, None, 0.0);
    let before = weights(&m.valid());
    let cfg = LmTrainConfig {
        steps: 3,
        batch_size: 2,
        block_len: 8,
        eval_every: 0,
        ..LmTrainConfig::default()
    };
    let (m, history) = train_lm(m, &stream(200), &stream(40), &cfg, &full(), |_| {}, &Default::default()).unwrap();
    let after = weights(&m.valid());
    let mut projections = 0;
    for ((path, a), (_, b)) in before.iter().zip(&after) {
        if path.ends_with("feature_map.projection") {
            projections += 1;
            assert_eq!(a, b, "{path} trained");
        }
    }
    assert_eq!(projections, 2);
    let fixed: usize = param_infos(&m)
        .iter()
        .filter(|i| i.path.ends_with("feature_map.projection"))
        .map(|i| i.numel())
        .sum();
    let total: usize = param_infos(&m).iter().map(|i| i.numel()).sum();
    assert_eq!(history.trainable, total - fixed);
}
