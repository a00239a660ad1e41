//! `import-peft`: a PEFT LoRA adapter (trained in Python, or exported by kiln) as a kiln run
//! directory, so that `lens analyse`, `report` and `export` work on it as on a run kiln
//! trained: `config.json` (the equivalent strategy, `epochs = 0`: kiln trained nothing, with
//! the base model's provenance), `data.json`, `trainable.json`, `checkpoints/best` and a
//! `results.json` with the adapter's dev metrics.

use std::path::PathBuf;

use anyhow::{bail, Result};
use kiln::backend::{BackendJob, DeviceKind};
use kiln::burn::module::AutodiffModule;
use kiln::burn::tensor::backend::AutodiffBackend;
use kiln::data::TextTokenizer;
use kiln::model::roles::ModelRoles;
use kiln::model::CheckpointDir;
use kiln::tune::classifier::SequenceClassifier;
use kiln::tune::run_dir::DataSource;
use kiln::tune::trainer::{evaluate, RunDir, TaskData, TrainConfig};

pub struct ImportPeftJob {
    /// The PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`).
    pub adapter: PathBuf,
    /// The base model directory.
    pub model: PathBuf,
    pub data: TaskData,
    pub source: DataSource,
    pub out: PathBuf,
}

impl BackendJob for ImportPeftJob {
    type Output = Result<kiln::format::run::Results>;

    fn run<B: AutodiffBackend>(self, device: B::Device, kind: DeviceKind) -> Self::Output {
        let started = std::time::Instant::now();
        let task = self.data.task;
        let (base, _) = SequenceClassifier::<B>::from_pretrained(&self.model, task.num_labels(), &device)?;
        let (model, tuning) = kiln::tune::export::import_peft_lora(base, &self.adapter, &device)?;
        let run = RunDir::new(&self.out).with_provenance(crate::experiment::provenance(
            &self.model,
            Some(self.source.clone()),
            kind,
        )?);
        std::fs::create_dir_all(&run.0)?;
        let _lock = run.lock()?;
        if let Some(found) = run.existing_run() {
            bail!(
                "{} already holds a run ({found}); import into a new directory",
                run.0.display()
            );
        }
        let train = TrainConfig {
            epochs: 0,
            tuning: tuning.components.clone(),
            ..TrainConfig::default()
        };
        kiln::tune::run_files::RunConfig::new(task.short_name(), train.clone(), run.provenance().cloned())
            .write(&run.0)?;
        self.source.write(&run.0)?;
        let report = kiln::tune::strategy::trainable_report(
            &tuning,
            &kiln::tune::params::param_infos(&model),
            &model.param_roles(),
        );
        report.write(&run.0)?;
        kiln::tune::checkpoint::write_weights(&run.best(), &model, &tuning)?;
        let tok = TextTokenizer::from_file(CheckpointDir::new(&self.model).tokenizer(), train.max_length)?;
        let metrics = evaluate(
            &model.valid(),
            &tok,
            task,
            &self.data.dev,
            train.eval_batch_size,
            &device,
        )?;
        let results = kiln::format::run::Results {
            task: task.short_name().into(),
            best: Some((metrics.primary_value(), 0)),
            final_metrics: metrics,
            steps: 0,
            wall_time_s: started.elapsed().as_secs_f64(),
            train_seq_per_s: 0.0,
            peak_rss_mb: None,
            resumed: false,
            strategy: report.strategy.clone(),
            trainable_params: report.trainable,
            total_params: report.total,
            attention: None,
        };
        results.write(&run.0)?;
        Ok(results)
    }
}
