//! `cargo xtask lm finetune`: fine-tune a language model on a text file with any composition
//! of tuning strategies, into a run directory: a GPT-2-layout decoder on next-token prediction
//! (`kiln_tune::lm::train_lm_run`), or a BERT checkpoint with its masked-LM head
//! (`cls.predictions`) on BERT's masked-token prediction (`kiln_tune::lm::train_mlm_run`,
//! domain-adaptive pretraining). config.json with provenance, data.json, metrics.jsonl,
//! checkpoints, trainable.json and results.json, resumable like a classification run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln::backend::{BackendJob, DeviceKind};
use kiln::burn::tensor::backend::AutodiffBackend;
use kiln::data::lm::{byte_tokens, BYTE_VOCAB};
use kiln::data::TextTokenizer;
use kiln::model::{BertMlmHead, BertModel, Gpt2Model};
use kiln::tune::lm::{train_lm_run, train_mlm_run, LmHistory, LmRun, LmTrainConfig};
use kiln::tune::objective::masked_lm::{MaskedLmModel, Masking};
use kiln::tune::run_dir::{DataSource, OnExisting};
use kiln::tune::strategy::{StrategyConfig, Tuning};
use kiln::tune::trainer::{RunDir, StopAt};

use crate::analyse::progress;

pub struct FinetuneJob {
    /// A GPT-2-layout model directory (config.json + model.safetensors), or a BERT one with a
    /// masked-LM head and tokenizer.json.
    pub model: PathBuf,
    /// The text to fine-tune on (its tail is held out).
    pub text: PathBuf,
    /// Fraction of the token stream held out at its end.
    pub tail: f64,
    pub out: PathBuf,
    /// The strategy composition, as in an experiment file's `tuning` list.
    pub tuning: Vec<StrategyConfig>,
    pub train: LmTrainConfig,
    /// Fraction of positions masked (BERT models only).
    pub mask_prob: f64,
    pub on_existing: OnExisting,
}

/// Which objective a model directory is fine-tuned with, from its `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `model_type` `gpt2` (or no `model_type` and GPT-2's `n_embd`): next-token prediction.
    Gpt2,
    /// `model_type` `bert`: masked-token prediction with `cls.predictions`.
    Bert,
}

/// The [`Family`] of the model in `dir`; another `model_type` is refused, naming the ones
/// this command fine-tunes.
pub fn family(dir: &Path) -> Result<Family> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let config: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    match config.get("model_type").and_then(|m| m.as_str()) {
        Some("gpt2") => Ok(Family::Gpt2),
        Some("bert") => Ok(Family::Bert),
        None if config.get("n_embd").is_some() => Ok(Family::Gpt2),
        None => Ok(Family::Bert),
        Some(other) => bail!(
            "{}: model_type {other:?} cannot be fine-tuned on text here (gpt2: next-token, bert: masked-token)",
            path.display()
        ),
    }
}

/// The model directory's `tokenizer.json`, if it has one.
pub fn tokenizer(model_dir: &Path) -> Result<Option<TextTokenizer>> {
    let path = model_dir.join("tokenizer.json");
    Ok(match path.exists() {
        true => Some(TextTokenizer::from_file(&path, usize::MAX)?),
        false => None,
    })
}

/// The text as token ids: the model directory's `tokenizer.json` where it has one (no special
/// tokens), else bytes for a byte-level model (vocabulary of 256); anything else is refused.
pub fn tokens(model_dir: &Path, vocab_size: usize, text: &str) -> Result<Vec<u32>> {
    encode(tokenizer(model_dir)?.as_ref(), model_dir, vocab_size, text)
}

/// [`tokens`] with the directory's tokenizer already loaded (`None`: it has none).
pub fn encode(tokenizer: Option<&TextTokenizer>, model_dir: &Path, vocab_size: usize, text: &str) -> Result<Vec<u32>> {
    if let Some(tok) = tokenizer {
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
        let bar = progress(self.train.steps, "fine-tune");
        let on_step = |s: &kiln::tune::lm::LmStep| {
            bar.set_position(s.step as u64 + 1);
            bar.set_message(format!("loss {:.3}", s.loss));
        };
        let (history, data) = match family(&self.model)? {
            Family::Gpt2 => {
                let (model, config) = Gpt2Model::<B>::from_pretrained(&self.model, &device)
                    .with_context(|| format!("loading the decoder from {}", self.model.display()))?;
                let ids = tokens(&self.model, config.vocab_size, &self.text()?)?;
                let (train, held_out) = self.split(&ids, self.train.block_len + 1)?;
                let (run, data) = self.run_dir(held_out.len(), kind)?;
                let tuning = self.tuning()?;
                let (_, history) = train_lm_run(
                    model,
                    train,
                    held_out,
                    &self.train,
                    &tuning,
                    &self.spec(&run),
                    on_step,
                    &device,
                )?;
                (history, data)
            }
            Family::Bert => {
                let (bert, config) = BertModel::<B>::from_pretrained(&self.model, false, &device)
                    .with_context(|| format!("loading the encoder from {}", self.model.display()))?;
                let head = BertMlmHead::<B>::from_checkpoint(&config, self.model.join("model.safetensors"), &device)
                    .context("masked-LM fine-tuning needs the checkpoint's masked-LM head (cls.predictions.*)")?;
                let tokenizer = tokenizer(&self.model)?
                    .with_context(|| format!("{}: masked-LM fine-tuning needs tokenizer.json", self.model.display()))?;
                let mask_token = tokenizer
                    .token_id("[MASK]")
                    .with_context(|| format!("{}: the tokenizer has no [MASK] token", self.model.display()))?;
                let masking = Masking {
                    prob: self.mask_prob,
                    mask_token,
                    vocab: config.vocab_size as u32,
                };
                let ids = tokenizer.encode_stream(&self.text()?)?;
                let (train, held_out) = self.split(&ids, self.train.block_len)?;
                let (run, data) = self.run_dir(held_out.len(), kind)?;
                let (model, tuning) = (MaskedLmModel { bert, head }, self.tuning()?);
                let spec = self.spec(&run);
                let (_, history) = train_mlm_run(
                    model,
                    train,
                    held_out,
                    &self.train,
                    masking,
                    &tuning,
                    &spec,
                    on_step,
                    &device,
                )?;
                (history, data)
            }
        };
        bar.finish_and_clear();
        data.write(&self.out)?;
        Ok(history)
    }
}

impl FinetuneJob {
    /// The text file's contents.
    fn text(&self) -> Result<String> {
        let bytes = std::fs::read(&self.text).with_context(|| self.text.display().to_string())?;
        String::from_utf8(bytes).with_context(|| format!("{}: not UTF-8", self.text.display()))
    }

    /// The stream split into training tokens and its held-out tail, which must fill one
    /// `window`.
    fn split<'a>(&self, ids: &'a [u32], window: usize) -> Result<(&'a [u32], &'a [u32])> {
        let (train, held_out) = kiln::data::lm::split_tail(ids, self.tail);
        if held_out.len() < window {
            bail!(
                "{}: {} held-out tokens (--tail {}) do not fill one window of {window}",
                self.text.display(),
                held_out.len(),
                self.tail,
            );
        }
        tracing::info!(train = train.len(), held_out = held_out.len(), "tokens");
        Ok((train, held_out))
    }

    fn tuning(&self) -> Result<Tuning> {
        Tuning::new(&self.tuning).context("--tuning")
    }

    /// The run directory, with provenance naming the model and the text, and the text's
    /// `data.json` record.
    fn run_dir(&self, held_out_tokens: usize, kind: DeviceKind) -> Result<(RunDir, DataSource)> {
        let data = DataSource::Text {
            path: std::path::absolute(&self.text)?,
            sha256: kiln::tune::run_files::sha256_file(&self.text)?,
            held_out_tokens,
        };
        std::fs::create_dir_all(&self.out)?;
        let provenance = crate::experiment::provenance(&self.model, Some(data.clone()), kind)?;
        Ok((RunDir::new(&self.out).with_provenance(provenance), data))
    }

    fn spec<'a>(&self, dir: &'a RunDir) -> LmRun<'a> {
        LmRun {
            dir,
            on_existing: self.on_existing,
            stop: StopAt { step: None },
        }
    }
}
