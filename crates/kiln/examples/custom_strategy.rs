//! A downstream program on kiln's public API: its own tuning strategy and its own metric,
//! fine-tuning all-MiniLM-L6-v2 on the bundled sentiment fixture, then a report.
//!
//! ```sh
//! cargo run --release -p kiln --example custom_strategy [-- OUT_DIR]
//! ```
//!
//! The strategy ("top layers and biases") trains every bias plus all of the two top encoder
//! layers; the metric is balanced accuracy (the mean of the per-class recalls), computed from
//! the model's predictions on the dev set. An early-stopping callback and a closure that logs
//! every evaluation ride along. The model is found or fetched like `cargo xtask demo`'s.

use std::sync::Arc;

use kiln::burn::backend::{Autodiff, Flex};
use kiln::burn::module::AutodiffModule;
use kiln::burn::prelude::*;
use kiln::burn::tensor::TensorData;
use kiln::data::{GlueTask, Label, OnMalformed, TextInput, TextTokenizer};
use kiln::model::hub::{locate_or_fetch, DEFAULT_MODEL_ID};
use kiln::model::roles::{ParamRole, Site, TensorKind};
use kiln::model::CheckpointDir;
use kiln::tune::callbacks::{Control, EarlyStopping, TrainEvent};
use kiln::tune::classifier::SequenceClassifier;
use kiln::tune::strategy::{Effect, Strategy};
use kiln::tune::trainer::{RunDir, TaskData, TrainConfig, Trainer};

type B = Autodiff<Flex>;

/// Every bias, and every parameter of the top `layers` encoder layers (of `num_layers`).
#[derive(Debug)]
struct TopLayersAndBiases {
    layers: usize,
    num_layers: usize,
}

impl Strategy for TopLayersAndBiases {
    fn name(&self) -> &'static str {
        "top_layers_and_biases"
    }
    fn effect(&self) -> Effect {
        Effect::Selects
    }
    fn selects(&self, role: &ParamRole) -> bool {
        role.tensor == TensorKind::Bias || matches!(role.site, Site::Layer(i) if i + self.layers >= self.num_layers)
    }
}

/// Mean recall over the classes present in `gold`.
fn balanced_accuracy(pred: &[usize], gold: &[usize]) -> f64 {
    let classes: std::collections::BTreeSet<usize> = gold.iter().copied().collect();
    let recall = |c: usize| {
        let of_c: Vec<_> = gold.iter().zip(pred).filter(|(g, _)| **g == c).collect();
        of_c.iter().filter(|(g, p)| g == p).count() as f64 / of_c.len() as f64
    };
    classes.iter().map(|&c| recall(c)).sum::<f64>() / classes.len() as f64
}

/// The classifier's predicted class for each example.
fn predict(model: &SequenceClassifier<Flex>, tok: &TextTokenizer, inputs: &[TextInput]) -> Vec<usize> {
    let device = Default::default();
    let enc = tok.encode_batch(inputs).expect("tokenizes");
    let tensor =
        |v: &[i64]| Tensor::<Flex, 2, Int>::from_data(TensorData::new(v.to_vec(), [enc.batch, enc.seq]), &device);
    let logits = model.forward(
        tensor(&enc.input_ids),
        tensor(&enc.token_type_ids),
        tensor(&enc.attention_mask),
    );
    let classes: Vec<i64> = logits.argmax(1).into_data().convert::<i64>().to_vec().expect("ints");
    classes.into_iter().map(|c| c as usize).collect()
}

fn fixture() -> Result<TaskData, Box<dyn std::error::Error>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/sentiment");
    let load = |f: &str| GlueTask::Sst2.load(dir.join(f), OnMalformed::Error).map(|s| s.examples);
    Ok(TaskData {
        task: GlueTask::Sst2,
        train: load("train.tsv")?,
        dev: load("dev.tsv")?,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "runs/custom-strategy".into());
    let model_dir = locate_or_fetch(DEFAULT_MODEL_ID, None, true)?;
    let data = fixture()?;
    let device = Default::default();
    B::seed(&device, 42);
    let (model, config) = SequenceClassifier::<B>::from_pretrained(&model_dir, 2, &device)?;
    let cfg = TrainConfig {
        epochs: 2,
        batch_size: 16,
        lr: 2e-4,
        max_length: 64,
        eval_every: Some(8),
        ..TrainConfig::default()
    };
    let tok = TextTokenizer::from_file(CheckpointDir::new(&model_dir).tokenizer(), cfg.max_length)?;
    let inputs: Vec<TextInput> = data.dev.iter().map(|e| e.input.clone()).collect();
    let gold: Vec<usize> = data
        .dev
        .iter()
        .map(|e| match e.label {
            Label::Class(c) => c,
            Label::Score(_) => unreachable!("SST-2 is a classification task"),
        })
        .collect();
    let before = balanced_accuracy(&predict(&model.valid(), &tok, &inputs), &gold);

    let strategy = TopLayersAndBiases {
        layers: 2,
        num_layers: config.num_hidden_layers,
    };
    let run = RunDir::new(&out);
    let (model, results) = Trainer::new(&cfg, &run)
        .on_existing(kiln::tune::run_dir::OnExisting::Overwrite)
        .strategy(Arc::new(strategy))
        .callback(EarlyStopping::new(3))
        .callback(|e: &TrainEvent<'_>| {
            if let TrainEvent::Eval { step, metrics } = e {
                println!("step {step}: {} = {:.4}", metrics.primary, metrics.primary_value());
            }
            Control::Continue
        })
        .train(model, &tok, &data, &device)?;
    let after = balanced_accuracy(&predict(&model.valid(), &tok, &inputs), &gold);
    println!(
        "{}: {} of {} parameters trained, {} steps; dev balanced accuracy {before:.3} → {after:.3}",
        results.strategy, results.trainable_params, results.total_params, results.steps
    );
    let report = kiln::viz::write_report(run.0.as_path(), None)?;
    println!("Report: {}", report.display());
    if after <= before {
        return Err(format!("balanced accuracy did not improve ({before:.3} → {after:.3})").into());
    }
    Ok(())
}
