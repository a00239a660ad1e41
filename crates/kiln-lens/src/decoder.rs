//! The analysis pipeline for a causal decoder (GPT-2 layout): the analyses that make sense
//! for next-token prediction, returned as the same typed
//! [`kiln_format::analysis::Analysis`] the classifier pipeline ([`crate::pipeline`]) writes,
//! so `cargo xtask lens analyse` and the report work on a language-model run unchanged.
//!
//! An *example* is a window of `block_len` held-out tokens and the token that follows it
//! (consecutive windows of the held-out stream, as the run's perplexity evaluation cuts them):
//! its gold label is that next token's id, its prediction the argmax of the last position's
//! logits, `p_gold` and `loss` the probability and negative log-likelihood of the gold token.
//!
//! - projections of each layer's hidden state at the last position (embeddings included:
//!   unlike `[CLS]` they differ per example), PCA / t-SNE / UMAP with distortion scores;
//! - head importance (gate gradients, Michel et al. 2019; first-order Taylor, T3-Vis) of the
//!   mean next-token loss over every position of the importance windows, the pruning curve
//!   and optionally each head masked alone, as held-out **perplexity** (lower is better);
//! - instances: every head's causal attention map, attention rollout from the last position,
//!   and gradient × input and integrated gradients (baseline: the position embeddings alone,
//!   token embeddings zeroed — a decoder has no PAD token, and an all-zero input sits where
//!   LayerNorm is singular) of the gold next token's log-probability — and of the predicted
//!   one's when it differs — with the completeness check.
//!
//! Not computed for decoders (left empty in the file): value zeroing and the norm-based mixing
//! ratios, whose implementations here follow post-LN BERT's residual and LayerNorm placement
//! (GPT-2 is pre-LN).

use std::cell::Cell;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorData;
use kiln_format::analysis::{
    Analysis, ClassSaliency, Completeness, ExampleRow, ExampleText, Heads, Instance, Projection, Saliency, Target,
    ANALYSIS_FORMAT,
};
use kiln_model::{Capture, Gpt2Model};
use kiln_tune::lm::{next_token_loss, perplexity};

use crate::attribution::{gradient_x_input, integrated_gradients, rollout};
use crate::heads::{head_importance, set_head_gates, taylor_importance};
use crate::pipeline::{
    attention_maps, enough_examples, floats, projections, pruning_and_effects, round, round6, rounded, AnalysisError,
    AnalysisSettings, OnProgress, Phase, K,
};

const BATCH: usize = 16;

/// What is analysed: a decoder and its held-out tokens.
pub struct DecoderInput<'a, B: AutodiffBackend> {
    /// The decoder (dropout off), with whatever its strategy inserted.
    pub model: &'a Gpt2Model<B>,
    /// The held-out token stream (windows are cut from its start).
    pub held_out: &'a [u32],
    /// Context tokens per example (the run's `block_len`).
    pub block_len: usize,
    /// A token's text for display (`tokenizer.json`'s, or the byte for a byte-level model).
    pub token_text: &'a dyn Fn(u32) -> String,
    /// The task recorded in the analysis (`causal-lm`).
    pub task: &'a str,
    /// The strategy's name, recorded in the analysis.
    pub strategy: &'a str,
    /// The checkpoint's name, recorded in the analysis.
    pub checkpoint: &'a str,
}

/// Runs the decoder analyses on `input` with `settings` (`mean_pool` does not apply: the
/// last position is projected).
///
/// # Errors
/// [`AnalysisError::TooFewExamples`] when the held-out stream holds fewer than `2K + 2`
/// windows.
pub fn analyse_decoder<B: AutodiffBackend>(
    input: &DecoderInput<'_, B>,
    settings: &AnalysisSettings,
    progress: OnProgress<'_>,
    device: &B::Device,
) -> Result<Analysis, AnalysisError> {
    let windows: Vec<&[u32]> = kiln_data::lm::eval_windows(input.held_out, input.block_len.max(1))
        .into_iter()
        .take(settings.max_examples)
        .collect();
    enough_examples(windows.len())?;
    let inner = input.model.valid();
    let ctx = DecoderCtx {
        input,
        inner: &inner,
        windows: &windows,
        settings,
        progress,
        device,
    };
    let (pooled, hidden, examples) = ctx.forward_pass();
    let layers = projections(&pooled, windows.len(), hidden, settings, false, progress);
    let heads = ctx.heads()?;
    let chosen = windows.len().min(settings.instances);
    let mut instances = Vec::with_capacity(chosen);
    for (index, row) in examples.iter().enumerate().take(chosen) {
        progress(Phase::Instances, index, chosen);
        instances.push(ctx.instance(index, row));
    }
    progress(Phase::Instances, chosen, chosen);
    Ok(Analysis {
        format: ANALYSIS_FORMAT.into(),
        task: input.task.into(),
        strategy: input.strategy.into(),
        checkpoint: input.checkpoint.into(),
        regression: false,
        num_labels: inner.wte.weight.dims()[0],
        split: "held-out".into(),
        examples,
        projection: Projection {
            of: "hidden state at the last position (predicting the next token)".into(),
            k: K,
            layers,
        },
        heads: Some(heads),
        instances,
    })
}

/// What every phase reads.
struct DecoderCtx<'a, B: AutodiffBackend> {
    input: &'a DecoderInput<'a, B>,
    inner: &'a Gpt2Model<B::InnerBackend>,
    /// Windows of `block_len + 1` tokens: the context and the gold next token.
    windows: &'a [&'a [u32]],
    settings: &'a AnalysisSettings,
    progress: OnProgress<'a>,
    device: &'a B::Device,
}

fn ids<BB: Backend>(rows: &[&[u32]], len: usize, device: &BB::Device) -> Tensor<BB, 2, Int> {
    let data: Vec<i64> = rows
        .iter()
        .flat_map(|w| w[..len].iter().map(|&t| i64::from(t)))
        .collect();
    Tensor::from_data(TensorData::new(data, [rows.len(), len]), device)
}

impl<B: AutodiffBackend> DecoderCtx<'_, B> {
    fn block(&self) -> usize {
        self.windows[0].len() - 1
    }

    /// Each layer's hidden state at the last position (`n × hidden`, flattened; layer 0 the
    /// embeddings), the width, and the per-example rows.
    fn forward_pass(&self) -> (Vec<Vec<f32>>, usize, Vec<ExampleRow>) {
        let (s, n) = (self.block(), self.windows.len());
        let mut pooled: Vec<Vec<f32>> = vec![Vec::new(); self.inner.num_layers() + 1];
        let mut examples = Vec::with_capacity(n);
        let mut hidden = 0;
        for chunk in self.windows.chunks(BATCH) {
            (self.progress)(Phase::Forward, examples.len(), n);
            let capture = Capture {
                hidden_states: true,
                ..Capture::none()
            };
            let out = self.inner.forward(ids(chunk, s, self.device), None, capture);
            for (l, h) in out.hidden_states.iter().enumerate() {
                let [rows, _, d] = h.dims();
                hidden = d;
                pooled[l].extend(floats(h.clone().slice([0..rows, s - 1..s, 0..d]).reshape([rows, d])));
            }
            let [rows, _, d] = out.last_hidden_state.dims();
            let last = out.last_hidden_state.slice([0..rows, s - 1..s, 0..d]);
            let log_probs = floats(log_softmax(self.inner.lm_logits(last), 2));
            let vocab = log_probs.len() / rows;
            for (k, window) in chunk.iter().enumerate() {
                examples.push(self.example_row(window, &log_probs[k * vocab..(k + 1) * vocab]));
            }
        }
        (self.progress)(Phase::Forward, n, n);
        (pooled, hidden, examples)
    }

    /// The row of one window from its last position's log-probabilities.
    fn example_row(&self, window: &[u32], log_probs: &[f32]) -> ExampleRow {
        let s = window.len() - 1;
        let gold = window[s] as usize;
        let predicted = (0..log_probs.len())
            .max_by(|&a, &b| log_probs[a].total_cmp(&log_probs[b]))
            .unwrap_or(0);
        let context: String = window[..s].iter().map(|&t| (self.input.token_text)(t)).collect();
        ExampleRow {
            text: ExampleText::Single(format!("{context} ⟶ {}", (self.input.token_text)(window[s]))),
            label: Target::Class(gold),
            prediction: Target::Class(predicted),
            p_gold: Some(round(f64::from(log_probs[gold]).exp(), 4)),
            loss: round(-f64::from(log_probs[gold]), 4),
        }
    }

    /// Gate and Taylor importance of the mean next-token loss, the pruning curve and (with
    /// `head_effects`) each head masked alone, as perplexity on the importance windows.
    fn heads(&self) -> Result<Heads, AnalysisError> {
        let (model, device) = (self.input.model, self.device);
        let subset = &self.windows[..self.windows.len().min(self.settings.importance_examples)];
        let batches: Vec<&[&[u32]]> = subset.chunks(BATCH).collect();
        let done = Cell::new(0);
        let loss_of = |m: &Gpt2Model<B>, i: usize| {
            (self.progress)(Phase::Importance, done.get(), 2 * batches.len());
            done.set(done.get() + 1);
            next_token_loss(m, ids(batches[i], self.block() + 1, device))
        };
        let gate = head_importance(model, batches.len(), true, &loss_of);
        let taylor = taylor_importance(model, batches.len(), &loss_of);
        (self.progress)(Phase::Importance, 2 * batches.len(), 2 * batches.len());
        let (pruning, masked_metric) = pruning_and_effects(
            &gate,
            self.settings.head_effects,
            self.progress,
            &mut |gates: &[Vec<f32>]| Ok(self.perplexity_with_gates(subset.len(), gates)),
        )?;
        Ok(Heads {
            gate: round6(&gate),
            taylor: round6(&taylor),
            examples: subset.len(),
            pruning,
            masked_metric,
            metric: "perplexity".into(),
        })
    }

    /// Perplexity (every position's next token) on the first `count` windows with head gates
    /// `gates`: `kiln_tune::lm::perplexity` of the stream those windows cover.
    fn perplexity_with_gates(&self, count: usize, gates: &[Vec<f32>]) -> f64 {
        let mut gated = self.inner.clone();
        set_head_gates(&mut gated, Some(gates));
        let s = self.block();
        perplexity(&gated, &self.input.held_out[..count * s + 1], s, BATCH, self.device).perplexity
    }

    /// One window's token-level views.
    fn instance(&self, index: usize, row: &ExampleRow) -> Instance {
        let (window, s) = (self.windows[index], self.block());
        let capture = Capture {
            attention_probs: true,
            ..Capture::none()
        };
        let out = self.inner.forward(ids(&[window], s, self.device), None, capture);
        let attentions: Vec<_> = out
            .layers
            .iter()
            .map(|l| l.attention_probs.clone().expect("captured"))
            .collect();
        let all = Tensor::<B::InnerBackend, 2, Int>::ones([1, s], self.device);
        let from_last = rounded(&floats(rollout(&attentions, all).slice([0..1, s - 1..s, 0..s])), 5);
        let gold = window[s] as usize;
        let predicted = match row.prediction {
            Target::Class(c) => c,
            Target::Score(_) => gold,
        };
        let mut per_class = vec![self.saliency(window, gold)];
        if predicted != gold {
            per_class.push(self.saliency(window, predicted));
        }
        Instance {
            example: index,
            tokens: window[..s].iter().map(|&t| (self.input.token_text)(t)).collect(),
            attention: attention_maps(&attentions),
            rollout: from_last,
            value_zeroing_rollout: Vec::new(),
            mixing_rollout: Vec::new(),
            mixing: Vec::new(),
            saliency: Some(Saliency {
                predicted: per_class.last().expect("gold").clone(),
                per_class,
            }),
        }
    }

    /// Gradient × input and integrated gradients (position-embedding baseline) of the
    /// log-probability of `token` after the window's context.
    fn saliency(&self, window: &[u32], token: usize) -> ClassSaliency {
        let (model, s) = (self.input.model, self.block());
        let input_ids = ids(&[window], s, self.device);
        let emb = model.embed(input_ids.clone()).detach();
        // The position embeddings alone: token embeddings zeroed, positions kept (as BERT's PAD
        // baseline keeps them). An all-zero input would start the path where LayerNorm is
        // singular (`LN(αx)` jumps from 0 to `LN(x)` within α ≈ √ε/σ), which the Riemann sum
        // cannot resolve.
        let baseline = (emb.clone() - model.wte.forward(input_ids)).detach();
        let f = |e: Tensor<B, 3>| {
            let rows = e.dims()[0];
            let h = model.decode(e, None, Capture::none()).last_hidden_state;
            let d = h.dims()[2];
            let logits = model.lm_logits(h.slice([0..rows, s - 1..s, 0..d]));
            log_softmax(logits, 2)
                .slice([0..rows, 0..1, token..token + 1])
                .reshape([rows])
        };
        let l2 = |t: Tensor<B::InnerBackend, 3>| floats(t.powf_scalar(2.0).sum_dim(2).sqrt().reshape([s]));
        let steps = self.settings.ig_steps;
        let (gx, _) = gradient_x_input(emb.clone(), f);
        let (ig, ig_tok) = integrated_gradients(emb.clone(), Some(baseline.clone()), steps, 8, f);
        ClassSaliency {
            class: token,
            grad_x_input: rounded(&floats(gx.clone().sum_dim(2).reshape([s])), 5),
            grad_x_input_l2: rounded(&l2(gx), 5),
            integrated_gradients: rounded(&floats(ig_tok.clone().reshape([s])), 5),
            integrated_gradients_l2: rounded(&l2(ig), 5),
            ig_completeness: Completeness {
                sum: floats(ig_tok).iter().sum(),
                f_x: floats(f(emb).inner())[0],
                f_baseline: floats(f(baseline).inner())[0],
                steps,
            },
        }
    }
}
