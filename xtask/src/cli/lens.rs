//! `lens neurons | analyse | mixing`: interpretability commands.

use std::path::PathBuf;

use anyhow::{bail, Result};
use kiln::backend::run_on;

use super::common::*;
use crate::{analyse, export, lens, neurons};

#[derive(clap::Args)]
pub struct NeuronsArgs {
    /// Model directory with an MLM head (cls.predictions.*) and tokenizer.json.
    #[arg(long)]
    pub model: PathBuf,
    /// JSON list of {"prompt": "... [MASK] ...", "target": "word"}.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Output JSON file.
    #[arg(long)]
    pub out: PathBuf,
    /// Integrated-gradients steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Per prompt, keep neurons above this fraction of the largest attribution.
    #[arg(long, default_value_t = 0.2)]
    pub threshold: f32,
    /// Keep neurons found in at least this share of the prompts.
    #[arg(long, default_value_t = 0.7)]
    pub share: f32,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl NeuronsArgs {
    pub fn run(self) -> Result<()> {
        let Self {
            model,
            prompts,
            out,
            steps,
            threshold,
            share,
            device,
        } = self;
        let device = device.device;
        let result = run_on(
            device,
            neurons::NeuronsJob {
                model,
                prompts,
                out: out.clone(),
                steps,
                threshold,
                share,
            },
        )??;
        println!(
            "{} knowledge neurons; P(target) mean relative change: suppressed {:+.3}, amplified {:+.3}",
            result["knowledge_neurons"].as_array().map_or(0, Vec::len),
            result["mean_relative_change"]["suppressed"]
                .as_f64()
                .unwrap_or(f64::NAN),
            result["mean_relative_change"]["amplified"].as_f64().unwrap_or(f64::NAN)
        );
        println!("Written: {}", out.display());

        Ok(())
    }
}

#[derive(clap::Args)]
pub struct AnalyseArgs {
    pub run: PathBuf,
    /// Model directory the run started from (default: located like demo).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// GLUE directory (default: shared/data/glue).
    #[arg(long)]
    pub glue_dir: Option<PathBuf>,
    #[command(flatten)]
    pub settings: analyse::AnalyseSettings,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl AnalyseArgs {
    pub fn run(self) -> Result<()> {
        let Self {
            run,
            model,
            glue_dir,
            settings,
            device,
        } = self;
        let device = device.device;
        require_run(&run)?;
        let model = export::run_model(&run, model.as_deref())?;
        let task = kiln::format::run::RunConfig::<serde_json::Value>::read(&run)?.task;
        if task == kiln::tune::lm::CAUSAL_LM_TASK {
            let job = analyse::DecoderAnalyseJob {
                model,
                run: run.clone(),
                settings: settings.pipeline(),
                checkpoint: settings.checkpoint,
            };
            println!("Analysis: {}", run_on(device, job)??.display());
            println!("Report: {}", kiln::viz::write_report(&run, None)?.display());
            report_plots(&run);
            return Ok(());
        }
        if kiln::tune::lm::is_lm_task(&task) {
            bail!(
                "{}: a {task} run; lens analyse reads classification and causal-LM runs (the \
                 masked-LM model's analyses are kiln_lens functions: docs/lens.md)",
                run.display()
            );
        }
        let data = run_data(&run, glue_dir.clone())?;
        let dev = data.dev;
        let path = run_on(
            device,
            analyse::AnalyseJob {
                model,
                run: run.clone(),
                dev,
                settings: settings.pipeline(),
                checkpoint: settings.checkpoint,
            },
        )??;
        println!("Analysis: {}", path.display());
        let texts = report_texts(&run, glue_dir);
        println!("Report: {}", kiln::viz::write_report(&run, texts)?.display());
        report_plots(&run);

        Ok(())
    }
}

#[derive(clap::Args)]
pub struct MixingArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSON list of strings or [a, b] pairs.
    #[arg(long)]
    pub input: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 128)]
    pub max_length: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl MixingArgs {
    pub fn run(self) -> Result<()> {
        let Self {
            model,
            input,
            out,
            max_length,
            device,
        } = self;
        let device = device.device;
        let model = model.resolve()?;
        let summary = run_on(
            device,
            lens::MixingJob {
                model,
                input,
                out: out.clone(),
                max_length,
            },
        )??;
        lens::print_summary(&summary);
        println!("\nPer-token values: {}", out.display());

        Ok(())
    }
}
