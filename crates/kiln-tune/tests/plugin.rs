//! A strategy defined only in this file (the extension point of docs/extending.md): it
//! composes under the same rules as the built-in ones and trains exactly what it selects.

mod common;

use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorData;
use kiln_model::roles::{LinearSlot, ModelRoles, ParamRole, Part, TensorKind};
use kiln_model::{BertConfig, BertModel};
use kiln_tune::classifier::{SequenceClassifier, Targets};
use kiln_tune::optim::{AdamW, AdamWConfig, ParamGroup};
use kiln_tune::params::param_infos;
use kiln_tune::strategy::{
    trainable_report, Effect, InsertSpec, ModelShape, Pfeiffer, Strategy, StrategyConfig, StrategyError, Tuning,
};

type A = Autodiff<Flex>;
const H: usize = 16;
const L: usize = 2;

/// Trains the query weights (not their biases) and an FFN adapter of width `H / 4`.
#[derive(Debug)]
struct QueriesAndAdapter;

impl Strategy for QueriesAndAdapter {
    fn name(&self) -> &'static str {
        "queries_and_adapter"
    }
    fn effect(&self) -> Effect {
        Effect::Selects
    }
    fn check_fits(&self, model: &ModelShape) -> Result<(), StrategyError> {
        if model.hidden.is_multiple_of(4) {
            Ok(())
        } else {
            Err(StrategyError::Invalid {
                strategy: "queries_and_adapter",
                message: format!("hidden size {} is not a multiple of 4", model.hidden),
            })
        }
    }
    fn inserts(&self) -> Result<Vec<InsertSpec>, StrategyError> {
        Ok(vec![InsertSpec::Adapters {
            after_attention: false,
            reduction: 4,
        }])
    }
    fn selects(&self, role: &ParamRole) -> bool {
        (role.part == Part::Linear(LinearSlot::Query) && role.tensor == TensorKind::Weight) || role.insert().is_some()
    }
}

fn tiny() -> SequenceClassifier<A> {
    let device = Default::default();
    A::seed(&device, 7);
    let config: BertConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 100, "hidden_size": H, "num_hidden_layers": L, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 32, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0
    }))
    .unwrap();
    SequenceClassifier::new_head(BertModel::new(&config, true, &device), &config, 2, &device)
}

#[test]
fn a_strategy_defined_in_a_test_trains_exactly_what_it_selects() {
    let _rng = kiln_testkit::rng_lock();
    let device = Default::default();
    let tuning = Tuning::new(&[]).unwrap().with(Arc::new(QueriesAndAdapter)).unwrap();
    assert_eq!(tuning.name(), "queries_and_adapter");
    assert!(tuning.restricts());
    let model = tuning.insert(tiny(), &device).unwrap();
    let before = common::snapshot(&model);
    let roles = model.param_roles();
    let infos = param_infos(&model);
    let report = trainable_report(&tuning, &infos, &roles);
    // Per layer: the query weight H×H and the adapter (down H×H/4 + H/4, up H/4×H + H); the
    // head H×2 + 2 always trains.
    let adapter = H * (H / 4) + H / 4 + (H / 4) * H + H;
    assert_eq!(report.trainable, L * (H * H + adapter) + H * 2 + 2, "{report:?}");

    let mut model = tuning.freeze(model);
    let mut opt = AdamW::new(AdamWConfig::default(), &infos, |info| ParamGroup {
        trainable: roles.get(info.id).is_some_and(|r| tuning.trains(r)),
        ..ParamGroup::hf_default(info)
    });
    let ids: Vec<i64> = (0..12).map(|i| (i * 37 % 90 + 5) as i64).collect();
    let ids = Tensor::<A, 2, Int>::from_data(TensorData::new(ids, [2, 6]), &device);
    let targets = Targets::Classes(Tensor::from_data(TensorData::new(vec![0i64, 1], [2]), &device));
    for _ in 0..2 {
        let logits = model.forward(
            ids.clone(),
            Tensor::zeros([2, 6], &device),
            Tensor::ones([2, 6], &device),
        );
        let grads = GradientsParams::from_grads(model.loss(logits, &targets).backward(), &model);
        model = opt.step(model, grads, 1e-2).0;
    }
    let after = common::snapshot(&model);
    let selected: Vec<String> = infos
        .iter()
        .filter(|p| roles.get(p.id).is_some_and(|r| tuning.trains(r)))
        .map(|p| p.path.clone())
        .collect();
    for (path, b) in &before {
        let changed = after[path] != *b;
        assert_eq!(changed, selected.contains(path), "{path}: changed {changed}");
    }
    // What it selected, by path (this crate's own check of the roles it used).
    assert!(selected.iter().any(|p| p.ends_with("self_attention.query.weight")));
    assert!(!selected
        .iter()
        .any(|p| p.ends_with("self_attention.query.bias") || p.contains(".key.")));
}

#[test]
fn a_plugin_strategy_obeys_the_composition_rules() {
    let _rng = kiln_testkit::rng_lock();
    // Both insert an adapter after the FFN output.
    let clash = Tuning::new(&[StrategyConfig::Pfeiffer(Pfeiffer { reduction: 4 })])
        .unwrap()
        .with(Arc::new(QueriesAndAdapter))
        .unwrap_err();
    assert!(
        clash
            .to_string()
            .contains("pfeiffer and queries_and_adapter cannot be combined"),
        "{clash}"
    );
    // A component twice.
    let twice = Tuning::new(&[])
        .unwrap()
        .with(Arc::new(QueriesAndAdapter))
        .unwrap()
        .with(Arc::new(QueriesAndAdapter))
        .unwrap_err();
    assert!(twice.to_string().contains("appears twice"), "{twice}");
    // Its own check against the model runs before anything is inserted.
    let device = Default::default();
    let config: BertConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 100, "hidden_size": 18, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 32
    }))
    .unwrap();
    let odd = SequenceClassifier::<A>::new_head(BertModel::new(&config, true, &device), &config, 2, &device);
    let tuning = Tuning::new(&[]).unwrap().with(Arc::new(QueriesAndAdapter)).unwrap();
    let e = tuning.insert(odd, &device).unwrap_err();
    assert!(e.to_string().contains("hidden size 18 is not a multiple of 4"), "{e}");
}
