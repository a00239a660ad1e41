//! `cargo xtask export`: a finished run's best checkpoint as a PEFT LoRA adapter or as a
//! Hugging Face model directory.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kiln::backend::{BackendJob, DeviceKind};
use kiln::burn::tensor::backend::AutodiffBackend;
use kiln::data::GlueTask;
use kiln::model::CheckpointDir;
use kiln::tune::classifier::SequenceClassifier;
use kiln::tune::export::{export_hf_model, export_peft_lora};
use kiln::tune::run_files::RunConfig;

/// Output layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// `adapter_config.json` + `adapter_model.safetensors` (LoRA runs).
    Peft,
    /// `config.json` + `model.safetensors` + tokenizer files (LoRA merged).
    Hf,
}

/// A classification run's `config.json` (typed, any format this kiln reads) and its task. A
/// language-model run (causal or masked) is refused with a message saying what reads it.
pub fn run_config(run: &std::path::Path) -> Result<(RunConfig, GlueTask)> {
    let path = RunConfig::file(run);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let any = kiln::format::run::RunConfig::<serde_json::Value>::parse(&text, &path)?;
    if kiln::tune::lm::is_lm_task(&any.task) {
        anyhow::bail!(
            "{}: a language-model run (task {:?}, kiln_tune::lm); this command reads \
             classification runs. Its metrics, results and checkpoints are in the run directory \
             (`report` draws its curves); the decoder analyses (attention, rollout, gradient × \
             input, IG, head importance) are kiln_lens functions on the model (docs/lens.md)",
            run.display(),
            any.task
        );
    }
    let config = RunConfig::parse(&text, &path)?;
    let task = GlueTask::parse(&config.task).with_context(|| run.join("config.json").display().to_string())?;
    Ok((config, task))
}

/// The model directory a command on `run` uses: `given` (`--model`), else the directory the
/// run recorded (when it still exists), else the default model.
pub fn run_model(run: &std::path::Path, given: Option<&std::path::Path>) -> Result<std::path::PathBuf> {
    if let Some(dir) = given {
        return Ok(dir.to_path_buf());
    }
    let recorded = kiln::format::run::RunConfig::<serde_json::Value>::read(run)
        .ok()
        .and_then(|c| c.provenance)
        .map(|p| p.model.path)
        .filter(|p| p.is_dir());
    match recorded {
        Some(dir) => Ok(dir),
        None => Ok(kiln::model::hub::locate_or_fetch(
            kiln::model::hub::DEFAULT_MODEL_ID,
            None,
            true,
        )?),
    }
}

/// A checkpoint (`best`, `last`) of a run: the classifier (strategy inserts included), its
/// tuning, the run's config and its task, from `RUN/config.json` and
/// `RUN/checkpoints/<checkpoint>`.
pub fn load_run<B: kiln::burn::prelude::Backend>(
    model_dir: &std::path::Path,
    run: &std::path::Path,
    checkpoint: &str,
    device: &B::Device,
) -> Result<(SequenceClassifier<B>, kiln::tune::strategy::Tuning, RunConfig, GlueTask)> {
    let (config, task) = run_config(run)?;
    // The weights the run was trained from, checked where the run recorded them.
    if let Some(provenance) = &config.provenance {
        provenance.model.verify(model_dir)?;
    }
    let (base, _) = SequenceClassifier::<B>::from_pretrained(model_dir, task.num_labels(), device)?;
    let (model, tuning) = kiln::tune::run_files::Restore::restore(&config, base, run, checkpoint, device)?;
    Ok((model, tuning, config, task))
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
        let (model, tuning, config, _) = load_run::<B>(&self.model, &self.run, "best", &device)?;
        match self.format {
            ExportFormat::Peft => {
                // PEFT's `base_model_name_or_path`: the hub id when the run recorded one (the
                // model was found or fetched by id), else the local directory.
                let base = config
                    .provenance
                    .as_ref()
                    .and_then(|p| p.model.id.clone())
                    .unwrap_or_else(|| self.model.display().to_string());
                export_peft_lora(&model, &tuning, &base, &self.out)?
            }
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
