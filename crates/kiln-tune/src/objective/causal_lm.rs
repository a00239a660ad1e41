//! Causal language modelling (GPT-2): the mean next-token cross-entropy of windows drawn at
//! seeded random offsets of a token stream, evaluated as held-out perplexity (lower is
//! better). One "epoch" is the whole run: `steps` micro-batches of `batch_size` windows, the
//! offsets of step `s` a function of `(seed, s)`.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorData;
use kiln_data::metrics::TaskMetrics;
use kiln_model::Gpt2Model;

use super::{Inner, Objective, Steps};
use crate::lm::{next_token_loss, perplexity, LmTrainConfig};
use crate::trainer::TrainError;

/// Next-token prediction on `train`, perplexity on `held_out`.
pub struct CausalLm<'a> {
    /// Training tokens.
    pub train: &'a [u32],
    /// Held-out tokens (the periodic evaluations use the first `cfg.eval_tokens`).
    pub held_out: &'a [u32],
    /// Steps, batch, window and evaluation settings.
    pub cfg: &'a LmTrainConfig,
}

impl CausalLm<'_> {
    /// The window offsets of step `step`.
    pub fn offsets(&self, step: usize) -> Vec<usize> {
        super::lm_offsets(self.cfg, self.train.len(), self.cfg.block_len + 1, step)
    }
}

/// Perplexity as metrics: `perplexity` (primary), `nats_per_token` and `tokens`.
pub fn perplexity_metrics(p: &crate::lm::Perplexity) -> TaskMetrics {
    TaskMetrics {
        primary: "perplexity".into(),
        values: [
            ("perplexity".to_string(), p.perplexity),
            ("nats_per_token".to_string(), p.nats_per_token),
            ("tokens".to_string(), p.tokens as f64),
        ]
        .into(),
    }
}

impl<B: AutodiffBackend> Objective<B> for CausalLm<'_> {
    type Model = Gpt2Model<B>;

    fn label(&self) -> String {
        "causal-lm".into()
    }

    fn steps(&self) -> Steps {
        super::lm_steps(self.cfg)
    }

    fn batches(&self, _epoch: usize) -> Vec<Vec<usize>> {
        (0..self.cfg.steps).map(|s| self.offsets(s)).collect()
    }

    fn loss(&self, model: &Self::Model, batch: &[usize], device: &B::Device) -> Result<Tensor<B, 1>, TrainError> {
        let window = self.cfg.block_len + 1;
        let ids: Vec<i64> = batch
            .iter()
            .flat_map(|&start| self.train[start..start + window].iter().map(|&t| i64::from(t)))
            .collect();
        let windows = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch.len(), window]), device);
        Ok(next_token_loss(model, windows))
    }

    fn evaluate(&self, model: &Inner<B, Self>, last: bool, device: &B::Device) -> Result<TaskMetrics, TrainError> {
        let stream = super::eval_stream(self.held_out, self.cfg.eval_tokens, last);
        let p = perplexity(model, stream, self.cfg.block_len, self.cfg.batch_size, device);
        Ok(perplexity_metrics(&p))
    }

    fn improves(&self, new: f64, best: f64) -> bool {
        new < best
    }
}
