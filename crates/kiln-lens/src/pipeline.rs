//! The analysis pipeline: every analysis the report shows, computed once for a trained
//! sequence classifier on (a prefix of) its dev examples, returned as the typed
//! [`kiln_format::analysis::Analysis`] that `cargo xtask lens analyse` writes to
//! `RUN/analysis/analysis.json` and `kiln-viz` reads.
//!
//! - per example: text, gold label, prediction, gold-class probability, loss;
//! - projections of each layer's pooled hidden state (`[CLS]`, or the mean over real tokens):
//!   PCA (explained variance), t-SNE and UMAP, each with neighbourhood preservation and
//!   trustworthiness at k = [`K`];
//! - head importance (gate gradients, Michel et al. 2019; first-order Taylor, T3-Vis), the
//!   pruning curve (dev metric with the least important heads masked) and, optionally, each
//!   head masked alone;
//! - instances: tokens with gradient × input and integrated gradients (PAD baseline,
//!   completeness reported) for every output, attention rollout, value-zeroing rollout and
//!   norm-based mixing rollout from `[CLS]`, per-layer mixing ratios, and every head's
//!   attention map (quantised to bytes, base64).
//!
//! The caller loads the model (a run's checkpoint, with its strategy inserted) and the
//! examples; the pipeline only reads them. Progress is reported through a callback so a CLI
//! can draw bars and a library user can log or ignore it.

use std::cell::Cell;

use base64::Engine;
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use kiln_data::batching::encode_indices;
use kiln_data::{BatchEncoding, DataError, Example, GlueTask, Label, TextInput, TextTokenizer};
use kiln_format::analysis::{
    Analysis, AttentionMaps, ClassSaliency, Completeness, Coords, ExampleRow, ExampleText, Heads, Instance,
    LayerProjection, Map2d, Mixing, Pca, Projection, ProjectionScores, PruningPoint, Saliency, Target, ANALYSIS_FORMAT,
};
use kiln_model::{BertModel, Capture};
use kiln_tune::classifier::SequenceClassifier;
use kiln_tune::trainer::{evaluate, targets, tensors, TrainError};

use crate::attribution::{gradient_x_input, integrated_gradients, repeat_rows, rollout, rollout_matrices};
use crate::heads::{head_importance, prune_least_important, set_head_gates, taylor_importance};
use crate::norm::{analyse_layer, capture, mean_over_real, mixing_rollout};
use crate::projection::{pca, projection_scores, tsne, umap, TsneConfig, UmapConfig};
use crate::value_zeroing::value_zeroing_layer;

/// Neighbourhood size of the projections' distortion scores.
pub const K: usize = 10;
const BATCH: usize = 32;

/// What the pipeline computes and on how much.
#[derive(Clone, Debug, PartialEq)]
pub struct AnalysisSettings {
    /// Dev examples analysed (projection, table).
    pub max_examples: usize,
    /// Dev examples used for head importance and the pruning curve (≥ 1).
    pub importance_examples: usize,
    /// Examples with token-level views.
    pub instances: usize,
    /// Integrated-gradients steps (≥ 1).
    pub ig_steps: usize,
    /// t-SNE iterations (≥ 1).
    pub tsne_epochs: usize,
    /// Project the mean over real tokens instead of the `[CLS]` state (the embedding layer is
    /// then projected too; at `[CLS]` it is one point for every example).
    pub mean_pool: bool,
    /// Re-evaluate with each head masked alone (layers × heads evaluations of the importance
    /// subset).
    pub head_effects: bool,
}

impl Default for AnalysisSettings {
    fn default() -> Self {
        Self {
            max_examples: 1000,
            importance_examples: 256,
            instances: 12,
            ig_steps: 32,
            tsne_epochs: 750,
            mean_pool: false,
            head_effects: false,
        }
    }
}

impl AnalysisSettings {
    /// Settings small enough for the demo (a few seconds on CPU).
    pub fn quick() -> Self {
        Self {
            max_examples: 300,
            importance_examples: 64,
            instances: 8,
            ig_steps: 16,
            tsne_epochs: 500,
            mean_pool: false,
            head_effects: true,
        }
    }
}

/// What is analysed: the model and where it came from.
pub struct AnalysisInput<'a, B: AutodiffBackend> {
    /// The classifier (dropout off), with whatever its strategy inserted.
    pub model: &'a SequenceClassifier<B>,
    /// Its tokenizer.
    pub tokenizer: &'a TextTokenizer,
    /// The dev examples (a prefix of `max_examples` is analysed).
    pub dev: &'a [Example],
    /// The task (labels, metric).
    pub task: GlueTask,
    /// The strategy's name, recorded in the analysis.
    pub strategy: &'a str,
    /// The checkpoint's name, recorded in the analysis.
    pub checkpoint: &'a str,
    /// The backbone's LayerNorm epsilon (for the norm-based mixing ratios).
    pub layer_norm_eps: f64,
}

/// A phase of the pipeline, for progress reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The forward pass over the analysed examples.
    Forward,
    /// PCA, t-SNE and UMAP per layer.
    Projections,
    /// Head-importance gradients.
    Importance,
    /// Single-head masking.
    HeadMasking,
    /// Token-level views.
    Instances,
}

impl Phase {
    /// A short label.
    pub fn label(self) -> &'static str {
        match self {
            Phase::Forward => "forward",
            Phase::Projections => "projections",
            Phase::Importance => "importance",
            Phase::HeadMasking => "head masking",
            Phase::Instances => "instances",
        }
    }
}

/// Called with `(phase, done, total)` as the pipeline advances (`done == 0` when a phase
/// starts, `done == total` when it ends).
pub type OnProgress<'a> = &'a dyn Fn(Phase, usize, usize);

/// Why an analysis could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// Too few examples for the projection scores (2k + 2 are needed).
    #[error("need at least {needed} dev examples for the analysis, found {found}")]
    TooFewExamples {
        /// The minimum.
        needed: usize,
        /// What was given.
        found: usize,
    },
    /// An example could not be tokenized.
    #[error("cannot encode the dev examples: {0}")]
    Data(#[from] DataError),
    /// Evaluation or a label failed.
    #[error("cannot evaluate the model: {0}")]
    Evaluate(#[from] TrainError),
}

/// Runs every analysis on `input` with `settings`.
///
/// # Errors
/// [`AnalysisError`].
pub fn analyse<B: AutodiffBackend>(
    input: &AnalysisInput<'_, B>,
    settings: &AnalysisSettings,
    progress: OnProgress<'_>,
    device: &B::Device,
) -> Result<Analysis, AnalysisError> {
    let dev = &input.dev[..input.dev.len().min(settings.max_examples)];
    enough_examples(dev.len())?;
    let inner = input.model.valid();
    let ctx = Ctx {
        input,
        inner: &inner,
        dev,
        inputs: dev.iter().map(|e| e.input.clone()).collect(),
        settings,
        progress,
        device,
    };
    let ForwardPass {
        pooled,
        hidden,
        examples,
    } = ctx.forward_pass()?;
    let layers = projections(&pooled, dev.len(), hidden, settings, !settings.mean_pool, progress);
    let heads = ctx.heads()?;
    let chosen = dev.len().min(settings.instances);
    let mut instances = Vec::new();
    for index in 0..chosen {
        progress(Phase::Instances, index, chosen);
        instances.push(ctx.instance(index)?);
    }
    progress(Phase::Instances, chosen, chosen);
    let of = if settings.mean_pool {
        "mean of the hidden states over real tokens"
    } else {
        "[CLS] hidden state"
    };
    Ok(Analysis {
        format: ANALYSIS_FORMAT.into(),
        task: input.task.short_name().into(),
        strategy: input.strategy.into(),
        checkpoint: input.checkpoint.into(),
        regression: input.task.is_regression(),
        num_labels: input.task.num_labels(),
        split: "dev".into(),
        examples,
        projection: Projection {
            of: of.into(),
            k: K,
            layers,
        },
        heads,
        instances,
    })
}

pub(crate) fn floats<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32")
}

pub(crate) fn round(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

pub(crate) fn rounded(v: &[f32], digits: i32) -> Vec<f64> {
    v.iter().map(|&x| round(f64::from(x), digits)).collect()
}

/// Refuses fewer examples than the projection scores need (`2K + 2`).
pub(crate) fn enough_examples(found: usize) -> Result<(), AnalysisError> {
    if found < 2 * K + 2 {
        return Err(AnalysisError::TooFewExamples {
            needed: 2 * K + 2,
            found,
        });
    }
    Ok(())
}

/// A `[layer][head]` table rounded to 6 digits.
pub(crate) fn round6(m: &[Vec<f64>]) -> Vec<Vec<f64>> {
    m.iter().map(|r| r.iter().map(|&v| round(v, 6)).collect()).collect()
}

/// Every layer's attention `[1, heads, s, s]`, quantised to bytes and base64-encoded.
pub(crate) fn attention_maps<BB: Backend>(attentions: &[Tensor<BB, 4>]) -> AttentionMaps {
    let [_, heads, s, _] = attentions[0].dims();
    let mut bytes = Vec::with_capacity(attentions.len() * heads * s * s);
    for a in attentions {
        bytes.extend(
            floats(a.clone())
                .iter()
                .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8),
        );
    }
    AttentionMaps {
        layers: attentions.len(),
        heads,
        seq: s,
        encoding: "u8 base64, value/255, [layer][head][query][key]".into(),
        data: base64::engine::general_purpose::STANDARD.encode(&bytes),
    }
}

/// The pruning curve (the metric with the least important heads by `gate` masked, 0–90 %)
/// and, with `effects`, the metric with each head masked alone; `metric(gates)` evaluates
/// the model with head gates `gates` (`[layer][head]`, 0 masks a head).
#[allow(clippy::type_complexity)]
pub(crate) fn pruning_and_effects(
    gate: &[Vec<f64>],
    effects: bool,
    progress: OnProgress<'_>,
    metric: &mut dyn FnMut(&[Vec<f32>]) -> Result<f64, AnalysisError>,
) -> Result<(Vec<PruningPoint>, Option<Vec<Vec<f64>>>), AnalysisError> {
    let total: usize = gate.iter().map(Vec::len).sum();
    let mut pruning = Vec::new();
    for share in [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9] {
        let pruned = (share * total as f64).round() as usize;
        pruning.push(PruningPoint {
            pruned,
            share,
            metric: round(metric(&prune_least_important(gate, pruned))?, 4),
        });
    }
    if !effects {
        return Ok((pruning, None));
    }
    let mut rows = Vec::new();
    let mut done = 0;
    for (l, row) in gate.iter().enumerate() {
        let mut out = Vec::new();
        for h in 0..row.len() {
            progress(Phase::HeadMasking, done, total);
            let mut gates: Vec<Vec<f32>> = gate.iter().map(|r| vec![1.0; r.len()]).collect();
            gates[l][h] = 0.0;
            out.push(round(metric(&gates)?, 4));
            done += 1;
        }
        rows.push(out);
    }
    progress(Phase::HeadMasking, total, total);
    Ok((pruning, Some(rows)))
}

fn text_of(e: &Example) -> ExampleText {
    match &e.input {
        TextInput::Single(a) => ExampleText::Single(a.clone()),
        TextInput::Pair(a, b) => ExampleText::Pair(a.clone(), b.clone()),
    }
}

fn target_of(label: Label) -> Target {
    match label {
        Label::Class(c) => Target::Class(c),
        Label::Score(s) => Target::Score(f64::from(s)),
    }
}

/// The row of one example from its output `row` (logits, or the score).
fn example_row(e: &Example, row: &[f32]) -> ExampleRow {
    let (prediction, p_gold, loss) = match e.label {
        Label::Score(gold) => (
            Target::Score(round(f64::from(row[0]), 4)),
            None,
            f64::from(row[0] - gold).powi(2),
        ),
        Label::Class(gold) => {
            let max = row.iter().copied().fold(f32::MIN, f32::max);
            let z: f32 = row.iter().map(|v| (v - max).exp()).sum();
            let p: Vec<f32> = row.iter().map(|v| (v - max).exp() / z).collect();
            let pred = (0..row.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0);
            (
                Target::Class(pred),
                Some(round(f64::from(p[gold]), 4)),
                -f64::from(p[gold].max(1e-12)).ln(),
            )
        }
    };
    ExampleRow {
        text: text_of(e),
        label: target_of(e.label),
        prediction,
        p_gold,
        loss: round(loss, 4),
    }
}

/// PCA, t-SNE and UMAP of each layer's points (`pooled[l]`: `n × hidden`, flattened), with
/// distortion scores at [`K`]. With `skip_embeddings` the embedding layer is skipped (at
/// `[CLS]` it is the same vector for every example).
pub(crate) fn projections(
    pooled: &[Vec<f32>],
    n: usize,
    hidden: usize,
    settings: &AnalysisSettings,
    skip_embeddings: bool,
    progress: OnProgress<'_>,
) -> Vec<LayerProjection> {
    let mut out = Vec::new();
    for (l, points) in pooled.iter().enumerate() {
        progress(Phase::Projections, l, pooled.len());
        if l == 0 && skip_embeddings {
            continue;
        }
        let (fit, coords) = pca(points, n, hidden, 2);
        let tsne_config = TsneConfig {
            perplexity: 30.0,
            epochs: settings.tsne_epochs,
            theta: 0.5,
        };
        let t = tsne(points, n, hidden, tsne_config);
        let u = umap(points, n, hidden, UmapConfig::default());
        let all = projection_scores(points, hidden, &[(&coords, 2), (&t, 2), (&u, 2)], K);
        let scores = |m: usize| ProjectionScores {
            neighbourhood_preservation: round(all[m].neighbourhood_preservation, 4),
            trustworthiness: round(all[m].trustworthiness, 4),
        };
        out.push(LayerProjection {
            layer: l,
            pca: Pca {
                coords: Coords::Points(rounded(&coords, 4)),
                explained_variance_ratio: fit.explained_variance_ratio.iter().map(|&v| round(v, 4)).collect(),
                scores: scores(0),
            },
            tsne: Map2d {
                coords: Coords::Points(rounded(&t, 3)),
                scores: scores(1),
            },
            umap: Map2d {
                coords: Coords::Points(rounded(&u, 3)),
                scores: scores(2),
            },
        });
    }
    progress(Phase::Projections, pooled.len(), pooled.len());
    out
}

/// The forward pass's results: each layer's pooled points (`n × hidden`, flattened; layer 0
/// = embeddings), the hidden width, and the per-example rows.
struct ForwardPass {
    pooled: Vec<Vec<f32>>,
    hidden: usize,
    examples: Vec<ExampleRow>,
}

/// What every phase reads: the input, the model's inference copy, the analysed examples.
struct Ctx<'a, B: AutodiffBackend> {
    input: &'a AnalysisInput<'a, B>,
    inner: &'a SequenceClassifier<B::InnerBackend>,
    dev: &'a [Example],
    inputs: Vec<TextInput>,
    settings: &'a AnalysisSettings,
    progress: OnProgress<'a>,
    device: &'a B::Device,
}

impl<B: AutodiffBackend> Ctx<'_, B> {
    fn layers(&self) -> usize {
        self.inner.bert.num_layers()
    }

    /// Whether the heads are the backbone's alone (not for side networks or soft prompts,
    /// whose outputs mix in other parameters): head analyses and saliency need it.
    fn plain_backbone(&self) -> bool {
        self.input.model.side.is_none() && self.input.model.bert.prompt.is_none()
    }

    fn encode(&self, indices: &[usize]) -> Result<BatchEncoding, DataError> {
        encode_indices(self.input.tokenizer, &self.inputs, indices)
    }

    /// Forward pass over the analysed examples: each layer's pooled state (`[CLS]` or mean),
    /// the hidden width, and the per-example rows.
    fn forward_pass(&self) -> Result<ForwardPass, AnalysisError> {
        let (inner, dev) = (self.inner, self.dev);
        let mut pooled: Vec<Vec<f32>> = vec![Vec::new(); self.layers() + 1];
        let mut examples = Vec::new();
        let mut hidden = 0;
        let all: Vec<usize> = (0..dev.len()).collect();
        for chunk in all.chunks(BATCH) {
            (self.progress)(Phase::Forward, examples.len(), dev.len());
            let enc = self.encode(chunk)?;
            let [input_ids, types, mask] = tensors::<B::InnerBackend>(&enc, self.device);
            let capture = Capture {
                hidden_states: true,
                ..Capture::none()
            };
            let out = inner
                .bert
                .forward(input_ids.clone(), Some(types.clone()), Some(mask.clone()), capture);
            for (l, h) in out.hidden_states.iter().enumerate() {
                let [n, _, d] = h.dims();
                hidden = d;
                let p = if self.settings.mean_pool {
                    kiln_model::mean_pool(h.clone(), mask.clone())
                } else {
                    h.clone().slice([0..n, 0..1, 0..d]).reshape([n, d])
                };
                pooled[l].extend(floats(p));
            }
            let logits = floats(inner.forward(input_ids, types, mask));
            let c = inner.num_labels();
            for (k, e) in chunk.iter().map(|&i| &dev[i]).enumerate() {
                examples.push(example_row(e, &logits[k * c..(k + 1) * c]));
            }
        }
        (self.progress)(Phase::Forward, dev.len(), dev.len());
        Ok(ForwardPass {
            pooled,
            hidden,
            examples,
        })
    }

    /// Head importance (gate gradients and first-order Taylor), the pruning curve, and each
    /// head masked alone; `None` where the heads are not the backbone's alone.
    fn heads(&self) -> Result<Option<Heads>, AnalysisError> {
        if !self.plain_backbone() {
            return Ok(None);
        }
        let (model, device) = (self.input.model, self.device);
        let subset = &self.dev[..self.dev.len().min(self.settings.importance_examples)];
        let all: Vec<usize> = (0..subset.len()).collect();
        let batches: Vec<&[usize]> = all.chunks(BATCH).collect();
        let encoded = batches
            .iter()
            .map(|b| Ok((self.encode(b)?, targets::<B>(self.dev, b, device)?)))
            .collect::<Result<Vec<_>, AnalysisError>>()?;
        let done = Cell::new(0);
        let loss_of = |bert: &BertModel<B>, i: usize| {
            let (enc, target) = &encoded[i];
            let [input_ids, types, mask] = tensors::<B>(enc, device);
            let mut m = model.clone();
            m.bert = bert.clone();
            let logits = m.forward(input_ids, types, mask);
            (self.progress)(Phase::Importance, done.get(), 2 * batches.len());
            done.set(done.get() + 1);
            m.loss(logits, target)
        };
        let gate = head_importance(&model.bert, batches.len(), true, &loss_of);
        let taylor = taylor_importance(&model.bert, batches.len(), &loss_of);
        (self.progress)(Phase::Importance, 2 * batches.len(), 2 * batches.len());
        let metric = Cell::new(String::new());
        let mut metric_of = |gates: &[Vec<f32>]| {
            let m = self.metric_with_gates(subset, gates)?;
            metric.set(m.primary.clone());
            Ok(m.primary_value())
        };
        let (pruning, masked_metric) =
            pruning_and_effects(&gate, self.settings.head_effects, self.progress, &mut metric_of)?;
        Ok(Some(Heads {
            gate: round6(&gate),
            taylor: round6(&taylor),
            examples: subset.len(),
            pruning,
            masked_metric,
            metric: metric.take(),
        }))
    }

    /// The dev metric on `subset` with head gates `gates` (`[layer][head]`, 0 masks a head).
    fn metric_with_gates(
        &self,
        subset: &[Example],
        gates: &[Vec<f32>],
    ) -> Result<kiln_data::metrics::TaskMetrics, AnalysisError> {
        let mut pruned = self.inner.clone();
        set_head_gates(&mut pruned.bert, Some(gates));
        Ok(evaluate(
            &pruned,
            self.input.tokenizer,
            self.input.task,
            subset,
            64,
            self.device,
        )?)
    }

    /// One example's token-level views: tokens, every head's attention (u8, base64),
    /// attention / value-zeroing / mixing rollouts from `[CLS]`, per-layer mixing ratios and
    /// gradient attributions.
    fn instance(&self, index: usize) -> Result<Instance, AnalysisError> {
        let (inner, layers, tok) = (self.inner, self.layers(), self.input.tokenizer);
        let enc = self.encode(&[index])?;
        let s = enc.seq;
        let tokens: Vec<String> = enc
            .input_ids
            .iter()
            .map(|&id| tok.token(id as u32).unwrap_or_else(|| format!("#{id}")))
            .collect();
        let [input_ids, types, mask] = tensors::<B::InnerBackend>(&enc, self.device);
        let out = inner.bert.forward(
            input_ids,
            Some(types),
            Some(mask.clone()),
            Capture {
                hidden_states: true,
                ..capture()
            },
        );
        let attentions: Vec<_> = out
            .layers
            .iter()
            .map(|l| l.attention_probs.clone().expect("captured"))
            .collect();

        let from_cls = |t: Tensor<B::InnerBackend, 3>| rounded(&floats(t.slice([0..1, 0..1, 0..s])), 5);
        let vz: Vec<_> = (0..layers)
            .map(|l| value_zeroing_layer(&inner.bert, l, out.hidden_states[l].clone(), mask.clone(), 16))
            .collect();
        let norms: Vec<_> = inner
            .bert
            .encoder
            .layer
            .iter()
            .enumerate()
            .map(|(l, layer)| analyse_layer(layer, &out.layers[l], mask.clone(), self.input.layer_norm_eps))
            .collect();
        let mixing_rollout = from_cls(mixing_rollout(&norms, mask.clone()));
        let mean = |t| round(mean_over_real(t, mask.clone()), 4);
        let mixing = norms
            .into_iter()
            .map(|r| Mixing {
                attn_w: mean(r.attn_w),
                attn_n: mean(r.attn_n),
                attnres_n: mean(r.attnres_n),
                attnresln_n: mean(r.attnresln_n),
            })
            .collect();
        Ok(Instance {
            example: index,
            tokens,
            attention: attention_maps(&attentions),
            rollout: from_cls(rollout(&attentions, mask.clone())),
            value_zeroing_rollout: from_cls(rollout_matrices(&vz, mask.clone(), false)),
            mixing_rollout,
            mixing,
            saliency: self.plain_backbone().then(|| self.saliency(&enc)),
        })
    }

    /// Gradient × input and integrated gradients (PAD baseline) of every output (class logit,
    /// or the regression score) for one encoded example.
    fn saliency(&self, enc: &BatchEncoding) -> Saliency {
        let (model, s) = (self.input.model, enc.seq);
        let [aid, atypes, amask] = tensors::<B>(enc, self.device);
        let [input_ids, types, mask] = tensors::<B::InnerBackend>(enc, self.device);
        let logits = floats(self.inner.forward(input_ids, types, mask));
        let predicted = if self.input.task.is_regression() {
            0
        } else {
            (0..logits.len())
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                .unwrap_or(0)
        };
        let emb = model.bert.embed(aid.clone(), Some(atypes.clone())).detach();
        let pad = model.bert.embed(aid.zeros_like(), Some(atypes)).detach();
        let l2 = |t: Tensor<B::InnerBackend, 3>| floats(t.powf_scalar(2.0).sum_dim(2).sqrt().reshape([s]));
        let steps = self.settings.ig_steps;
        let per_class: Vec<ClassSaliency> = (0..logits.len())
            .map(|class| {
                let f = |emb: Tensor<B, 3>| {
                    let rows = emb.dims()[0];
                    let m = repeat_rows(amask.clone(), rows);
                    let h = model.bert.encode(emb, Some(m), Capture::none()).last_hidden_state;
                    let pooled = model.bert.pooler.as_ref().expect("pooler").forward(h);
                    let out = model.classifier.forward(pooled);
                    out.slice([0..rows, class..class + 1]).reshape([rows])
                };
                let (gx, _) = gradient_x_input(emb.clone(), f);
                let (ig, ig_tok) = integrated_gradients(emb.clone(), Some(pad.clone()), steps, 8, f);
                let f_x = floats(f(emb.clone()).inner())[0];
                let f_baseline = floats(f(pad.clone()).inner())[0];
                let sum: f32 = floats(ig_tok.clone()).iter().sum();
                ClassSaliency {
                    class,
                    grad_x_input: rounded(&floats(gx.clone().sum_dim(2).reshape([s])), 5),
                    grad_x_input_l2: rounded(&l2(gx), 5),
                    integrated_gradients: rounded(&floats(ig_tok.reshape([s])), 5),
                    integrated_gradients_l2: rounded(&l2(ig), 5),
                    ig_completeness: Completeness {
                        sum,
                        f_x,
                        f_baseline,
                        steps,
                    },
                }
            })
            .collect();
        Saliency {
            predicted: per_class[predicted].clone(),
            per_class,
        }
    }
}
