//! `cargo xtask lm finetune`: fine-tune a GPT-2-layout decoder on a text file with any
//! composition of tuning strategies, into a run directory (`kiln_tune::lm::train_lm_run`):
//! config.json with provenance, data.json, metrics.jsonl, checkpoints, trainable.json and
//! results.json, resumable like a classification run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln::backend::{BackendJob, DeviceKind};
use kiln::burn::tensor::backend::AutodiffBackend;
use kiln::data::lm::{byte_tokens, BYTE_VOCAB};
use kiln::model::Gpt2Model;
use kiln::tune::lm::{train_lm_run, LmHistory, LmRun, LmTrainConfig};
use kiln::tune::run_dir::{DataSource, OnExisting};
use kiln::tune::strategy::{StrategyConfig, Tuning};
use kiln::tune::trainer::{RunDir, StopAt};

use crate::analyse::progress;

pub struct FinetuneJob {
    /// A GPT-2-layout model directory (config.json + model.safetensors).
    pub model: PathBuf,
    /// The text to fine-tune on (its tail is held out).
    pub text: PathBuf,
    /// Fraction of the token stream held out at its end.
    pub tail: f64,
    pub out: PathBuf,
    /// The strategy composition, as in an experiment file's `tuning` list.
    pub tuning: Vec<StrategyConfig>,
    pub train: LmTrainConfig,
    pub on_existing: OnExisting,
}

/// The text as token ids: the model directory's `tokenizer.json` where it has one (no special
/// tokens), else bytes for a byte-level model (vocabulary of 256); anything else is refused.
pub fn tokens(model_dir: &Path, vocab_size: usize, text: &str) -> Result<Vec<u32>> {
    let tokenizer = model_dir.join("tokenizer.json");
    if tokenizer.exists() {
        let tok = kiln::data::TextTokenizer::from_file(&tokenizer, usize::MAX)?;
        return Ok(tok.encode_stream(text)?);
    }
    if vocab_size == BYTE_VOCAB {
        return Ok(byte_tokens(text));
    }
    bail!(
        "{}: no tokenizer.json and a vocabulary of {vocab_size} (byte-level models have {BYTE_VOCAB}): \
         cannot turn the text into this model's tokens",
        model_dir.display()
    )
}

impl BackendJob for FinetuneJob {
    type Output = Result<LmHistory>;

    fn run<B: AutodiffBackend>(self, device: B::Device, kind: DeviceKind) -> Self::Output {
        let (model, config) = Gpt2Model::<B>::from_pretrained(&self.model, &device)
            .with_context(|| format!("loading the decoder from {}", self.model.display()))?;
        let bytes = std::fs::read(&self.text).with_context(|| self.text.display().to_string())?;
        let text = String::from_utf8(bytes).with_context(|| format!("{}: not UTF-8", self.text.display()))?;
        let ids = tokens(&self.model, config.vocab_size, &text)?;
        let (train, held_out) = kiln::data::lm::split_tail(&ids, self.tail);
        if held_out.len() <= self.train.block_len {
            bail!(
                "{}: {} held-out tokens (--tail {}) do not fill one window of {} + 1",
                self.text.display(),
                held_out.len(),
                self.tail,
                self.train.block_len
            );
        }
        tracing::info!(train = train.len(), held_out = held_out.len(), "tokens");
        let tuning = Tuning::new(&self.tuning).context("--tuning")?;
        let data = DataSource::Text {
            path: std::path::absolute(&self.text)?,
            sha256: kiln::tune::run_files::sha256_file(&self.text)?,
            held_out_tokens: held_out.len(),
        };
        let dir = RunDir::new(&self.out).with_provenance(crate::experiment::provenance(
            &self.model,
            Some(data.clone()),
            kind,
        )?);
        std::fs::create_dir_all(&self.out)?;
        let bar = progress(self.train.steps, "fine-tune");
        let spec = LmRun {
            dir: &dir,
            on_existing: self.on_existing,
            stop: StopAt { step: None },
        };
        let (_, history) = train_lm_run(
            model,
            train,
            held_out,
            &self.train,
            &tuning,
            &spec,
            |s| {
                bar.set_position(s.step as u64 + 1);
                bar.set_message(format!("loss {:.3}", s.loss));
            },
            &device,
        )?;
        bar.finish_and_clear();
        data.write(&self.out)?;
        Ok(history)
    }
}
