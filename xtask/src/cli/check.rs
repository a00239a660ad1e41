//! `parity`, `train-parity`: kiln against PyTorch reference files.

use std::path::PathBuf;

use anyhow::{bail, Result};
use kiln::backend::{run_on, DeviceKind};
use kiln::model::parity::Tolerances;

use super::common::*;
use crate::parity;

#[derive(clap::Args)]
pub struct ParityArgs {
    /// Model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Reference safetensors file.
    #[arg(long)]
    pub reference: PathBuf,
    /// JSON list of the raw texts (strings or [a, b] pairs): also require identical token ids.
    #[arg(long)]
    pub sentences: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Max abs difference for hidden states and logits.
    #[arg(long, default_value_t = 2e-4)]
    pub tol_hidden: f64,
    /// Max abs difference for attention probabilities.
    #[arg(long, default_value_t = 2e-5)]
    pub tol_attention: f64,
    /// Minimum cosine similarity of sentence embeddings.
    #[arg(long, default_value_t = 0.99999)]
    pub min_cosine: f64,
}

impl ParityArgs {
    pub fn run(self) -> Result<()> {
        let Self {
            model,
            reference,
            sentences,
            device,
            tol_hidden,
            tol_attention,
            min_cosine,
        } = self;
        let device = device.device;
        let tolerances = Tolerances {
            hidden: tol_hidden,
            attention: tol_attention,
            cosine: min_cosine,
        };
        let rows = run_on(
            device,
            parity::ParityJob {
                model,
                reference,
                sentences,
                tolerances,
            },
        )??;
        if !parity::print_table(&rows) {
            bail!("parity failed");
        }

        Ok(())
    }
}

#[derive(clap::Args)]
pub struct TrainParityArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub reference: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl TrainParityArgs {
    pub fn run(self) -> Result<()> {
        let Self {
            model,
            reference,
            device,
        } = self;
        let device = device.device;
        let report = run_on(device, TrainParityJob { model, reference })??;
        if !parity::print_table(&report.rows) {
            eprintln!("\nPer-element diagnostics of the failing parameters (HF layout [out, in]):");
            for d in &report.diagnostics {
                eprintln!("{d}");
            }
            bail!("train-step parity failed");
        }

        Ok(())
    }
}

struct TrainParityJob {
    model: PathBuf,
    reference: PathBuf,
}

impl kiln::backend::BackendJob for TrainParityJob {
    type Output = Result<kiln::tune::train_parity::TrainParityReport>;
    fn run<B: kiln::burn::tensor::backend::AutodiffBackend>(
        self,
        device: B::Device,
        _kind: DeviceKind,
    ) -> Self::Output {
        let reference = kiln::model::parity::ReferenceFile::open(&self.reference)?;
        let config = kiln::tune::train_parity::TrainParityConfig::default();
        Ok(kiln::tune::train_parity::train_step_parity_report::<B>(
            &self.model,
            &reference,
            config,
            &device,
        )?)
    }
}
