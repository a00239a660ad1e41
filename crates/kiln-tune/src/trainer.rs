//! Fine-tuning runs for sequence classification/regression on GLUE-style data: setup (the run
//! directory, conversion, inserts, Child-Tuning_D's mask) around the one training loop
//! (`train_loop.rs`, with [`crate::objective::classification::Classification`]).
//!
//! Each optimizer step: seed the backend from `(seed, micro-step)` (so dropout masks are a
//! function of the position, which makes resume exact), forward, loss, backward, optional
//! gradient hook, accumulation, and every `grad_accum` micro-batches one AdamW update at the
//! scheduled learning rate. Evaluation runs every `eval_every` steps and at each epoch end;
//! each evaluation writes the `last` checkpoint and, when the primary metric improves,
//! `best/model.safetensors`.
//!
//! Reproducibility: data order and dropout are functions of `(seed, position)`, so a run is
//! repeatable and a resumed run ends bit-identical to an uninterrupted one on the CPU
//! backends (tested). burn's backend RNG is process-global, so this holds for one training
//! at a time per process.
//!
//! Run directory:
//! - `config.json` — the resolved [`TrainConfig`] and task;
//! - `metrics.jsonl` — one JSON object per logged step (`"kind": "train"`) or evaluation
//!   (`"kind": "eval"`);
//! - `results.json` — final and best metrics, wall time, throughput, peak memory;
//! - `checkpoints/last/`, `checkpoints/best/model.safetensors` (see [`crate::checkpoint`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorData;
use kiln_data::batching::{encode_indices, BatchPlan};
use kiln_data::metrics::{glue_metrics, Predictions, TaskMetrics};
use kiln_data::{BatchEncoding, DataError, Example, GlueTask, Label, TextInput, TextTokenizer};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointError};
use crate::classifier::{SequenceClassifier, Targets};
use crate::optim::AdamWConfig;
use crate::params::param_infos;
use crate::run_dir::OnExisting;
use kiln_model::roles::ModelRoles;

use crate::run_files::MetricsLine;
use kiln_format::tensorboard::{self, EventWriter};

use crate::strategy::{
    child_tuning_d_mask, trainable_report, ChildMask, GradientMask, StrategyConfig, StrategyError, TunedIoError, Tuning,
};

/// Hyper-parameters of a fine-tuning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Passes over the training set.
    #[serde(deserialize_with = "crate::validate::whole")]
    pub epochs: usize,
    /// Examples per micro-batch.
    #[serde(deserialize_with = "crate::validate::whole")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(deserialize_with = "crate::validate::whole")]
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Fraction of the steps spent warming up linearly.
    pub warmup_ratio: f64,
    /// AdamW settings (weight decay, betas, eps, clipping).
    pub adamw: AdamWConfig,
    /// Truncation length (special tokens included).
    #[serde(deserialize_with = "crate::validate::whole")]
    pub max_length: usize,
    /// Group batches by length (factor × batch size per sorted chunk); `None` = off.
    pub length_group_factor: Option<usize>,
    /// Evaluate (and checkpoint) every this many steps, besides each epoch end.
    pub eval_every: Option<usize>,
    /// Log a train line every this many steps.
    #[serde(deserialize_with = "crate::validate::whole")]
    pub log_every: usize,
    /// Batch size of evaluation.
    #[serde(deserialize_with = "crate::validate::whole")]
    pub eval_batch_size: usize,
    /// Dropout probability everywhere (`None` = the model config's).
    pub dropout: Option<f64>,
    /// Seed of head initialisation, data order and dropout.
    pub seed: u64,
    /// Use only the first N training examples (smoke tests).
    pub max_train_examples: Option<usize>,
    /// Tuning strategy components (empty: full fine-tuning); see [`crate::strategy`].
    pub tuning: Vec<StrategyConfig>,
    /// Swap the encoder's attention for this mechanism before training (swap-then-finetune).
    pub attention: Option<kiln_attention::AttentionVariant>,
    /// Layers to convert (all when absent).
    pub attention_layers: Option<Vec<usize>>,
    /// Train the converted layers' feature maps to imitate the original attention first.
    pub attention_transfer: Option<crate::transfer::TransferConfig>,
    /// Record training dynamics: at each epoch end, the gold-class probability of every
    /// training example (`dynamics.jsonl`, one line per epoch; classification only).
    pub data_map: bool,
    /// The dev metric that picks `checkpoints/best` and `results.json`'s `best` (`None`: the
    /// task's primary metric; GLUE's metrics all increase).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_metric: Option<String>,
    /// Stop when the dev metric stops improving ([`crate::callbacks::EarlyStopping`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStoppingConfig>,
}

/// `early_stopping` of a [`TrainConfig`]: HF's `early_stopping_patience` and
/// `early_stopping_threshold`, on `metric` (default: [`TrainConfig::best_metric`], else the
/// primary metric).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStoppingConfig {
    /// Evaluations without improvement before stopping.
    #[serde(deserialize_with = "crate::validate::whole")]
    pub patience: usize,
    /// The least change that counts as an improvement.
    #[serde(default)]
    pub min_delta: f64,
    /// The metric watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            batch_size: 32,
            grad_accum: 1,
            lr: 5e-5,
            warmup_ratio: 0.1,
            adamw: AdamWConfig::default(),
            max_length: 128,
            length_group_factor: None,
            eval_every: None,
            log_every: 10,
            eval_batch_size: 64,
            dropout: None,
            seed: 42,
            max_train_examples: None,
            tuning: Vec::new(),
            attention: None,
            attention_layers: None,
            attention_transfer: None,
            data_map: false,
            best_metric: None,
            early_stopping: None,
        }
    }
}

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Model loading.
    #[error(transparent)]
    Model(#[from] kiln_model::ModelError),
    /// Tokenization.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A GLUE task file (the error names the file and line).
    #[error(transparent)]
    Glue(#[from] kiln_data::GlueError),
    /// Checkpoint I/O.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A non-finite loss or gradient; the last checkpoint is left untouched.
    #[error("non-finite {what} at step {step} (epoch {epoch}); {}", match .checkpoint {
        Some(dir) => format!("the last good checkpoint is kept in {}", dir.display()),
        None => "no checkpoint had been written yet".to_string(),
    })]
    NonFinite {
        /// `"loss"` or `"gradient norm"`.
        what: &'static str,
        /// Optimizer step being computed (1-based, as in `metrics.jsonl`).
        step: usize,
        /// Epoch.
        epoch: usize,
        /// The last complete checkpoint, if one had been written.
        checkpoint: Option<PathBuf>,
    },
    /// A run-directory file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The data does not fit the task.
    #[error("{0}")]
    Invalid(String),
    /// A bad tuning strategy.
    #[error(transparent)]
    Strategy(#[from] StrategyError),
    /// A configuration value out of range.
    #[error(transparent)]
    Config(#[from] crate::validate::ConfigError),
    /// The run directory is locked, already holds a run, or cannot be resumed.
    #[error(transparent)]
    RunDir(#[from] crate::run_dir::RunDirError),
    /// A tuned-part file could not be read or does not fit.
    #[error(transparent)]
    Tuned(#[from] TunedIoError),
    /// A run file (`metrics.jsonl`, a TensorBoard event file) could not be read or written.
    #[error(transparent)]
    RunFile(#[from] kiln_format::FormatError),
}

/// Training and dev examples of a task.
#[derive(Debug, Clone)]
pub struct TaskData {
    /// The task (decides labels and metrics).
    pub task: GlueTask,
    /// Training examples.
    pub train: Vec<Example>,
    /// Evaluation examples.
    pub dev: Vec<Example>,
}

/// Final numbers of a run (`results.json`; the run-file type of `kiln-format`).
pub use kiln_format::run::Results as TrainResults;

/// When to stop early (for checkpoint/resume tests and time-boxed runs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StopAt {
    /// Stop after this optimizer step, writing the `last` checkpoint.
    pub step: Option<usize>,
}

/// Files of a run directory.
#[derive(Debug, Clone)]
pub struct RunDir(pub PathBuf, Option<crate::run_files::Provenance>);

impl RunDir {
    /// The run directory at `path` (no provenance recorded).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into(), None)
    }

    /// Records where the run's model and data came from in its `config.json`
    /// ([`crate::run_files::Provenance`]).
    pub fn with_provenance(mut self, provenance: crate::run_files::Provenance) -> Self {
        self.1 = Some(provenance);
        self
    }

    /// The provenance given with [`RunDir::with_provenance`].
    pub fn provenance(&self) -> Option<&crate::run_files::Provenance> {
        self.1.as_ref()
    }

    /// `checkpoints/last`.
    pub fn last(&self) -> PathBuf {
        self.0.join("checkpoints").join("last")
    }
    /// `checkpoints/best`.
    pub fn best(&self) -> PathBuf {
        self.0.join("checkpoints").join("best")
    }
    /// `metrics.jsonl`.
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.jsonl")
    }
}

/// Peak resident set size in MiB (Linux `VmHWM`).
pub fn peak_rss_mb() -> Option<f64> {
    proc_status_mb("VmHWM:")
}

/// Resident set size now, in MiB (Linux `VmRSS`).
pub fn rss_mb() -> Option<f64> {
    proc_status_mb("VmRSS:")
}

/// A `kB` field of `/proc/self/status`, in MiB.
fn proc_status_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// `[ids, token types, attention mask]` tensors of an encoded batch.
pub fn tensors<B: Backend>(enc: &BatchEncoding, device: &B::Device) -> [Tensor<B, 2, Int>; 3] {
    let shape = [enc.batch, enc.seq];
    [&enc.input_ids, &enc.token_type_ids, &enc.attention_mask]
        .map(|v| Tensor::from_data(TensorData::new(v.clone(), shape), device))
}

/// Targets of `examples[indices]` (classes or scores).
///
/// # Errors
/// [`TrainError::Invalid`] when class and score labels are mixed.
pub fn targets<B: Backend>(
    examples: &[Example],
    indices: &[usize],
    device: &B::Device,
) -> Result<Targets<B>, TrainError> {
    let n = indices.len();
    match examples[indices[0]].label {
        Label::Class(_) => {
            let v: Result<Vec<i64>, _> = indices
                .iter()
                .map(|&i| match examples[i].label {
                    Label::Class(c) => Ok(c as i64),
                    Label::Score(_) => Err(TrainError::Invalid("mixed class and score labels".into())),
                })
                .collect();
            Ok(Targets::Classes(Tensor::from_data(TensorData::new(v?, [n]), device)))
        }
        Label::Score(_) => {
            let v: Result<Vec<f32>, _> = indices
                .iter()
                .map(|&i| match examples[i].label {
                    Label::Score(s) => Ok(s),
                    Label::Class(_) => Err(TrainError::Invalid("mixed class and score labels".into())),
                })
                .collect();
            Ok(Targets::Scores(Tensor::from_data(TensorData::new(v?, [n]), device)))
        }
    }
}

/// Probability of the gold class and whether the argmax is right, per example in order
/// (classification tasks), for training dynamics (data maps, Swayamdipta et al. 2020).
///
/// # Errors
/// [`TrainError::Data`] on tokenization failure; [`TrainError::Invalid`] for score labels.
pub fn gold_probabilities<B: Backend>(
    model: &SequenceClassifier<B>,
    tok: &TextTokenizer,
    examples: &[Example],
    batch_size: usize,
    device: &B::Device,
) -> Result<(Vec<f32>, Vec<bool>), TrainError> {
    let inputs: Vec<TextInput> = examples.iter().map(|e| e.input.clone()).collect();
    let (mut p_gold, mut correct) = (Vec::new(), Vec::new());
    let order: Vec<usize> = (0..examples.len()).collect();
    for chunk in order.chunks(batch_size.max(1)) {
        let enc = encode_indices(tok, &inputs, chunk)?;
        let [ids, types, mask] = tensors::<B>(&enc, device);
        let probs = burn::tensor::activation::softmax(model.forward(ids, types, mask), 1);
        let classes = probs.dims()[1];
        let p: Vec<f32> = probs.into_data().convert::<f32>().to_vec().expect("f32");
        for (row, &i) in p.chunks(classes).zip(chunk) {
            let Label::Class(gold) = examples[i].label else {
                return Err(TrainError::Invalid("data maps need class labels".into()));
            };
            let best = row
                .iter()
                .enumerate()
                .fold(0, |b, (k, v)| if *v > row[b] { k } else { b });
            p_gold.push(row[gold]);
            correct.push(best == gold);
        }
    }
    Ok((p_gold, correct))
}

/// Predictions of `model` on `examples` in order, scored with the task's metrics.
///
/// # Errors
/// [`TrainError::Data`] on tokenization failure.
pub fn evaluate<B: Backend>(
    model: &SequenceClassifier<B>,
    tok: &TextTokenizer,
    task: GlueTask,
    examples: &[Example],
    batch_size: usize,
    device: &B::Device,
) -> Result<TaskMetrics, TrainError> {
    let inputs: Vec<TextInput> = examples.iter().map(|e| e.input.clone()).collect();
    let mut class_pred = Vec::new();
    let mut score_pred = Vec::new();
    let order: Vec<usize> = (0..examples.len()).collect();
    for chunk in order.chunks(batch_size.max(1)) {
        let enc = encode_indices(tok, &inputs, chunk)?;
        let [ids, types, mask] = tensors::<B>(&enc, device);
        let logits = model.forward(ids, types, mask);
        if task.is_regression() {
            score_pred.extend(
                logits
                    .into_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .expect("f32")
                    .into_iter()
                    .map(f64::from),
            );
        } else {
            class_pred.extend(
                logits
                    .argmax(1)
                    .into_data()
                    .convert::<i64>()
                    .to_vec::<i64>()
                    .expect("i64")
                    .into_iter()
                    .map(|c| c as usize),
            );
        }
    }
    let predictions = if task.is_regression() {
        let gold = examples
            .iter()
            .map(|e| {
                if let Label::Score(s) = e.label {
                    s as f64
                } else {
                    f64::NAN
                }
            })
            .collect();
        Predictions::Scores { pred: score_pred, gold }
    } else {
        let gold = examples
            .iter()
            .map(|e| if let Label::Class(c) = e.label { c } else { usize::MAX })
            .collect();
        Predictions::Classes { pred: class_pred, gold }
    };
    Ok(glue_metrics(task, &predictions))
}

pub(crate) struct MetricsLog {
    path: PathBuf,
    /// TensorBoard's copy of the scalars (`metrics.jsonl` only, not `dynamics.jsonl`).
    events: Option<EventWriter>,
}

impl MetricsLog {
    /// [`MetricsLog::open`] for `metrics.jsonl`, plus a new TensorBoard event file in the run
    /// directory: kiln's earlier event files there are removed and the kept lines replayed
    /// into the new one (with the replay's wall time), so after a resume TensorBoard shows
    /// each step once, as `metrics.jsonl` does.
    pub(crate) fn open_with_events(run: &RunDir, keep_until: Option<usize>) -> Result<Self, TrainError> {
        let (mut log, kept) = Self::open_kept(run.metrics(), keep_until)?;
        for old in tensorboard::event_files(&run.0) {
            if old.extension().is_some_and(|e| e == "kiln") {
                std::fs::remove_file(&old).map_err(|source| TrainError::Io {
                    path: old.clone(),
                    source,
                })?;
            }
        }
        let now = tensorboard::now();
        let events = EventWriter::create(&run.0, now)?;
        for (i, text) in kept.lines().enumerate() {
            let line = serde_json::from_str::<MetricsLine>(text).map_err(|source| kiln_format::FormatError::Line {
                path: log.path.clone(),
                line: i + 1,
                source,
            })?;
            events.metrics_line(&line, now)?;
        }
        log.events = Some(events);
        Ok(log)
    }

    /// Keeps only lines of steps ≤ `keep_until` (a resumed run rewrites what followed).
    pub(crate) fn open(path: PathBuf, keep_until: Option<usize>) -> Result<Self, TrainError> {
        Ok(Self::open_kept(path, keep_until)?.0)
    }

    /// [`MetricsLog::open`], also returning the lines kept.
    fn open_kept(path: PathBuf, keep_until: Option<usize>) -> Result<(Self, String), TrainError> {
        let kept = match (keep_until, std::fs::read_to_string(&path)) {
            (Some(step), Ok(text)) => text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s as usize <= step)
                })
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
            _ => String::new(),
        };
        checkpoint::write_atomic(&path, kept.as_bytes())?;
        Ok((Self { path, events: None }, kept))
    }

    pub(crate) fn write(&self, line: MetricsLine) -> Result<(), TrainError> {
        if let Some(events) = &self.events {
            events.metrics_line(&line, tensorboard::now())?;
        }
        self.write_value(serde_json::to_value(line).expect("a metrics line serialises"))
    }

    pub(crate) fn write_value(&self, value: serde_json::Value) -> Result<(), TrainError> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|source| TrainError::Io {
                path: self.path.clone(),
                source,
            })?;
        writeln!(f, "{value}").map_err(|source| TrainError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// RNG streams besides the micro-steps (which use `0..`): module insertion and the Fisher pass.
pub(crate) const INSERT_STREAM: u64 = u64::MAX;
const FISHER_STREAM: u64 = 1 << 48;

pub(crate) fn mix(seed: u64, x: u64) -> u64 {
    kiln_data::batching::RngCore::next_u64(&mut kiln_data::batching::rng(
        seed ^ x.wrapping_mul(0x9E37_79B9_7F4A_7C15),
    ))
}

impl From<kiln_format::run::RunFileError> for TrainError {
    fn from(e: kiln_format::run::RunFileError) -> Self {
        Self::Checkpoint(e.into())
    }
}

/// Applies the run-directory policy ([`crate::run_dir`]) under the lock: a new run needs a
/// directory without one; a resume needs a complete checkpoint (finishing an interrupted
/// checkpoint swap first) and, unless allowed, the run's own configuration. Returns whether
/// training resumes.
pub(crate) fn check_run_dir(
    run: &RunDir,
    on_existing: OnExisting,
    config_json: &serde_json::Value,
) -> Result<bool, TrainError> {
    use crate::run_dir::{config_changes, RunDirError};
    match on_existing {
        OnExisting::Refuse => {
            return match run.existing_run() {
                Some(found) => Err(RunDirError::Exists {
                    dir: run.0.clone(),
                    found: found.into(),
                }
                .into()),
                None => Ok(false),
            }
        }
        OnExisting::Overwrite => {
            run.clear()?;
            return Ok(false);
        }
        OnExisting::Resume | OnExisting::ResumeAllowingConfigChange | OnExisting::ResumeIfPresent => {}
    }
    if let Some(from) = checkpoint::recover(&run.last())? {
        tracing::warn!(
            "resuming from {}, recovered from {}",
            run.last().display(),
            from.display()
        );
    }
    if !run.last().join("state.json").is_file() {
        if on_existing == OnExisting::ResumeIfPresent {
            if let Some(found) = run.existing_run() {
                tracing::warn!(dir = %run.0.display(), found, "no complete checkpoint to resume from: starting over");
            }
            run.clear()?;
            return Ok(false);
        }
        return Err(RunDirError::NothingToResume {
            dir: run.0.clone(),
            checkpoint: run.last(),
        }
        .into());
    }
    let path = run.0.join("config.json");
    let saved: Option<serde_json::Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    // What must not change on resume: the task, the configuration and the model's weights
    // (where both runs recorded them); start time, kiln version and paths may.
    let compared = |v: &serde_json::Value| {
        serde_json::json!({
            "task": v["task"],
            "train": v["train"],
            "model_sha256": v.pointer("/provenance/model/sha256"),
        })
    };
    let changes = saved
        .map(|old| {
            let (mut a, mut b) = (compared(&old), compared(config_json));
            if a["model_sha256"].is_null() || b["model_sha256"].is_null() {
                a["model_sha256"] = serde_json::Value::Null;
                b["model_sha256"] = serde_json::Value::Null;
            }
            config_changes(&a, &b)
        })
        .unwrap_or_default();
    if !changes.is_empty() {
        if on_existing != OnExisting::ResumeAllowingConfigChange {
            return Err(RunDirError::ConfigChanged {
                config: path,
                changes: changes.join(", "),
            }
            .into());
        }
        tracing::warn!(changes = %changes.join(", "), "resuming with a changed configuration");
    }
    Ok(true)
}

/// Fine-tunes `model` on `data`, writing everything into `run`, which it locks while it
/// writes. `on_existing` says what to do where `run` already holds a run ([`OnExisting`];
/// `false` refuses, `true` resumes): resuming continues from `run/checkpoints/last`, so that
/// the final weights equal those of an uninterrupted run (see [`crate::run_dir`]).
///
/// The command line's entry point: a progress bar, and the early stopping the configuration
/// asks for. [`Trainer`] is the same run with callbacks and no bar.
///
/// # Errors
/// [`TrainError`]; on a non-finite loss or gradient the run stops and the last checkpoint is
/// left as it was.
#[allow(clippy::too_many_arguments)]
pub fn train<B: AutodiffBackend>(
    model: SequenceClassifier<B>,
    tok: &TextTokenizer,
    data: &TaskData,
    cfg: &TrainConfig,
    run: &RunDir,
    on_existing: impl Into<OnExisting>,
    stop: StopAt,
    device: &B::Device,
) -> Result<(SequenceClassifier<B>, TrainResults), TrainError> {
    Trainer::new(cfg, run)
        .on_existing(on_existing)
        .stop_at(stop)
        .progress_bar(true)
        .train(model, tok, data, device)
}

/// A fine-tuning run of a [`SequenceClassifier`], built up and then started: the run
/// directory and what to do with one that exists, callbacks that see every step, evaluation
/// and checkpoint and may stop the run ([`crate::callbacks`]), whether to draw a progress
/// bar (off: a library caller reports through its callbacks), a stop step.
///
/// ```no_run
/// # use burn::backend::{Autodiff, Flex};
/// # use kiln_tune::classifier::SequenceClassifier;
/// # use kiln_tune::trainer::{TaskData, TrainConfig, Trainer, RunDir};
/// use kiln_tune::callbacks::{Control, EarlyStopping, TrainEvent};
/// # fn demo(model: SequenceClassifier<Autodiff<Flex>>, tok: &kiln_data::TextTokenizer, data: &TaskData) -> Result<(), Box<dyn std::error::Error>> {
/// let cfg = TrainConfig { epochs: 10, ..TrainConfig::default() };
/// let run = RunDir::new("runs/mine");
/// let mut losses = Vec::new();
/// let (model, results) = Trainer::new(&cfg, &run)
///     .callback(EarlyStopping::new(2))
///     .callback(|e: &TrainEvent<'_>| {
///         if let TrainEvent::Step { loss, .. } = e {
///             losses.push(*loss);
///         }
///         Control::Continue
///     })
///     .train(model, tok, data, &Default::default())?;
/// # Ok(()) }
/// ```
pub struct Trainer<'a> {
    cfg: &'a TrainConfig,
    run: &'a RunDir,
    on_existing: OnExisting,
    stop: StopAt,
    progress_bar: bool,
    callbacks: Vec<Box<dyn crate::callbacks::Callback + 'a>>,
    plugins: Vec<std::sync::Arc<dyn crate::strategy::Strategy>>,
}

impl<'a> Trainer<'a> {
    /// A run of `cfg` into `run`: refuses a directory that holds a run, no bar, no callbacks
    /// (besides the configuration's early stopping).
    pub fn new(cfg: &'a TrainConfig, run: &'a RunDir) -> Self {
        Self {
            cfg,
            run,
            on_existing: OnExisting::Refuse,
            stop: StopAt::default(),
            progress_bar: false,
            callbacks: Vec::new(),
            plugins: Vec::new(),
        }
    }

    /// Adds a strategy defined outside kiln ([`Tuning::with`]), composed with the
    /// configuration's. It is named in `results.json` and `trainable.json` but, not being a
    /// [`StrategyConfig`], not in `config.json`: a caller resuming or restoring the run adds it
    /// again.
    pub fn strategy(mut self, strategy: std::sync::Arc<dyn crate::strategy::Strategy>) -> Self {
        self.plugins.push(strategy);
        self
    }

    /// What to do where `run` already holds a run.
    pub fn on_existing(mut self, on_existing: impl Into<OnExisting>) -> Self {
        self.on_existing = on_existing.into();
        self
    }

    /// Stop after a given optimizer step (the `last` checkpoint written).
    pub fn stop_at(mut self, stop: StopAt) -> Self {
        self.stop = stop;
        self
    }

    /// Draw a progress bar on the terminal.
    pub fn progress_bar(mut self, on: bool) -> Self {
        self.progress_bar = on;
        self
    }

    /// Adds a callback (called in the order added).
    pub fn callback(mut self, callback: impl crate::callbacks::Callback + 'a) -> Self {
        self.callbacks.push(Box::new(callback));
        self
    }

    /// Trains `model` on `data` (see [`train`]).
    ///
    /// # Errors
    /// As [`train`].
    pub fn train<B: AutodiffBackend>(
        self,
        model: SequenceClassifier<B>,
        tok: &TextTokenizer,
        data: &TaskData,
        device: &B::Device,
    ) -> Result<(SequenceClassifier<B>, TrainResults), TrainError> {
        let Self {
            cfg,
            run,
            on_existing,
            stop,
            progress_bar,
            mut callbacks,
            plugins,
        } = self;
        let start = Instant::now();
        let (tuning, resumed, _lock) = open_run(&model, tok, data, cfg, &plugins, run, on_existing)?;
        if let Some(es) = &cfg.early_stopping {
            let mut cb = crate::callbacks::EarlyStopping::new(es.patience).min_delta(es.min_delta);
            cb.metric = es.metric.clone().or_else(|| cfg.best_metric.clone());
            callbacks.push(Box::new(cb));
        }
        let set = TrainSet::new(data, cfg)?;
        let mut model = model;
        if let Some(p) = cfg.dropout {
            model.set_dropout(p);
        }
        B::seed(device, mix(cfg.seed, INSERT_STREAM));
        let model = convert_attention(model, cfg, &set, tok, run, resumed, device)?;
        let model = tuning.insert(model, device)?;
        // Child-Tuning_D's Fisher pass sees the pretrained weights, also when resuming (the
        // mask is recomputed, not stored: it is a function of the seed and the pretrained model).
        let mask = gradient_mask(&tuning, &model, &set, tok, cfg, device)?;
        let model = if resumed {
            checkpoint::read_weights(&run.last(), model, &tuning)?
        } else {
            model
        };
        let (infos, roles) = (param_infos(&model), model.param_roles());
        let report = trainable_report(&tuning, &infos, &roles);
        tracing::info!(strategy = %report.strategy, trainable = report.trainable, total = report.total, percent = format!("{:.3}", report.percent), "trainable parameters");
        report.write(&run.0)?;
        let objective = crate::objective::classification::Classification {
            tok,
            data,
            cfg,
            set: &set,
        };
        let session = crate::train_loop::Session {
            objective: &objective,
            settings: crate::train_loop::LoopSettings {
                adamw: cfg.adamw,
                lr: cfg.lr,
                seed: cfg.seed,
                eval_every: cfg.eval_every,
                log_every: cfg.log_every,
                data_map: cfg.data_map,
                best_metric: cfg.best_metric.as_deref(),
                progress_bar,
            },
            tuning: &tuning,
            mask: mask.as_ref(),
            run: Some(run),
            stop,
            device,
        };
        let mut observe = |event: &crate::callbacks::TrainEvent<'_>| {
            // Every callback sees every event; any one may stop the run.
            callbacks
                .iter_mut()
                .fold(crate::callbacks::Control::Continue, |control, cb| {
                    match cb.on_event(event) {
                        crate::callbacks::Control::Stop => crate::callbacks::Control::Stop,
                        crate::callbacks::Control::Continue => control,
                    }
                })
        };
        let (model, outcome) = session.run(model, &infos, &roles, resumed, &mut observe)?;
        let attention = cfg.attention.as_ref().map(|variant| attention_summary(variant, cfg));
        let results = outcome.into_results(data.task.short_name().into(), &report, start, resumed, attention);
        results.write(&run.0)?;
        Ok((model, results))
    }
}

/// What `results.json` records of an attention conversion: the variant's kind and settings
/// (its serde form, so the names are the ones a config file uses), layers and transfer.
fn attention_summary(
    variant: &kiln_attention::AttentionVariant,
    cfg: &TrainConfig,
) -> kiln_format::run::AttentionSummary {
    // A derived, internally tagged enum of plain fields serialises to an object with `kind`.
    let serde_json::Value::Object(fields) = serde_json::to_value(variant).expect("an attention variant serialises")
    else {
        unreachable!("an internally tagged enum serialises to an object")
    };
    let mut settings: std::collections::BTreeMap<String, serde_json::Value> = fields.into_iter().collect();
    let kind = match settings.remove("kind") {
        Some(serde_json::Value::String(kind)) => kind,
        other => unreachable!("serde's tag is a string, got {other:?}"),
    };
    kiln_format::run::AttentionSummary {
        kind,
        settings,
        layers: cfg.attention_layers.clone(),
        transfer: cfg.attention_transfer.is_some(),
    }
}

/// Validates everything, takes the run directory's lock, checks what the directory holds
/// against `on_existing` and writes `config.json`: the strategy, whether this resumes, and
/// the lock (held until it is dropped).
fn open_run<B: Backend>(
    model: &SequenceClassifier<B>,
    tok: &TextTokenizer,
    data: &TaskData,
    cfg: &TrainConfig,
    plugins: &[std::sync::Arc<dyn crate::strategy::Strategy>],
    run: &RunDir,
    on_existing: OnExisting,
) -> Result<(Tuning, bool, crate::run_dir::RunLock), TrainError> {
    let limits = crate::validate::ModelLimits::of(&model.bert);
    crate::validate::validate_train(
        &TrainConfig {
            max_length: tok.max_length(),
            ..cfg.clone()
        },
        &limits,
    )?;
    let tuning = plugins
        .iter()
        .try_fold(Tuning::new(&cfg.tuning)?, |t, p| t.with(p.clone()))?;
    tuning.check_fits(&crate::strategy::TunableModel::shape(model))?;
    let lock = run.lock()?;
    let config_json =
        crate::run_files::RunConfig::new(data.task.short_name(), cfg.clone(), run.provenance().cloned()).to_value();
    let resumed = check_run_dir(run, on_existing, &config_json)?;
    checkpoint::write_atomic(
        &run.0.join("config.json"),
        serde_json::to_string_pretty(&config_json).expect("json").as_bytes(),
    )?;
    Ok((tuning, resumed, lock))
}

/// The examples a run trains on (after `max_train_examples`), their inputs and lengths, the
/// batching plan and the step counts.
pub struct TrainSet<'a> {
    /// Training examples.
    pub examples: &'a [Example],
    /// Their inputs, in order.
    pub inputs: Vec<TextInput>,
    /// Their lengths in characters (length grouping).
    pub lengths: Vec<usize>,
    /// Shuffling and grouping.
    pub plan: BatchPlan,
    /// Micro-batch and step counts.
    pub steps: crate::objective::Steps,
}

impl<'a> TrainSet<'a> {
    /// The training set of `data` under `cfg`.
    ///
    /// # Errors
    /// [`TrainError::Invalid`] when the training or dev set is empty.
    pub fn new(data: &'a TaskData, cfg: &TrainConfig) -> Result<Self, TrainError> {
        let examples = &data.train[..cfg.max_train_examples.unwrap_or(usize::MAX).min(data.train.len())];
        if examples.is_empty() || data.dev.is_empty() {
            return Err(TrainError::Invalid("training and dev sets must not be empty".into()));
        }
        let inputs: Vec<TextInput> = examples.iter().map(|e| e.input.clone()).collect();
        let lengths = inputs
            .iter()
            .map(|t| match t {
                TextInput::Single(a) => a.len(),
                TextInput::Pair(a, b) => a.len() + b.len(),
            })
            .collect();
        let batches_per_epoch = examples.len().div_ceil(cfg.batch_size.max(1));
        Ok(Self {
            examples,
            inputs,
            lengths,
            plan: BatchPlan {
                batch_size: cfg.batch_size,
                shuffle: true,
                length_group_factor: cfg.length_group_factor,
                seed: cfg.seed,
            },
            steps: crate::objective::Steps::new(cfg.epochs, batches_per_epoch, cfg.grad_accum, cfg.warmup_ratio),
        })
    }

    /// The encoded tensors of the examples at `indices`.
    pub fn tensors<B: Backend>(
        &self,
        tok: &TextTokenizer,
        indices: &[usize],
        device: &B::Device,
    ) -> Result<[Tensor<B, 2, Int>; 3], TrainError> {
        Ok(tensors::<B>(&encode_indices(tok, &self.inputs, indices)?, device))
    }
}

/// Converts the attention as configured and, on a fresh run, runs attention transfer
/// (written to `transfer.jsonl`); on resume the checkpoint holds the transferred maps.
fn convert_attention<B: AutodiffBackend>(
    mut model: SequenceClassifier<B>,
    cfg: &TrainConfig,
    set: &TrainSet<'_>,
    tok: &TextTokenizer,
    run: &RunDir,
    resumed: bool,
    device: &B::Device,
) -> Result<SequenceClassifier<B>, TrainError> {
    let Some(variant) = &cfg.attention else {
        return Ok(model);
    };
    // `attention_layers` was range-checked by `validate_train`.
    let dropout = cfg.dropout.unwrap_or(0.1);
    let teacher = cfg
        .attention_transfer
        .as_ref()
        .map(|_| crate::transfer::teacher_of(&model));
    model
        .bert
        .convert_attention(variant, cfg.attention_layers.as_deref(), dropout);
    tracing::info!(?variant, layers = ?cfg.attention_layers, "attention converted");
    let (Some(teacher), Some(tc), false) = (teacher, &cfg.attention_transfer, resumed) else {
        return Ok(model);
    };
    let mut batches = Vec::new();
    let order: Vec<usize> = (0..set.examples.len()).collect();
    for chunk in order.chunks(tc.batch_size.max(1)).take(tc.steps.max(1)) {
        let enc = encode_indices(tok, &set.inputs, chunk)?;
        batches.push(crate::transfer::TransferBatch {
            ids: enc.input_ids,
            types: enc.token_type_ids,
            mask: enc.attention_mask,
            shape: [enc.batch, enc.seq],
        });
    }
    let (student, losses) = crate::transfer::attention_transfer(model, &teacher, &batches, tc, device);
    let text: String = losses
        .iter()
        .enumerate()
        .map(|(step, &loss)| {
            let line = crate::run_files::TransferLine { step, loss };
            format!(
                "{}\n",
                serde_json::to_string(&line).expect("a transfer line serialises")
            )
        })
        .collect();
    checkpoint::write_atomic(&run.0.join("transfer.jsonl"), text.as_bytes())?;
    tracing::info!(
        first = losses.first().copied().unwrap_or(f64::NAN),
        last = losses.last().copied().unwrap_or(f64::NAN),
        "attention transfer done"
    );
    Ok(student)
}

/// The strategy's gradient mask: Child-Tuning_F's Bernoulli draw, or Child-Tuning_D's
/// Fisher mask computed here over the training set.
fn gradient_mask<B: AutodiffBackend>(
    tuning: &Tuning,
    model: &SequenceClassifier<B>,
    set: &TrainSet<'_>,
    tok: &TextTokenizer,
    cfg: &TrainConfig,
    device: &B::Device,
) -> Result<Option<ChildMask<B::InnerBackend>>, TrainError> {
    Ok(match tuning.gradient_mask() {
        Some(GradientMask::Fisher { keep: reserve_p }) => {
            let order: Vec<usize> = (0..set.examples.len()).collect();
            let chunks: Vec<&[usize]> = order.chunks(cfg.batch_size.max(1)).collect();
            tracing::info!(
                batches = chunks.len(),
                reserve_p,
                "Child-Tuning_D: Fisher pass over the training set"
            );
            Some(child_tuning_d_mask(model, chunks.len(), reserve_p, |m, i| {
                B::seed(device, mix(cfg.seed, FISHER_STREAM + i as u64));
                let [ids, types, mask] = set.tensors::<B>(tok, chunks[i], device)?;
                let logits = m.forward(ids, types, mask);
                Ok::<_, TrainError>(m.loss(logits, &targets::<B>(set.examples, chunks[i], device)?))
            })?)
        }
        Some(GradientMask::Bernoulli { keep }) => Some(ChildMask::Bernoulli(keep)),
        None => None,
    })
}

/// Loads a task's `train.tsv` and dev file from `glue_dir/<TaskDir>/`.
///
/// # Errors
/// [`TrainError::Glue`], naming the file and line.
pub fn load_glue(glue_dir: &Path, task: GlueTask) -> Result<TaskData, TrainError> {
    let dir = glue_dir.join(task.dir_name());
    let load = |f: &str| {
        task.load(dir.join(f), kiln_data::OnMalformed::Error)
            .map_err(TrainError::from)
    };
    Ok(TaskData {
        task,
        train: load("train.tsv")?.examples,
        dev: load(task.dev_file())?.examples,
    })
}
