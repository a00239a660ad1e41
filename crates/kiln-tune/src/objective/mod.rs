//! Training objectives: what the one training loop (`train_loop.rs`) optimises.
//!
//! An [`Objective`] owns the model type it trains, its data, its micro-batches, their loss and
//! its held-out evaluation; the loop owns everything else — seeding, accumulation, the
//! strategy's freezing, schedule and gradient mask, AdamW, logging, evaluation timing, the
//! best and last checkpoints and resume — so every objective gets all tuning strategies and
//! exact resume. One file per objective:
//!
//! - [`classification`]: sequence classification and regression on GLUE-style examples
//!   (`BertForSequenceClassification`);
//! - [`causal_lm`]: next-token prediction on a token stream (GPT-2);
//! - [`masked_lm`]: BERT's masked-language-model loss on a token stream.

pub mod causal_lm;
pub mod classification;
pub mod masked_lm;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use kiln_data::metrics::TaskMetrics;

use crate::checkpoint::WholeWeights;
use crate::run_files::DynamicsLine;
use crate::strategy::TunableModel;
use crate::trainer::TrainError;

/// How many micro-batches a run has and how they group into optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steps {
    /// Passes over the data.
    pub epochs: usize,
    /// Micro-batches per epoch.
    pub batches_per_epoch: usize,
    /// Micro-batches per optimizer step.
    pub accum: usize,
    /// Optimizer steps over all epochs.
    pub total: usize,
    /// Warm-up steps of the learning-rate schedule.
    pub warmup: usize,
}

impl Steps {
    /// `epochs` of `batches_per_epoch` micro-batches, `accum` per step (a short last group
    /// of an epoch still steps), `warmup_ratio` of the steps warming up.
    pub fn new(epochs: usize, batches_per_epoch: usize, accum: usize, warmup_ratio: f64) -> Self {
        let accum = accum.max(1);
        let total = batches_per_epoch.div_ceil(accum) * epochs;
        Self {
            epochs,
            batches_per_epoch,
            accum,
            total,
            warmup: (total as f64 * warmup_ratio).ceil() as usize,
        }
    }

    /// The same counts with `warmup` warm-up steps.
    pub fn with_warmup(self, warmup: usize) -> Self {
        Self { warmup, ..self }
    }
}

/// The held-out tokens an LM evaluation reads: all of them after the last step (or when
/// `eval_tokens` is 0), else the first `eval_tokens`.
pub(crate) fn eval_stream(held_out: &[u32], eval_tokens: usize, last: bool) -> &[u32] {
    match (last, eval_tokens) {
        (true, _) | (false, 0) => held_out,
        (false, n) => &held_out[..n.min(held_out.len())],
    }
}

/// The seed of step `step`'s window offsets in an LM run seeded `seed`.
pub(crate) fn step_seed(seed: u64, step: usize) -> u64 {
    seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The plan of an in-memory language-modelling run: `cfg.steps` optimizer steps of one batch
/// each, after `cfg.warmup_steps` of warm-up.
pub(crate) fn lm_steps(cfg: &crate::lm::LmTrainConfig) -> Steps {
    Steps::new(1, cfg.steps, 1, 0.0).with_warmup(cfg.warmup_steps)
}

/// The batch of such a run at `step`: `cfg.batch_size` random starts of `window`-token windows
/// in `len` tokens, seeded by `(cfg.seed, step)`.
pub(crate) fn lm_offsets(cfg: &crate::lm::LmTrainConfig, len: usize, window: usize, step: usize) -> Vec<usize> {
    kiln_data::lm::random_offsets(len, window, cfg.batch_size, step_seed(cfg.seed, step))
}

/// The model an objective trains, as the inner (non-autodiff) module evaluation sees.
pub type Inner<B, O> = <<O as Objective<B>>::Model as AutodiffModule<B>>::InnerModule;

/// What a training run optimises.
pub trait Objective<B: AutodiffBackend> {
    /// The model trained (a host for tuning strategies whose whole weights a checkpoint holds).
    type Model: TunableModel<B> + WholeWeights<B> + AutodiffModule<B>;

    /// A short name for the progress bar and logs (`"rte"`, `"causal-lm"`).
    fn label(&self) -> String;

    /// The run's micro-batch and step counts.
    fn steps(&self) -> Steps;

    /// The micro-batches of `epoch`, as lists of example indices (or window offsets): a
    /// function of the seed and the epoch, so that resume replays the same order.
    fn batches(&self, epoch: usize) -> Vec<Vec<usize>>;

    /// Mean loss of a micro-batch (dropout is seeded by the loop before the call).
    ///
    /// # Errors
    /// [`TrainError`] when the batch cannot be built.
    fn loss(&self, model: &Self::Model, batch: &[usize], device: &B::Device) -> Result<Tensor<B, 1>, TrainError>;

    /// Held-out metrics of `model`; `last` is the evaluation after the last step.
    ///
    /// # Errors
    /// [`TrainError`] when the evaluation data cannot be built.
    fn evaluate(&self, model: &Inner<B, Self>, last: bool, device: &B::Device) -> Result<TaskMetrics, TrainError>;

    /// Whether primary-metric value `new` beats `best` (higher by default; perplexity
    /// objectives invert it).
    fn improves(&self, new: f64, best: f64) -> bool {
        new > best
    }

    /// The training-dynamics line written at the end of `epoch` (data maps), if any.
    ///
    /// # Errors
    /// [`TrainError`] when the training data cannot be built.
    fn dynamics(
        &self,
        _model: &Inner<B, Self>,
        _epoch: usize,
        _step: usize,
        _device: &B::Device,
    ) -> Result<Option<DynamicsLine>, TrainError> {
        Ok(None)
    }
}
