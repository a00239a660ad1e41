//! Masked language modelling (BERT, Devlin et al. 2019): windows of a token stream with a
//! fraction of positions selected — each replaced by `[MASK]` 80% of the time, by a random
//! token 10%, left unchanged 10% — and the cross-entropy of the original tokens at the
//! selected positions. Evaluated as held-out masked-token perplexity (lower is better).
//!
//! Masks are static per window, as in the original BERT data pipeline: a function of the seed
//! and the window's offset, so a resumed run and a repeated evaluation see the same masks.
//! The model is [`MaskedLmModel`] (`BertForMaskedLM`: the encoder and `cls.predictions`);
//! its head is a task head under every strategy (it trains; its decoder is tied to the word
//! embeddings, which follow the strategy).

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorData;
use kiln_data::batching::{below, rng, unit};
use kiln_data::metrics::TaskMetrics;
use kiln_model::roles::{ModelRoles, Part, Roles, Site};
use kiln_model::{BertMlmHead, BertModel, Capture};
use serde::{Deserialize, Serialize};

use super::{Inner, Objective, Steps};
use crate::checkpoint::{CheckpointError, WholeWeights};
use crate::lm::LmTrainConfig;
use crate::strategy::{ModelShape, PromptSlot, TunableModel};
use crate::trainer::TrainError;

/// BERT with its masked-language-model head (HF `BertForMaskedLM`).
#[derive(Module, Debug)]
pub struct MaskedLmModel<B: Backend> {
    /// The encoder.
    pub bert: BertModel<B>,
    /// `cls.predictions`.
    pub head: BertMlmHead<B>,
}

impl<B: Backend> MaskedLmModel<B> {
    /// Vocabulary logits `[batch, seq, vocab]` of `input_ids` (no padding).
    pub fn logits(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let hidden = self
            .bert
            .forward(input_ids, None, None, Capture::none())
            .last_hidden_state;
        self.head.forward(&self.bert, hidden)
    }
}

impl<B: Backend> ModelRoles for MaskedLmModel<B> {
    fn param_roles(&self) -> Roles {
        let mut roles = Roles::new();
        self.bert.fill_roles(&mut roles);
        roles.tag_module(&self.head, Site::Head, Part::Whole);
        roles
    }
}

impl<B: Backend> TunableModel<B> for MaskedLmModel<B> {
    fn family(&self) -> &'static str {
        "BERT masked LM"
    }

    fn shape(&self) -> ModelShape {
        ModelShape::of(&self.bert)
    }

    fn activation(&self) -> kiln_model::activation::Activation {
        self.bert.encoder.layer[0].intermediate.activation
    }

    fn layer_inserts_mut(&mut self) -> Vec<&mut kiln_model::peft::LayerInserts<B>> {
        self.bert.encoder.layer.iter_mut().map(|l| &mut l.inserts).collect()
    }

    fn phm_rules_mut(&mut self) -> Option<&mut Option<burn::module::Param<Tensor<B, 3>>>> {
        Some(&mut self.bert.encoder.shared.phm_rules)
    }

    /// No soft prompt: its virtual positions would shift every predicted token.
    fn prompt_mut(&mut self) -> Option<PromptSlot<'_, B>> {
        None
    }
}

impl<B: Backend> WholeWeights<B> for MaskedLmModel<B> {
    /// Every tensor in kiln paths (`bert.*`, `head.*`), as a tuned-part file of full
    /// fine-tuning.
    fn whole_weights(&self) -> Result<Vec<u8>, CheckpointError> {
        let everything = crate::strategy::Tuning::new(&[]).expect("full fine-tuning composes");
        Ok(crate::strategy::tuned_bytes(self, &everything))
    }

    fn load_whole_weights(&mut self, path: &std::path::Path) -> Result<(), CheckpointError> {
        let everything = crate::strategy::Tuning::new(&[]).expect("full fine-tuning composes");
        let loaded =
            crate::strategy::load_tuned(self.clone(), &everything, path).map_err(|e| CheckpointError::Tuned {
                path: path.to_path_buf(),
                source: Box::new(e),
            })?;
        *self = loaded;
        Ok(())
    }
}

/// How positions are masked.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Masking {
    /// Fraction of positions selected (BERT: 0.15); at least one per window.
    pub prob: f64,
    /// The `[MASK]` token id.
    pub mask_token: u32,
    /// Vocabulary size (random replacements are drawn from `0..vocab`).
    pub vocab: u32,
}

impl Masking {
    /// The masked inputs and, per position, the original token when it is selected.
    pub fn apply(&self, window: &[u32], seed: u64) -> (Vec<u32>, Vec<Option<u32>>) {
        let mut rng = rng(seed);
        let mut inputs = window.to_vec();
        let mut labels: Vec<Option<u32>> = vec![None; window.len()];
        for (i, &t) in window.iter().enumerate() {
            if unit(&mut rng) < self.prob {
                labels[i] = Some(t);
            }
        }
        if labels.iter().all(Option::is_none) && !window.is_empty() {
            let i = below(&mut rng, window.len());
            labels[i] = Some(window[i]);
        }
        for (input, label) in inputs.iter_mut().zip(&labels) {
            if label.is_some() {
                let r = unit(&mut rng);
                if r < 0.8 {
                    *input = self.mask_token;
                } else if r < 0.9 {
                    *input = below(&mut rng, self.vocab as usize) as u32;
                }
            }
        }
        (inputs, labels)
    }
}

/// Masked-token prediction on `train`, masked-token perplexity on `held_out`.
pub struct MaskedLm<'a> {
    /// Training tokens.
    pub train: &'a [u32],
    /// Held-out tokens (the periodic evaluations use the first `cfg.eval_tokens`).
    pub held_out: &'a [u32],
    /// Steps, batch, window (`block_len` tokens) and evaluation settings.
    pub cfg: &'a LmTrainConfig,
    /// How positions are masked.
    pub masking: Masking,
}

/// Stream of the held-out masks (disjoint from the training windows' seeds).
const EVAL_STREAM: u64 = 0xE7A1_0000_0000_0001;

impl MaskedLm<'_> {
    /// The window offsets of step `step`.
    pub fn offsets(&self, step: usize) -> Vec<usize> {
        super::lm_offsets(self.cfg, self.train.len(), self.cfg.block_len, step)
    }

    fn window_seed(&self, offset: usize, stream: u64) -> u64 {
        self.cfg.seed ^ stream ^ (offset as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
    }

    /// Sum of the masked tokens' negative log-likelihoods and their count, for `windows`
    /// (each with its mask seed).
    fn masked_nll<BB: Backend>(
        &self,
        model: &MaskedLmModel<BB>,
        windows: &[(&[u32], u64)],
        device: &BB::Device,
    ) -> (Tensor<BB, 1>, usize) {
        let len = windows[0].0.len();
        let (mut ids, mut targets, mut selected) = (Vec::new(), Vec::new(), Vec::new());
        for (window, seed) in windows {
            let (inputs, labels) = self.masking.apply(window, *seed);
            ids.extend(inputs.iter().map(|&t| i64::from(t)));
            for label in labels {
                targets.push(i64::from(label.unwrap_or(0)));
                selected.push(if label.is_some() { 1.0f32 } else { 0.0 });
            }
        }
        let count = selected.iter().filter(|&&s| s > 0.0).count();
        let n = windows.len();
        let ids = Tensor::<BB, 2, Int>::from_data(TensorData::new(ids, [n, len]), device);
        let targets = Tensor::<BB, 3, Int>::from_data(TensorData::new(targets, [n, len, 1]), device);
        let selected = Tensor::<BB, 3>::from_data(TensorData::new(selected, [n, len, 1]), device);
        let log_probs = log_softmax(model.logits(ids), 2);
        let nll = (log_probs.gather(2, targets) * selected).sum().neg();
        (nll, count)
    }
}

impl<B: AutodiffBackend> Objective<B> for MaskedLm<'_> {
    type Model = MaskedLmModel<B>;

    fn label(&self) -> String {
        "masked-lm".into()
    }

    fn steps(&self) -> Steps {
        super::lm_steps(self.cfg)
    }

    fn batches(&self, _epoch: usize) -> Vec<Vec<usize>> {
        (0..self.cfg.steps).map(|s| self.offsets(s)).collect()
    }

    fn loss(&self, model: &Self::Model, batch: &[usize], device: &B::Device) -> Result<Tensor<B, 1>, TrainError> {
        let len = self.cfg.block_len;
        let windows: Vec<(&[u32], u64)> = batch
            .iter()
            .map(|&o| (&self.train[o..o + len], self.window_seed(o, 0)))
            .collect();
        let (nll, count) = self.masked_nll(model, &windows, device);
        Ok(nll.div_scalar(count.max(1) as f64))
    }

    fn evaluate(&self, model: &Inner<B, Self>, last: bool, device: &B::Device) -> Result<TaskMetrics, TrainError> {
        let stream = super::eval_stream(self.held_out, self.cfg.eval_tokens, last);
        // Consecutive, disjoint windows of `block_len` tokens (a short tail is dropped).
        let windows: Vec<(&[u32], u64)> = stream
            .chunks_exact(self.cfg.block_len)
            .enumerate()
            .map(|(i, w)| (w, self.window_seed(i, EVAL_STREAM)))
            .collect();
        let (mut total, mut tokens) = (0.0, 0);
        for group in windows.chunks(self.cfg.batch_size.max(1)) {
            let (nll, count) = self.masked_nll(model, group, device);
            total += nll.into_scalar().elem::<f64>();
            tokens += count;
        }
        let nats = total / tokens.max(1) as f64;
        Ok(TaskMetrics {
            primary: "mlm_perplexity".into(),
            values: [
                ("mlm_perplexity".to_string(), nats.exp()),
                ("nats_per_token".to_string(), nats),
                ("tokens".to_string(), tokens as f64),
            ]
            .into(),
        })
    }

    fn improves(&self, new: f64, best: f64) -> bool {
        new < best
    }
}
