//! `cargo xtask demo`: the main job on an embedded default. Fine-tunes all-MiniLM-L6-v2 on the
//! bundled sentiment fixture (`fixtures/sentiment`, compiled into the binary) for one epoch,
//! evaluates before and after, and writes a run directory; `--task T --data GLUE_DIR` does the
//! same on a real GLUE task.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln::backend::{BackendJob, DeviceKind};
use kiln::burn::module::AutodiffModule;
use kiln::burn::tensor::backend::AutodiffBackend;
use kiln::data::{GlueTask, OnMalformed, TextTokenizer};
use kiln::model::CheckpointDir;
use kiln::tune::classifier::SequenceClassifier;
use kiln::tune::run_dir::DataSource;
use kiln::tune::trainer::{evaluate, load_glue, train, RunDir, StopAt, TaskData, TrainConfig, TrainResults};

const FIXTURE_TRAIN: &str = include_str!("../../fixtures/sentiment/train.tsv");
const FIXTURE_DEV: &str = include_str!("../../fixtures/sentiment/dev.tsv");

/// The bundled sentiment fixture, parsed with the SST-2 loader.
pub fn fixture() -> Result<TaskData> {
    let task = GlueTask::Sst2;
    let parse = |text: &str, name: &str| {
        task.parse_tsv(text, Path::new(name), OnMalformed::Error)
            .map(|split| split.examples)
            .with_context(|| format!("bundled fixture {name}"))
    };
    Ok(TaskData {
        task,
        train: parse(FIXTURE_TRAIN, "fixtures/sentiment/train.tsv")?,
        dev: parse(FIXTURE_DEV, "fixtures/sentiment/dev.tsv")?,
    })
}

/// The data of a demo: the fixture, or `task` from a GLUE directory; and where it came from
/// (recorded in the run's `data.json`).
pub fn demo_data(task: Option<GlueTask>, data: Option<&Path>) -> Result<(TaskData, DataSource)> {
    match (task, data) {
        (None, None) => Ok((
            fixture()?,
            DataSource::Fixture {
                name: "sentiment".into(),
            },
        )),
        (Some(task), dir) => {
            let dir = match dir {
                Some(d) => d.to_path_buf(),
                None => kiln::model::hub::shared_dir()
                    .map(|s| s.join("data").join("glue"))
                    .context("--task needs --data GLUE_DIR (the directory holding SST-2/, CoLA/, ...)")?,
            };
            let data = load_glue(&dir, task)?;
            let source = DataSource::Glue {
                dir: std::path::absolute(&dir).unwrap_or(dir),
                task: task.short_name().into(),
            };
            Ok((data, source))
        }
        (None, Some(_)) => anyhow::bail!("--data needs --task (cola, sst2, mrpc, stsb, rte, ...)"),
    }
}

/// The demo recipe: MiniLM's usual fine-tuning settings; the tiny fixture gets small batches so
/// that one epoch still makes 30 optimizer steps.
pub fn demo_config(fixture: bool, epochs: Option<usize>, seed: u64) -> TrainConfig {
    let mut cfg = TrainConfig {
        seed,
        ..TrainConfig::default()
    };
    if fixture {
        cfg.batch_size = 8;
        cfg.lr = 1e-4;
        cfg.epochs = 1;
        cfg.log_every = 5;
    }
    if let Some(epochs) = epochs {
        cfg.epochs = epochs;
    }
    cfg
}

pub struct DemoJob {
    pub model: PathBuf,
    pub data: TaskData,
    pub train: TrainConfig,
    pub out: PathBuf,
    /// Where `data` came from (recorded in the run's provenance).
    pub source: DataSource,
}

/// Dev metrics before training (fresh head) and the run's results.
pub struct DemoOutcome {
    pub before: kiln::data::metrics::TaskMetrics,
    pub results: TrainResults,
}

impl BackendJob for DemoJob {
    type Output = Result<DemoOutcome>;

    fn run<B: AutodiffBackend>(self, device: B::Device, kind: DeviceKind) -> Self::Output {
        B::seed(&device, self.train.seed);
        let task = self.data.task;
        let (model, _) = SequenceClassifier::<B>::from_pretrained(&self.model, task.num_labels(), &device)?;
        let tok = TextTokenizer::from_file(CheckpointDir::new(&self.model).tokenizer(), self.train.max_length)?;
        tracing::info!(task = task.short_name(), train = self.data.train.len(), dev = self.data.dev.len(), device = %kind, "demo: fine-tuning all-MiniLM-L6-v2");
        let before = evaluate(
            &model.valid(),
            &tok,
            task,
            &self.data.dev,
            self.train.eval_batch_size,
            &device,
        )?;
        let (_, results) = train(
            model,
            &tok,
            &self.data,
            &self.train,
            &RunDir::new(self.out.clone()).with_provenance(crate::experiment::provenance(
                &self.model,
                Some(self.source),
                kind,
            )?),
            // The demo's directory is its own: a second demo replaces the first.
            kiln::tune::run_dir::OnExisting::Overwrite,
            StopAt::default(),
            &device,
        )?;
        Ok(DemoOutcome { before, results })
    }
}

/// Before/after table.
pub fn print_outcome(out: &Path, outcome: &DemoOutcome, what: &str) {
    println!("\nFine-tuned all-MiniLM-L6-v2 on {what}.");
    println!("  {:<10} {:>8} {:>8}", "dev", "before", "after");
    for (k, after) in &outcome.results.final_metrics.values {
        let before = outcome.before.values.get(k).copied().unwrap_or(f64::NAN);
        println!("  {k:<10} {before:>8.4} {after:>8.4}");
    }
    crate::experiment::report(out, &outcome.results);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln::data::{Label, TextInput};

    #[test]
    fn fixture_is_balanced_and_dev_is_unseen() {
        let data = fixture().unwrap();
        assert_eq!((data.train.len(), data.dev.len()), (238, 60));
        let positives = |xs: &[kiln::data::Example]| xs.iter().filter(|e| e.label == Label::Class(1)).count();
        assert_eq!((positives(&data.train), positives(&data.dev)), (119, 30));
        let text = |e: &kiln::data::Example| match &e.input {
            TextInput::Single(s) => s.clone(),
            TextInput::Pair(a, b) => format!("{a} {b}"),
        };
        let train: std::collections::HashSet<String> = data.train.iter().map(text).collect();
        assert!(data.dev.iter().all(|e| !train.contains(&text(e))));
    }
}
