//! Causal language modelling with the GPT decoder: next-token loss, perplexity on a held-out
//! stream, and a training loop over seeded random windows of a token stream (pretraining
//! from scratch, or fine-tuning a converted decoder with only some parameters trainable).
//!
//! Uses kiln's [`AdamW`] (decay off for biases and LayerNorms, as for fine-tuning) with linear
//! warm-up and linear decay.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorData;
use kiln_data::lm::{eval_windows, random_windows};
use kiln_model::{Capture, Gpt2Model};
use serde::{Deserialize, Serialize};

use crate::optim::{linear_schedule, AdamW, AdamWConfig, ParamGroup};
use crate::params::{param_infos, set_trainable};
use burn::module::ParamId;
use kiln_model::roles::{ModelRoles, ParamRole, Part};

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
    /// A non-finite loss or gradient.
    #[error("non-finite {what} at step {step}")]
    NonFinite {
        /// `"loss"` or `"gradient norm"`.
        what: &'static str,
        /// Step.
        step: usize,
    },
}

/// Trains `model` on random windows of `train` for `cfg.steps` steps, evaluating perplexity
/// on `held_out`. Only parameters whose typed role ([`kiln_model::roles::ParamRole`]) satisfies
/// `trains` are updated (the others are frozen: no gradient is computed for them; fixed ones
/// — Performer's `ω` — never train). `on_step` sees each logged step (progress bars).
///
/// # Errors
/// [`LmError`]: a stream or block that does not fit, an empty selection, a non-finite loss.
pub fn train_lm<B: AutodiffBackend>(
    model: Gpt2Model<B>,
    train: &[u32],
    held_out: &[u32],
    cfg: &LmTrainConfig,
    trains: impl Fn(&ParamRole) -> bool,
    mut on_step: impl FnMut(&LmStep),
    device: &B::Device,
) -> Result<(Gpt2Model<B>, LmHistory), LmError> {
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
    let roles = model.param_roles();
    let trains = |id: ParamId| {
        roles
            .get(id)
            .is_some_and(|r| r.part != Part::Mechanism { fixed: true } && trains(r))
    };
    let infos = param_infos(&model);
    let trainable: usize = infos.iter().filter(|i| trains(i.id)).map(|i| i.numel()).sum();
    if trainable == 0 {
        return Err(LmError::NothingTrains);
    }
    let mut model = set_trainable(model, trains);
    let mut opt = AdamW::<B::InnerBackend>::new(cfg.adamw, &infos, |info| ParamGroup {
        trainable: trains(info.id),
        lr_scale: 1.0,
        weight_decay: info.tensor.decays(),
    });
    let periodic: &[u32] = match cfg.eval_tokens {
        0 => held_out,
        n => &held_out[..n.min(held_out.len())],
    };
    let mut history = LmHistory {
        steps: Vec::with_capacity(cfg.steps),
        evals: Vec::new(),
        train_seconds: 0.0,
        train_tokens: 0,
        trainable,
    };
    for step in 0..cfg.steps {
        let started = Instant::now();
        let seed = cfg.seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let ids: Vec<i64> = random_windows(train, window, cfg.batch_size, seed)
            .into_iter()
            .map(i64::from)
            .collect();
        let batch = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [cfg.batch_size, window]), device);
        let loss = next_token_loss(&model, batch);
        let value = loss.clone().into_scalar().elem::<f64>();
        if !value.is_finite() {
            return Err(LmError::NonFinite { what: "loss", step });
        }
        let lr = linear_schedule(cfg.lr, step + 1, cfg.warmup_steps, cfg.steps);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let (next, stats) = opt.step(model, grads, lr);
        if !stats.grad_norm.is_finite() {
            return Err(LmError::NonFinite {
                what: "gradient norm",
                step,
            });
        }
        model = next;
        history.train_seconds += started.elapsed().as_secs_f64();
        history.train_tokens += cfg.batch_size * cfg.block_len;
        let logged = LmStep {
            step,
            loss: value,
            lr,
            grad_norm: stats.grad_norm,
        };
        on_step(&logged);
        history.steps.push(logged);
        let done = step + 1;
        if cfg.eval_every > 0 && done % cfg.eval_every == 0 && done < cfg.steps {
            let ppl = perplexity(&model.valid(), periodic, cfg.block_len, cfg.batch_size, device);
            tracing::info!(step = done, loss = value, ppl = ppl.perplexity, "lm eval");
            history.evals.push((done, ppl));
        }
    }
    let ppl = perplexity(&model.valid(), held_out, cfg.block_len, cfg.batch_size, device);
    history.evals.push((cfg.steps, ppl));
    Ok((model, history))
}
