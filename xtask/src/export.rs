//! `cargo xtask export`: a finished run's best checkpoint as a PEFT LoRA adapter or as a
//! Hugging Face model directory.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kiln::backend::{BackendJob, DeviceKind};
use kiln::burn::tensor::backend::AutodiffBackend;
use kiln::data::GlueTask;
use kiln::model::CheckpointDir;
use kiln::tune::checkpoint::{load_model, MODEL_FILE, TUNED_FILE};
use kiln::tune::classifier::SequenceClassifier;
use kiln::tune::export::{export_hf_model, export_peft_lora};
use kiln::tune::strategy::{load_tuned, read_tuning};

/// Output layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// `adapter_config.json` + `adapter_model.safetensors` (LoRA runs).
    Peft,
    /// `config.json` + `model.safetensors` + tokenizer files (LoRA merged).
    Hf,
}

/// A run's `config.json` and its task.
pub fn run_config(run: &std::path::Path) -> Result<(serde_json::Value, GlueTask)> {
    let config_path = run.join("config.json");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&config_path).with_context(|| config_path.display().to_string())?,
    )
    .with_context(|| config_path.display().to_string())?;
    let task = GlueTask::parse(config["task"].as_str().context("config.json has no task")?)?;
    Ok((config, task))
}

/// A checkpoint (`best`, `last`) of a run: the classifier (strategy inserts included), its
/// tuning and the task, from `RUN/config.json` and `RUN/checkpoints/<checkpoint>`.
pub fn load_run<B: kiln::burn::prelude::Backend>(
    model_dir: &std::path::Path,
    run: &std::path::Path,
    checkpoint: &str,
    device: &B::Device,
) -> Result<(SequenceClassifier<B>, kiln::tune::strategy::Tuning, GlueTask)> {
    let (_, task) = run_config(run)?;
    let best = run.join("checkpoints").join(checkpoint);
    let (base, _) = SequenceClassifier::<B>::from_pretrained(model_dir, task.num_labels(), device)?;
    let (model, tuning) = if best.join(TUNED_FILE).exists() {
        let tuning = read_tuning(&best.join(TUNED_FILE))?;
        let model = tuning.insert(base, device)?;
        (load_tuned(model, &tuning, &best.join(TUNED_FILE))?, tuning)
    } else if best.join(MODEL_FILE).exists() {
        let mut model = base;
        load_model(&mut model, &best.join(MODEL_FILE))?;
        (model, kiln::tune::strategy::Tuning::new(&[])?)
    } else {
        bail!("{} has neither {TUNED_FILE} nor {MODEL_FILE}", best.display());
    };
    Ok((model, tuning, task))
}

pub struct ExportJob {
    pub model: PathBuf,
    pub run: PathBuf,
    pub format: ExportFormat,
    pub out: PathBuf,
}

impl BackendJob for ExportJob {
    type Output = Result<()>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _kind: DeviceKind) -> Self::Output {
        let (model, tuning, _) = load_run::<B>(&self.model, &self.run, "best", &device)?;
        match self.format {
            ExportFormat::Peft => export_peft_lora(&model, &tuning, &self.model.display().to_string(), &self.out)?,
            ExportFormat::Hf => {
                let dir = CheckpointDir::new(&self.model);
                export_hf_model(model, &dir.config(), &self.model, &self.out)?
            }
        }
        println!(
            "Exported {} ({}) to {}",
            self.run.display(),
            tuning.name(),
            self.out.display()
        );
        Ok(())
    }
}
