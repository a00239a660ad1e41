//! `lm decoder`: the decoder language-model experiment; `lm finetune`: one decoder
//! fine-tuning run.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kiln::backend::run_on;

use super::common::*;
use crate::lm;

/// `--transfer-loss`: what attention transfer minimises.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum TransferLossArg {
    /// Cross-entropy between teacher and student attention (Hedgehog).
    #[value(name = "cross_entropy")]
    CrossEntropy,
    /// Mean squared error of the attention outputs (LoLCATs).
    #[value(name = "output_mse")]
    OutputMse,
}

#[derive(clap::Args)]
pub struct DecoderArgs {
    /// Text file (default: shared/data/lm/tinyshakespeare/input.txt).
    #[arg(long)]
    pub text: Option<PathBuf>,
    #[arg(long, default_value = "runs/lm")]
    pub out: PathBuf,
    /// Held-out fraction at the end of the text.
    #[arg(long, default_value_t = 0.1)]
    pub tail: f64,
    #[arg(long, default_value_t = 256)]
    pub n_embd: usize,
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 1500)]
    pub pretrain_steps: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub pretrain_lr: f64,
    #[arg(long, default_value_t = 300)]
    pub finetune_steps: usize,
    #[arg(long, default_value_t = 5e-4)]
    pub finetune_lr: f64,
    #[arg(long, default_value_t = 100)]
    pub transfer_steps: usize,
    #[arg(long, default_value_t = 1e-2)]
    pub transfer_lr: f64,
    /// cross_entropy (Hedgehog) or output_mse (LoLCATs).
    #[arg(long, value_enum, default_value = "cross_entropy")]
    pub transfer_loss: TransferLossArg,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub block: usize,
    /// Variants: elu, t2r, performer, hedgehog, hybrid (LoLCATs, window 64), window<N>.
    #[arg(long, value_delimiter = ',', default_value = "elu,t2r,performer,hedgehog", value_parser = conversion_variant)]
    pub variants: Vec<NamedVariant>,
    #[arg(long, default_value = "ROMEO:")]
    pub prompt: String,
    /// Pretrained model directory (default OUT/pretrained; reused when it matches).
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// Skip the softmax control row.
    #[arg(long)]
    pub no_control: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl DecoderArgs {
    pub fn run(self) -> Result<()> {
        let Self {
            text,
            out,
            tail,
            n_embd,
            layers,
            heads,
            pretrain_steps,
            pretrain_lr,
            finetune_steps,
            finetune_lr,
            transfer_steps,
            transfer_lr,
            transfer_loss,
            batch,
            block,
            variants,
            prompt,
            pretrained,
            no_control,
            seed,
            device,
        } = self;
        let device = device.device;
        let text = text
            .or_else(|| kiln::model::hub::shared_dir().map(|s| s.join("data/lm/tinyshakespeare/input.txt")))
            .context("no --text given and shared/data/lm not found")?;
        let mut model = lm::default_model();
        model.n_embd = n_embd;
        model.n_layer = layers;
        model.n_head = heads;
        model.n_positions = model.n_positions.max(block);
        model
            .validate()
            .with_context(|| format!("--n-embd {n_embd} --heads {heads}"))?;
        let schedule = |steps: usize, lr: f64, warmup: usize| kiln::tune::lm::LmTrainConfig {
            steps,
            batch_size: batch,
            block_len: block,
            lr,
            warmup_steps: warmup,
            seed,
            eval_every: (steps / 5).max(1),
            eval_tokens: 16_384,
            ..Default::default()
        };
        let loss = match transfer_loss {
            TransferLossArg::CrossEntropy => kiln::tune::transfer::TransferLoss::CrossEntropy,
            TransferLossArg::OutputMse => kiln::tune::transfer::TransferLoss::OutputMse,
        };
        let variants = NamedVariant::pairs(variants);
        run_on(
            device,
            lm::DecoderJob {
                text,
                out: out.clone(),
                tail,
                model,
                pretrain: schedule(pretrain_steps, pretrain_lr, pretrain_steps / 20),
                finetune: schedule(finetune_steps, finetune_lr, finetune_steps / 10),
                transfer: kiln::tune::transfer::TransferConfig {
                    steps: transfer_steps,
                    lr: transfer_lr,
                    batch_size: batch,
                    loss,
                },
                variants,
                prompt,
                pretrained,
                control: !no_control,
            },
        )??;
        println!("Written: {}", out.join("results.json").display());

        Ok(())
    }
}

#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// Model directory: GPT-2 layout (config.json, model.safetensors; tokenizer.json unless
    /// byte-level; e.g. the `pretrained/` directory `lm decoder` writes), fine-tuned on
    /// next-token prediction; or BERT with its masked-LM head (cls.predictions) and
    /// tokenizer.json, fine-tuned on masked-token prediction.
    #[arg(long)]
    pub model: PathBuf,
    /// UTF-8 text to fine-tune on; its last --tail fraction of tokens is held out.
    #[arg(long)]
    pub text: PathBuf,
    #[arg(long, default_value = "runs/lm-finetune")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0.1)]
    pub tail: f64,
    /// Strategy composition as JSON, as an experiment file's `tuning` list
    /// (e.g. '[{"kind": "lora", "r": 8, "targets": ["query", "value"]}]'); default: full.
    #[arg(long, default_value = "[]")]
    pub tuning: String,
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub block: usize,
    /// Evaluate (and checkpoint) every this many steps (default: steps / 5).
    #[arg(long)]
    pub eval_every: Option<usize>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Fraction of positions masked (BERT models; each replaced by [MASK] 80%, a random
    /// token 10%, kept 10%).
    #[arg(long, default_value_t = 0.15)]
    pub mask_prob: f64,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Replace a run already in --out.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl FinetuneArgs {
    pub fn run(self) -> Result<()> {
        let tuning: Vec<kiln::tune::strategy::StrategyConfig> =
            serde_json::from_str(&self.tuning).with_context(|| format!("--tuning {}", self.tuning))?;
        let on_existing = match (self.resume, self.overwrite) {
            (true, _) => kiln::tune::run_dir::OnExisting::Resume,
            (false, true) => kiln::tune::run_dir::OnExisting::Overwrite,
            (false, false) => kiln::tune::run_dir::OnExisting::Refuse,
        };
        let train = kiln::tune::lm::LmTrainConfig {
            steps: self.steps,
            batch_size: self.batch,
            block_len: self.block,
            lr: self.lr,
            warmup_steps: self.steps / 10,
            seed: self.seed,
            eval_every: self.eval_every.unwrap_or((self.steps / 5).max(1)),
            ..Default::default()
        };
        let out = self.out.clone();
        let history = run_on(
            self.device.device,
            crate::lm_finetune::FinetuneJob {
                model: self.model,
                text: self.text,
                tail: self.tail,
                out: self.out,
                tuning,
                train,
                mask_prob: self.mask_prob,
                on_existing,
            },
        )??;
        if let Some((step, p)) = history.evals.last() {
            println!(
                "held-out perplexity {:.3} after {step} steps ({} of {} parameters trained)",
                p.perplexity, history.trainable, history.total
            );
        }
        println!("Written: {}", out.join("results.json").display());
        Ok(())
    }
}
