//! The fine-tuning loop for sequence classification/regression on GLUE-style data.
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

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorData;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_data::batching::{encode_indices, epoch_batches, BatchPlan};
use kiln_data::metrics::{glue_metrics, Predictions, TaskMetrics};
use kiln_data::{BatchEncoding, DataError, Example, GlueTask, Label, TextInput, TextTokenizer};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointError, TrainState};
use crate::classifier::{SequenceClassifier, Targets};
use crate::optim::{AdamW, AdamWConfig, ParamGroup};
use crate::params::param_infos;
use crate::run_dir::OnExisting;
use kiln_model::roles::ModelRoles;

use crate::run_files::MetricsLine;

use crate::strategy::{
    child_tuning_d_mask, load_tuned, ChildMask, GradientMask, StrategyConfig, StrategyError, TrainableReport,
    TunedIoError, Tuning,
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

/// Final numbers of a run (`results.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainResults {
    /// Task name.
    pub task: String,
    /// Metrics of the last evaluation.
    pub final_metrics: TaskMetrics,
    /// Best primary metric and the step it was reached.
    pub best: Option<(f64, usize)>,
    /// Optimizer steps done.
    pub steps: usize,
    /// Wall time of this process's training, seconds.
    pub wall_time_s: f64,
    /// Training examples per second (this process).
    pub train_seq_per_s: f64,
    /// Peak resident memory in MiB (Linux), if known.
    pub peak_rss_mb: Option<f64>,
    /// Whether the run was resumed from a checkpoint.
    pub resumed: bool,
    /// Strategy name (`full`, `lora`, `bit_fit+child_tuning_f`, ...).
    pub strategy: String,
    /// Trainable parameters (head included).
    pub trainable_params: usize,
    /// All parameters, inserted modules included.
    pub total_params: usize,
}

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

struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    /// Keeps only lines of steps ≤ `keep_until` (a resumed run rewrites what followed).
    fn open(path: PathBuf, keep_until: Option<usize>) -> Result<Self, TrainError> {
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
        Ok(Self { path })
    }

    fn write(&self, line: MetricsLine) -> Result<(), TrainError> {
        self.write_value(serde_json::to_value(line).expect("a metrics line serialises"))
    }

    fn write_value(&self, value: serde_json::Value) -> Result<(), TrainError> {
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
const INSERT_STREAM: u64 = u64::MAX;
const FISHER_STREAM: u64 = 1 << 48;

fn mix(seed: u64, x: u64) -> u64 {
    kiln_data::batching::SplitMix64(seed ^ x.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64()
}

/// Applies the run-directory policy ([`crate::run_dir`]) under the lock: a new run needs a
/// directory without one; a resume needs a complete checkpoint (finishing an interrupted
/// checkpoint swap first) and, unless allowed, the run's own configuration. Returns whether
/// training resumes.
fn check_run_dir(run: &RunDir, on_existing: OnExisting, config_json: &serde_json::Value) -> Result<bool, TrainError> {
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
    let start = Instant::now();
    let limits = crate::validate::ModelLimits::of(&model.bert);
    crate::validate::validate_train(
        &TrainConfig {
            max_length: tok.max_length(),
            ..cfg.clone()
        },
        &limits,
    )?;
    let tuning = Tuning::new(&cfg.tuning)?;
    tuning.check_fits(&model.bert)?;
    let _lock = run.lock()?;
    let config_json =
        crate::run_files::RunConfig::new(data.task.short_name(), cfg.clone(), run.provenance().cloned()).to_value();
    let resumed = check_run_dir(run, on_existing.into(), &config_json)?;
    checkpoint::write_atomic(
        &run.0.join("config.json"),
        serde_json::to_string_pretty(&config_json).expect("json").as_bytes(),
    )?;
    let mut model = model;
    if let Some(p) = cfg.dropout {
        model.set_dropout(p);
    }
    let train_examples = &data.train[..cfg.max_train_examples.unwrap_or(usize::MAX).min(data.train.len())];
    if train_examples.is_empty() || data.dev.is_empty() {
        return Err(TrainError::Invalid("training and dev sets must not be empty".into()));
    }
    let inputs: Vec<TextInput> = train_examples.iter().map(|e| e.input.clone()).collect();
    let lengths: Vec<usize> = inputs
        .iter()
        .map(|t| match t {
            TextInput::Single(a) => a.len(),
            TextInput::Pair(a, b) => a.len() + b.len(),
        })
        .collect();
    let plan = BatchPlan {
        batch_size: cfg.batch_size,
        shuffle: true,
        length_group_factor: cfg.length_group_factor,
        seed: cfg.seed,
    };
    let batches_per_epoch = train_examples.len().div_ceil(cfg.batch_size.max(1));
    let accum = cfg.grad_accum.max(1);
    let steps_per_epoch = batches_per_epoch.div_ceil(accum);
    let total_steps = steps_per_epoch * cfg.epochs;
    let warmup = (total_steps as f64 * cfg.warmup_ratio).ceil() as usize;

    let mut state = TrainState {
        global_step: 0,
        epoch: 0,
        next_batch: 0,
        best: None,
        seed: cfg.seed,
    };
    B::seed(device, mix(cfg.seed, INSERT_STREAM));
    if let Some(variant) = &cfg.attention {
        // `attention_layers` was range-checked by `validate_train` above.
        let dropout = cfg.dropout.unwrap_or(0.1);
        let teacher = cfg
            .attention_transfer
            .as_ref()
            .map(|_| crate::transfer::teacher_of(&model));
        model
            .bert
            .convert_attention(variant, cfg.attention_layers.as_deref(), dropout);
        tracing::info!(?variant, layers = ?cfg.attention_layers, "attention converted");
        // On resume the checkpoint holds the transferred (and fine-tuned) feature maps.
        if let (Some(teacher), Some(tc), false) = (teacher, &cfg.attention_transfer, resumed) {
            let mut batches = Vec::new();
            let order: Vec<usize> = (0..train_examples.len()).collect();
            for chunk in order.chunks(tc.batch_size.max(1)).take(tc.steps.max(1)) {
                let enc = encode_indices(tok, &inputs, chunk)?;
                batches.push(crate::transfer::TransferBatch {
                    ids: enc.input_ids,
                    types: enc.token_type_ids,
                    mask: enc.attention_mask,
                    shape: [enc.batch, enc.seq],
                });
            }
            let (student, losses) = crate::transfer::attention_transfer(model, &teacher, &batches, tc, device);
            model = student;
            let text: String = losses
                .iter()
                .enumerate()
                .map(|(i, l)| format!("{}\n", serde_json::json!({"kind": "transfer", "step": i, "loss": l})))
                .collect();
            checkpoint::write_atomic(&run.0.join("transfer.jsonl"), text.as_bytes())?;
            tracing::info!(
                first = losses.first().copied().unwrap_or(f64::NAN),
                last = losses.last().copied().unwrap_or(f64::NAN),
                "attention transfer done"
            );
        }
    }
    let mut model = tuning.insert(model, device)?;
    // Child-Tuning_D's Fisher pass sees the pretrained weights, also when resuming (the mask
    // is recomputed, not stored: it is a function of the seed and the pretrained model).
    let child_mask: Option<ChildMask<B::InnerBackend>> = match tuning.gradient_mask() {
        Some(GradientMask::Fisher { keep: reserve_p }) => {
            let order: Vec<usize> = (0..train_examples.len()).collect();
            let chunks: Vec<&[usize]> = order.chunks(cfg.batch_size.max(1)).collect();
            tracing::info!(
                batches = chunks.len(),
                reserve_p,
                "Child-Tuning_D: Fisher pass over the training set"
            );
            Some(child_tuning_d_mask(&model, chunks.len(), reserve_p, |m, i| {
                B::seed(device, mix(cfg.seed, FISHER_STREAM + i as u64));
                let enc = encode_indices(tok, &inputs, chunks[i])?;
                let [ids, types, mask] = tensors::<B>(&enc, device);
                let logits = m.forward(ids, types, mask);
                Ok::<_, TrainError>(m.loss(logits, &targets::<B>(train_examples, chunks[i], device)?))
            })?)
        }
        Some(GradientMask::Bernoulli { keep }) => Some(ChildMask::Bernoulli(keep)),
        None => None,
    };
    if resumed {
        if tuning.restricts() {
            model = load_tuned(model, &tuning, &run.last().join(checkpoint::TUNED_FILE))?;
        } else {
            checkpoint::load_model(&mut model, &run.last().join(checkpoint::MODEL_FILE))?;
        }
    }
    let model_infos = param_infos(&model);
    let roles = model.param_roles();
    let report = TrainableReport::new(&tuning, &model_infos, &roles);
    tracing::info!(strategy = %report.strategy, trainable = report.trainable, total = report.total, percent = format!("{:.3}", report.percent), "trainable parameters");
    checkpoint::write_atomic(
        &run.0.join("trainable.json"),
        serde_json::to_string_pretty(&report).expect("json").as_bytes(),
    )?;
    let num_layers = model.bert.num_layers();
    let group_at = |info: &crate::params::ParamInfo, epoch: usize| match roles.get(info.id) {
        Some(role) => ParamGroup {
            trainable: tuning.trains_at(role, epoch, num_layers),
            lr_scale: tuning.lr_scale(role, num_layers),
            ..ParamGroup::hf_default(info)
        },
        None => ParamGroup {
            trainable: false,
            ..ParamGroup::hf_default(info)
        },
    };
    let mut model = tuning.freeze(model);
    let mut opt = AdamW::<B::InnerBackend>::new(cfg.adamw, &model_infos, |info| group_at(info, 0));
    if resumed {
        state = checkpoint::load_optimizer_and_state(&run.last(), &mut opt, device)?;
        tracing::info!(
            step = state.global_step,
            epoch = state.epoch,
            "resuming from {}",
            run.last().display()
        );
    }
    let log = MetricsLog::open(run.metrics(), Some(state.global_step).filter(|_| resumed))?;
    let dynamics = match cfg.data_map {
        true => Some(MetricsLog::open(
            run.0.join("dynamics.jsonl"),
            Some(state.global_step).filter(|_| resumed),
        )?),
        false => None,
    };
    let bar = ProgressBar::new(total_steps as u64).with_style(
        ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len} steps  {msg}  ETA {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_prefix(data.task.short_name());
    bar.set_position(state.global_step as u64);
    let mut seen_examples = 0usize;
    let mut last_metrics = None;
    let mut window_loss = 0.0;
    let mut window_n = 0usize;
    let mut accumulator = GradientsAccumulator::new();
    let mut in_accum = 0usize;
    let checkpoint_dir = run.last();
    let train_start = Instant::now();

    'epochs: for epoch in state.epoch..cfg.epochs {
        if tuning.unfreezes_gradually() {
            model = tuning.freeze_at(model, epoch);
            for info in &model_infos {
                opt.set_group(info.id, group_at(info, epoch));
            }
            tracing::info!(epoch, "gradual unfreezing: depth {epoch} and above train");
        }
        let batches = epoch_batches(&plan, &lengths, epoch as u64);
        let first = if epoch == state.epoch { state.next_batch } else { 0 };
        for (bi, batch) in batches.iter().enumerate().skip(first) {
            let micro = (epoch * batches_per_epoch + bi) as u64;
            B::seed(device, mix(cfg.seed, micro));
            let enc = encode_indices(tok, &inputs, batch)?;
            let [ids, types, mask] = tensors::<B>(&enc, device);
            let logits = model.forward(ids, types, mask);
            let loss = model.loss(logits, &targets::<B>(train_examples, batch, device)?);
            let loss_value = loss.clone().into_scalar().elem::<f64>();
            if !loss_value.is_finite() {
                return Err(TrainError::NonFinite {
                    what: "loss",
                    step: state.global_step + 1,
                    epoch,
                    checkpoint: checkpoint_dir.join("state.json").exists().then_some(checkpoint_dir),
                });
            }
            let loss = if accum > 1 { loss.div_scalar(accum as f64) } else { loss };
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            accumulator.accumulate(&model, grads);
            in_accum += 1;
            window_loss += loss_value;
            window_n += 1;
            seen_examples += batch.len();
            let last_of_epoch = bi + 1 == batches.len();
            if in_accum < accum && !last_of_epoch {
                continue;
            }
            in_accum = 0;
            let lr = tuning.learning_rate(cfg.lr, state.global_step, warmup, total_steps);
            let mask = child_mask
                .as_ref()
                .map(|m| m as &dyn crate::optim::GradientTransform<B::InnerBackend>);
            let (next, stats) = opt.step_masked(model, accumulator.grads(), lr, mask);
            model = next;
            if !stats.grad_norm.is_finite() {
                return Err(TrainError::NonFinite {
                    what: "gradient norm",
                    step: state.global_step + 1,
                    epoch,
                    checkpoint: checkpoint_dir.join("state.json").exists().then_some(checkpoint_dir),
                });
            }
            state.global_step += 1;
            state.epoch = epoch;
            state.next_batch = bi + 1;
            if last_of_epoch {
                state.epoch = epoch + 1;
                state.next_batch = 0;
            }
            let elapsed = train_start.elapsed().as_secs_f64();
            let seq_per_s = seen_examples as f64 / elapsed.max(1e-9);
            bar.set_position(state.global_step as u64);
            bar.set_message(format!(
                "loss {:.4}  lr {lr:.2e}  {seq_per_s:.1} seq/s",
                window_loss / window_n.max(1) as f64
            ));
            if state.global_step.is_multiple_of(cfg.log_every.max(1)) {
                if bar.is_hidden() {
                    // No terminal (a log file, CI): the bar is invisible, so log the window instead.
                    let loss = window_loss / window_n.max(1) as f64;
                    tracing::info!(
                        step = state.global_step,
                        total = total_steps,
                        epoch,
                        loss,
                        lr,
                        seq_per_s,
                        "train"
                    );
                }
                log.write(MetricsLine::Train {
                    step: state.global_step,
                    epoch,
                    loss: window_loss / window_n.max(1) as f64,
                    lr,
                    grad_norm: stats.grad_norm,
                    seq_per_s,
                })?;
                window_loss = 0.0;
                window_n = 0;
            }
            let eval_now = last_of_epoch
                || cfg
                    .eval_every
                    .is_some_and(|n| state.global_step.is_multiple_of(n.max(1)));
            let stopping = stop.step == Some(state.global_step);
            if eval_now {
                let metrics = evaluate(&model.valid(), tok, data.task, &data.dev, cfg.eval_batch_size, device)?;
                let value = metrics.primary_value();
                bar.println(format!(
                    "{} step {} epoch {}: dev {} = {:.4}",
                    data.task.short_name(),
                    state.global_step,
                    epoch,
                    metrics.primary,
                    value
                ));
                tracing::info!(step = state.global_step, epoch, metric = %metrics.primary, value, "evaluation");
                log.write(MetricsLine::Eval {
                    step: state.global_step,
                    epoch,
                    metrics: metrics.values.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                })?;
                if cfg.data_map && last_of_epoch && !data.task.is_regression() {
                    let (p_gold, correct) =
                        gold_probabilities(&model.valid(), tok, train_examples, cfg.eval_batch_size, device)?;
                    let line = serde_json::json!({ "epoch": epoch, "step": state.global_step, "p_gold": p_gold, "correct": correct });
                    if let Some(d) = &dynamics {
                        d.write_value(line)?;
                    }
                }
                if state.best.is_none_or(|(b, _)| value > b) {
                    state.best = Some((value, state.global_step));
                    checkpoint::write_weights(&run.best(), &model, &tuning)?;
                }
                last_metrics = Some(metrics);
            }
            if eval_now || stopping {
                checkpoint::save(&checkpoint_dir, &model, &tuning, &opt, &state)?;
            }
            if stopping {
                break 'epochs;
            }
        }
    }
    bar.finish_and_clear();
    let final_metrics = match last_metrics {
        Some(m) => m,
        None => evaluate(&model.valid(), tok, data.task, &data.dev, cfg.eval_batch_size, device)?,
    };
    let wall = start.elapsed().as_secs_f64();
    let results = TrainResults {
        task: data.task.short_name().into(),
        final_metrics,
        best: state.best,
        steps: state.global_step,
        wall_time_s: wall,
        train_seq_per_s: seen_examples as f64 / train_start.elapsed().as_secs_f64().max(1e-9),
        peak_rss_mb: peak_rss_mb(),
        resumed,
        strategy: report.strategy,
        trainable_params: report.trainable,
        total_params: report.total,
    };
    checkpoint::write_atomic(
        &run.0.join("results.json"),
        serde_json::to_string_pretty(&results).expect("json").as_bytes(),
    )?;
    Ok((model, results))
}

/// Loads a task's `train.tsv` and dev file from `glue_dir/<TaskDir>/`.
///
/// # Errors
/// [`TrainError::Invalid`] wrapping the loader's message (file and line).
pub fn load_glue(glue_dir: &Path, task: GlueTask) -> Result<TaskData, TrainError> {
    let dir = glue_dir.join(task.dir_name());
    let load = |f: &str| {
        task.load(dir.join(f), kiln_data::OnMalformed::Error)
            .map_err(|e| TrainError::Invalid(e.to_string()))
    };
    Ok(TaskData {
        task,
        train: load("train.tsv")?.examples,
        dev: load(task.dev_file())?.examples,
    })
}
