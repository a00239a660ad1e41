//! Causal language modelling with the GPT decoder: next-token loss, perplexity on a held-out
//! stream, and a training loop over seeded random windows of a token stream (pretraining
//! from scratch, or fine-tuning a converted decoder with only some parameters trainable).
//!
//! Training runs through the same loop and strategies as classification (kiln's AdamW, decay
//! off for biases and LayerNorms; linear warm-up and decay unless a strategy schedules).

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorData;
use kiln_data::lm::eval_windows;
use kiln_data::metrics::TaskMetrics;
use kiln_model::{Capture, Gpt2Model};
use serde::{Deserialize, Serialize};

use crate::callbacks::{Control, TrainEvent};
use crate::objective::causal_lm::CausalLm;
use crate::objective::masked_lm::{MaskedLm, MaskedLmModel, Masking};
use crate::objective::Objective;
use crate::optim::AdamWConfig;
use crate::params::param_infos;
use crate::run_dir::OnExisting;
use crate::strategy::{child_tuning_d_mask, ChildMask, GradientMask, Tuning};
use crate::train_loop::{LoopSettings, Outcome, Session};
use crate::trainer::{RunDir, StopAt, TrainError};
use kiln_model::roles::ModelRoles;

/// Settings of [`train_lm`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LmTrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Windows per step.
    pub batch_size: usize,
    /// Predicted tokens per window (the window holds one more).
    pub block_len: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps (then linear decay to 0 at `steps`).
    pub warmup_steps: usize,
    /// AdamW settings.
    pub adamw: AdamWConfig,
    /// Seed of the window offsets (and of nothing else).
    pub seed: u64,
    /// Evaluate every this many steps (0 = only at the end).
    pub eval_every: usize,
    /// Held-out tokens used by the periodic evaluations (0 = all); the final one uses all.
    pub eval_tokens: usize,
}

impl Default for LmTrainConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch_size: 16,
            block_len: 128,
            lr: 1e-3,
            warmup_steps: 50,
            adamw: AdamWConfig {
                weight_decay: 0.1,
                ..AdamWConfig::default()
            },
            seed: 42,
            eval_every: 200,
            eval_tokens: 16_384,
        }
    }
}

/// Mean next-token cross-entropy (nats) of `windows` `[batch, n + 1]`: positions `0..n`
/// predict `1..=n`.
pub fn next_token_loss<B: Backend>(model: &Gpt2Model<B>, windows: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let [batch, len] = windows.dims();
    let n = len - 1;
    let inputs = windows.clone().slice([0..batch, 0..n]);
    let targets = windows.slice([0..batch, 1..len]).reshape([batch, n, 1]);
    let hidden = model.forward(inputs, None, Capture::none()).last_hidden_state;
    let log_probs = log_softmax(model.lm_logits(hidden), 2);
    log_probs.gather(2, targets).mean().neg()
}

/// Held-out quality: mean negative log-likelihood per token and its exponential.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Perplexity {
    /// Mean next-token cross-entropy in nats.
    pub nats_per_token: f64,
    /// `exp(nats_per_token)`.
    pub perplexity: f64,
    /// Tokens predicted.
    pub tokens: usize,
}

/// Perplexity of `model` on `stream`: consecutive windows of `block_len` predicted tokens
/// (each with one token of context from the previous window), `batch_size` windows per
/// forward pass, every token after the first predicted once.
pub fn perplexity<B: Backend>(
    model: &Gpt2Model<B>,
    stream: &[u32],
    block_len: usize,
    batch_size: usize,
    device: &B::Device,
) -> Perplexity {
    let windows = eval_windows(stream, block_len);
    let mut total = 0.0;
    let mut tokens = 0;
    for group in windows.chunks(batch_size.max(1)) {
        let ids: Vec<i64> = group.iter().flat_map(|w| w.iter().map(|&t| i64::from(t))).collect();
        let batch = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [group.len(), block_len + 1]), device);
        let mean = next_token_loss(model, batch).into_scalar().elem::<f64>();
        total += mean * (group.len() * block_len) as f64;
        tokens += group.len() * block_len;
    }
    let nats = total / tokens.max(1) as f64;
    Perplexity {
        nats_per_token: nats,
        perplexity: nats.exp(),
        tokens,
    }
}

/// One logged optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LmStep {
    /// Step index (from 0).
    pub step: usize,
    /// Training loss of the step's batch (nats/token).
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// What a run of [`train_lm`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmHistory {
    /// Every step.
    pub steps: Vec<LmStep>,
    /// `(steps done, held-out perplexity)`; the last entry is on the whole held-out stream.
    pub evals: Vec<(usize, Perplexity)>,
    /// Training wall time in seconds (evaluations excluded).
    pub train_seconds: f64,
    /// Tokens predicted during training.
    pub train_tokens: usize,
    /// Trainable parameters.
    pub trainable: usize,
    /// All parameters, inserted ones included.
    pub total: usize,
}

/// Errors of [`train_lm`].
#[derive(Debug, thiserror::Error)]
pub enum LmError {
    /// The training stream is shorter than one window.
    #[error("the training stream has {tokens} tokens, fewer than one window of {window}")]
    TooShort {
        /// Tokens in the stream.
        tokens: usize,
        /// Window length (`block_len + 1`).
        window: usize,
    },
    /// The window is longer than the model's position embeddings.
    #[error("block_len {block_len} exceeds the model's {max} positions")]
    BlockTooLong {
        /// Requested block length.
        block_len: usize,
        /// Position embeddings.
        max: usize,
    },
    /// Nothing would train.
    #[error("no parameter matches the trainable selection")]
    NothingTrains,
    /// A configuration value out of range.
    #[error(transparent)]
    Config(#[from] crate::validate::ConfigError),
    /// A strategy that does not fit the decoder (or cannot tune it).
    #[error(transparent)]
    Strategy(#[from] crate::strategy::StrategyError),
    /// A non-finite loss or gradient.
    #[error("non-finite {what} at step {step}")]
    NonFinite {
        /// `"loss"` or `"gradient norm"`.
        what: &'static str,
        /// Step (from 0).
        step: usize,
    },
    /// Another failure of the training loop.
    #[error(transparent)]
    Train(Box<crate::trainer::TrainError>),
}

impl From<kiln_format::run::RunFileError> for LmError {
    fn from(e: kiln_format::run::RunFileError) -> Self {
        Self::from(TrainError::from(e))
    }
}

impl From<crate::trainer::TrainError> for LmError {
    fn from(e: crate::trainer::TrainError) -> Self {
        match e {
            crate::trainer::TrainError::NonFinite { what, step, .. } => Self::NonFinite {
                what,
                step: step.saturating_sub(1),
            },
            other => Self::Train(Box::new(other)),
        }
    }
}

/// Trains `model` with `tuning` (its modules inserted here, drawn from the backend RNG) on
/// random windows of `train` for `cfg.steps` steps, evaluating perplexity on `held_out`:
/// [`crate::objective::causal_lm::CausalLm`] through the same loop as classification, so
/// every strategy (LoRA, adapters, BitFit, (IA)³, masks, Child-Tuning, ULMFiT's schedules)
/// tunes the decoder, and fixed mechanism parameters (Performer's `ω`) never train.
/// `on_step` sees each step (progress bars).
///
/// # Errors
/// [`LmError`]: a stream or block that does not fit, a strategy that does not fit, an empty
/// selection, a non-finite loss.
pub fn train_lm<B: AutodiffBackend>(
    model: Gpt2Model<B>,
    train: &[u32],
    held_out: &[u32],
    cfg: &LmTrainConfig,
    tuning: &Tuning,
    mut on_step: impl FnMut(&LmStep),
    device: &B::Device,
) -> Result<(Gpt2Model<B>, LmHistory), LmError> {
    check_causal_inputs(&model, train, cfg)?;
    let model = tuning.insert(model, device)?;
    let objective = CausalLm { train, held_out, cfg };
    let done = train_objective(&objective, model, cfg, tuning, None, &mut on_step, device)?;
    Ok((done.model, done.history))
}

/// The checks of [`train_lm`] before anything is built: the configuration, a stream of at
/// least one window, a block within the model's positions.
fn check_causal_inputs<B: Backend>(model: &Gpt2Model<B>, train: &[u32], cfg: &LmTrainConfig) -> Result<(), LmError> {
    crate::validate::validate_lm(cfg)?;
    let window = cfg.block_len + 1;
    if train.len() < window {
        return Err(LmError::TooShort {
            tokens: train.len(),
            window,
        });
    }
    if cfg.block_len > model.max_positions() {
        return Err(LmError::BlockTooLong {
            block_len: cfg.block_len,
            max: model.max_positions(),
        });
    }
    Ok(())
}

/// The task name of a causal-LM run's `config.json` and `results.json`.
pub const CAUSAL_LM_TASK: &str = "causal-lm";

/// The task name of a masked-LM run's `config.json` and `results.json`.
pub const MASKED_LM_TASK: &str = "masked-lm";

/// Whether `task` (a run's `config.json`) names a language-model run of this module.
pub fn is_lm_task(task: &str) -> bool {
    task == CAUSAL_LM_TASK || task == MASKED_LM_TASK
}

/// The training part of a language-model run's `config.json`: the loop's settings, the
/// strategy and, for a masked-LM run, the masking (what `lens analyse` and a resume need to
/// rebuild the model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmRunConfig {
    /// Steps, windows, learning rate, seed …
    pub train: LmTrainConfig,
    /// Strategy components (empty: full fine-tuning).
    #[serde(default)]
    pub tuning: Vec<crate::strategy::StrategyConfig>,
    /// How positions are masked (masked-LM runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masking: Option<Masking>,
}

/// `config.json` of a language-model run (task [`CAUSAL_LM_TASK`] or [`MASKED_LM_TASK`]).
pub type LmRunFile = kiln_format::run::RunConfig<LmRunConfig>;

/// Where a language-model run writes, and what it does with a directory that already holds a
/// run (as [`crate::trainer::train`]: refuse, overwrite or resume).
#[derive(Debug, Clone)]
pub struct LmRun<'a> {
    /// The run directory (locked while training writes).
    pub dir: &'a RunDir,
    /// Refuse, overwrite or resume an existing run.
    pub on_existing: OnExisting,
    /// Stop early after a step, writing the `last` checkpoint (tests of resume).
    pub stop: StopAt,
}

/// [`train_lm`] writing a run directory, as classification runs do: `config.json`
/// ([`LmRunFile`], with the run's provenance), `metrics.jsonl` (every step and evaluation,
/// perplexity the primary metric), `checkpoints/last` (each evaluation) and
/// `checkpoints/best` (lowest held-out perplexity), `trainable.json` and `results.json`.
/// Resuming continues from `checkpoints/last` and ends bit-identical to an uninterrupted run;
/// a resume with a different configuration or model is refused. The history covers this
/// process's steps.
///
/// # Errors
/// As [`train_lm`], plus [`LmError::Train`] for the run directory (locked by another
/// process, an existing run, nothing to resume, a changed configuration) and checkpoint I/O.
#[allow(clippy::too_many_arguments)]
pub fn train_lm_run<B: AutodiffBackend>(
    model: Gpt2Model<B>,
    train: &[u32],
    held_out: &[u32],
    cfg: &LmTrainConfig,
    tuning: &Tuning,
    run: &LmRun<'_>,
    mut on_step: impl FnMut(&LmStep),
    device: &B::Device,
) -> Result<(Gpt2Model<B>, LmHistory), LmError> {
    check_causal_inputs(&model, train, cfg)?;
    let objective = CausalLm { train, held_out, cfg };
    let task = (CAUSAL_LM_TASK, None);
    train_in_dir(&objective, model, cfg, task, tuning, run, &mut on_step, device)
}

/// [`train_mlm`] writing a run directory, exactly as [`train_lm_run`] (task
/// [`MASKED_LM_TASK`], the masking recorded in `config.json`, masked-token perplexity the
/// primary metric; resume bit-identical, a changed configuration refused).
///
/// # Errors
/// As [`train_mlm`] and [`train_lm_run`].
#[allow(clippy::too_many_arguments)]
pub fn train_mlm_run<B: AutodiffBackend>(
    model: MaskedLmModel<B>,
    train: &[u32],
    held_out: &[u32],
    cfg: &LmTrainConfig,
    masking: Masking,
    tuning: &Tuning,
    run: &LmRun<'_>,
    mut on_step: impl FnMut(&LmStep),
    device: &B::Device,
) -> Result<(MaskedLmModel<B>, LmHistory), LmError> {
    check_masked_inputs(&model, train, cfg)?;
    let objective = MaskedLm {
        train,
        held_out,
        cfg,
        masking,
    };
    let task = (MASKED_LM_TASK, Some(masking));
    train_in_dir(&objective, model, cfg, task, tuning, run, &mut on_step, device)
}

/// The run-directory part shared by [`train_lm_run`] and [`train_mlm_run`]: lock, write or
/// check `config.json` (the task name, `cfg`, the strategy and, for masked LM, the masking), insert the strategy, train (resuming where `run` says so) and write
/// `results.json`.
#[allow(clippy::too_many_arguments)]
fn train_in_dir<B: AutodiffBackend, O: Objective<B>>(
    objective: &O,
    model: O::Model,
    cfg: &LmTrainConfig,
    (task, masking): (&str, Option<Masking>),
    tuning: &Tuning,
    run: &LmRun<'_>,
    on_step: &mut dyn FnMut(&LmStep),
    device: &B::Device,
) -> Result<(O::Model, LmHistory), LmError> {
    let start = std::time::Instant::now();
    tuning.check_fits(&crate::strategy::TunableModel::shape(&model))?;
    let _lock = run.dir.lock().map_err(TrainError::from)?;
    let config = LmRunConfig {
        train: cfg.clone(),
        tuning: tuning.components.clone(),
        masking,
    };
    let config = LmRunFile::new(task, config, run.dir.provenance().cloned());
    let resumed = crate::trainer::check_run_dir(run.dir, run.on_existing, &config.to_value())?;
    config.write(&run.dir.0)?;
    let model = tuning.insert(model, device)?;
    let written = Written {
        dir: run.dir,
        stop: run.stop,
        resumed,
    };
    let done = train_objective(objective, model, cfg, tuning, Some(written), on_step, device)?;
    let results = done
        .outcome
        .into_results(task.into(), &done.report, start, resumed, None);
    results.write(&run.dir.0)?;
    Ok((done.model, done.history))
}

/// What [`train_objective`] ends with.
struct Finished<M> {
    model: M,
    history: LmHistory,
    outcome: Outcome,
    /// What the strategy trains (also in `trainable.json`).
    report: crate::strategy::TrainableReport,
}

/// A run directory the loop writes into, and whether it resumes from its `last` checkpoint.
struct Written<'a> {
    dir: &'a RunDir,
    stop: StopAt,
    resumed: bool,
}

/// Trains BERT with its MLM head ([`MaskedLmModel`]) with `tuning` on `masking`-masked random
/// windows of `block_len` tokens of `train` for `cfg.steps` steps, evaluating masked-token
/// perplexity on `held_out` ([`MaskedLm`], the same loop as [`train_lm`]). In the returned
/// history, [`Perplexity`] is the masked-token one.
///
/// # Errors
/// As [`train_lm`] (a soft prompt is refused: the MLM host has no place for it).
#[allow(clippy::too_many_arguments)]
pub fn train_mlm<B: AutodiffBackend>(
    model: MaskedLmModel<B>,
    train: &[u32],
    held_out: &[u32],
    cfg: &LmTrainConfig,
    masking: Masking,
    tuning: &Tuning,
    mut on_step: impl FnMut(&LmStep),
    device: &B::Device,
) -> Result<(MaskedLmModel<B>, LmHistory), LmError> {
    check_masked_inputs(&model, train, cfg)?;
    let model = tuning.insert(model, device)?;
    let objective = MaskedLm {
        train,
        held_out,
        cfg,
        masking,
    };
    let done = train_objective(&objective, model, cfg, tuning, None, &mut on_step, device)?;
    Ok((done.model, done.history))
}

/// The checks of [`train_mlm`] before anything is built: the configuration, a stream of at
/// least one window, a block within the encoder's positions.
fn check_masked_inputs<B: Backend>(
    model: &MaskedLmModel<B>,
    train: &[u32],
    cfg: &LmTrainConfig,
) -> Result<(), LmError> {
    crate::validate::validate_lm(cfg)?;
    if train.len() < cfg.block_len {
        return Err(LmError::TooShort {
            tokens: train.len(),
            window: cfg.block_len,
        });
    }
    let max = crate::validate::ModelLimits::of(&model.bert).max_positions;
    if cfg.block_len > max {
        return Err(LmError::BlockTooLong {
            block_len: cfg.block_len,
            max,
        });
    }
    Ok(())
}

/// Runs `objective` through the training loop: the strategy's selection, schedule and gradient
/// mask, per-step history and periodic evaluations; in memory, or writing metrics,
/// checkpoints and `trainable.json` into `written`'s directory (resuming from its `last`
/// checkpoint where it says so).
#[allow(clippy::too_many_arguments)]
fn train_objective<B: AutodiffBackend, O: Objective<B>>(
    objective: &O,
    model: O::Model,
    cfg: &LmTrainConfig,
    tuning: &Tuning,
    written: Option<Written<'_>>,
    on_step: &mut dyn FnMut(&LmStep),
    device: &B::Device,
) -> Result<Finished<O::Model>, LmError> {
    let (infos, roles) = (param_infos(&model), model.param_roles());
    let report = crate::strategy::trainable_report(tuning, &infos, &roles);
    if report.trainable == 0 {
        return Err(LmError::NothingTrains);
    }
    // The Fisher pass of Child-Tuning_D sees the weights the run started from, also when
    // resuming (the mask is recomputed, not stored).
    let mask = match tuning.gradient_mask() {
        Some(GradientMask::Bernoulli { keep }) => Some(ChildMask::Bernoulli(keep)),
        Some(GradientMask::Fisher { keep }) => {
            // The Fisher pass sees the run's first windows.
            let batches = objective.batches(0);
            let n = batches.len().min(FISHER_BATCHES);
            Some(child_tuning_d_mask(&model, n, keep, |m, i| {
                objective.loss(m, &batches[i], device)
            })?)
        }
        None => None,
    };
    let resumed = written.as_ref().is_some_and(|w| w.resumed);
    let model = match &written {
        Some(w) => {
            report.write(&w.dir.0)?;
            if w.resumed {
                crate::checkpoint::read_weights(&w.dir.last(), model, tuning).map_err(TrainError::from)?
            } else {
                model
            }
        }
        None => model,
    };
    let session = Session {
        objective,
        settings: LoopSettings {
            adamw: cfg.adamw,
            lr: cfg.lr,
            seed: cfg.seed,
            eval_every: Some(cfg.eval_every).filter(|&n| n > 0),
            log_every: 1,
            data_map: false,
            best_metric: None,
            progress_bar: written.is_some(),
        },
        tuning,
        mask: mask.as_ref(),
        run: written.as_ref().map(|w| w.dir),
        stop: written.as_ref().map_or_else(StopAt::default, |w| w.stop),
        device,
    };
    let mut history = LmHistory {
        steps: Vec::with_capacity(cfg.steps),
        evals: Vec::new(),
        train_seconds: 0.0,
        train_tokens: 0,
        trainable: report.trainable,
        total: report.total,
    };
    let (model, outcome) = session.run(model, &infos, &roles, resumed, &mut |event| {
        match event {
            TrainEvent::Step {
                step,
                loss,
                lr,
                grad_norm,
            } => {
                let logged = LmStep {
                    step: step - 1,
                    loss: *loss,
                    lr: *lr,
                    grad_norm: *grad_norm,
                };
                on_step(&logged);
                history.steps.push(logged);
            }
            TrainEvent::Eval { step, metrics } => history.evals.push((*step, perplexity_of(metrics))),
            TrainEvent::Checkpoint { .. } => {}
        }
        Control::Continue
    })?;
    history.train_seconds = outcome.train_time.as_secs_f64();
    history.train_tokens = history.steps.len() * cfg.batch_size * cfg.block_len;
    Ok(Finished {
        model,
        history,
        outcome,
        report,
    })
}

/// Batches of Child-Tuning_D's Fisher pass on a decoder (the first windows of the run).
const FISHER_BATCHES: usize = 64;

/// [`Perplexity`] back from the metrics of [`CausalLm`] or [`MaskedLm`] (their primary
/// metric is the perplexity).
fn perplexity_of(m: &TaskMetrics) -> Perplexity {
    Perplexity {
        nats_per_token: m.values["nats_per_token"],
        perplexity: m.primary_value(),
        tokens: m.values["tokens"] as usize,
    }
}
