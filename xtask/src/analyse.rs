//! `cargo xtask lens analyse RUN`: the analyses the report shows, computed once from a
//! finished run's best checkpoint on (a prefix of) its dev set, written to
//! `RUN/analysis/analysis.json` (layout in docs/run-directory.md).
//!
//! - per example: text, gold label, prediction, gold-class probability, loss;
//! - projections of the `[CLS]` hidden state of every layer: PCA (explained variance) and
//!   t-SNE and UMAP, each with neighbourhood preservation and trustworthiness at k = 10;
//! - head importance (gate gradients, Michel et al.; first-order Taylor, T3-Vis) and the
//!   pruning curve (dev metric with the least important heads masked);
//! - instances: tokens with gradient × input, integrated gradients (PAD baseline, completeness
//!   reported), attention rollout and value-zeroing rollout from `[CLS]`, per-layer mixing
//!   ratios, and every head's attention map (quantised to bytes, base64).

use std::path::PathBuf;

use anyhow::{bail, Result};
use base64::Engine;
use indicatif::{ProgressBar, ProgressStyle};
use kiln::backend::{BackendJob, DeviceKind};
use kiln::burn::module::AutodiffModule;
use kiln::burn::prelude::*;
use kiln::burn::tensor::backend::AutodiffBackend;
use kiln::data::batching::encode_indices;
use kiln::data::{Example, GlueTask, Label, TextInput, TextTokenizer};
use kiln::lens::attribution::{gradient_x_input, integrated_gradients, repeat_rows, rollout, rollout_matrices};
use kiln::lens::heads::{head_importance, prune_least_important, set_head_gates, taylor_importance};
use kiln::lens::norm::{analyse_layer, capture, mean_over_real, mixing_rollout};
use kiln::lens::projection::{pca, projection_scores, tsne, umap, TsneConfig, UmapConfig};
use kiln::lens::value_zeroing::value_zeroing_layer;
use kiln::model::{BertConfig, Capture, CheckpointDir};
use kiln::tune::classifier::SequenceClassifier;
use kiln::tune::trainer::{targets, tensors};
use serde_json::{json, Value};

pub struct AnalyseJob {
    pub model: PathBuf,
    pub run: PathBuf,
    /// The run's dev examples (GLUE dev file, or the demo fixture's).
    pub dev: Vec<Example>,
    pub settings: AnalyseSettings,
}

/// What `lens analyse` computes and on how much (its command-line options).
#[derive(clap::Args, Clone, Debug)]
pub struct AnalyseSettings {
    /// Dev examples analysed (projection, table).
    #[arg(long, default_value_t = 1000)]
    pub max_examples: usize,
    /// Dev examples used for head importance and the pruning curve.
    #[arg(long, default_value_t = 256, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub importance_examples: usize,
    /// Examples with token-level views.
    #[arg(long, default_value_t = 12)]
    pub instances: usize,
    /// Integrated-gradients steps.
    #[arg(long, default_value_t = 32, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub ig_steps: usize,
    /// t-SNE iterations.
    #[arg(long, default_value_t = 750, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub tsne_epochs: usize,
    /// Project the mean over real tokens instead of the [CLS] state (then the embedding
    /// layer is projected too; at [CLS] it is one point for every example).
    #[arg(long)]
    pub mean_pool: bool,
    /// Checkpoint to analyse: `best` (shown by the report) or another name under
    /// RUN/checkpoints/ (e.g. `last`), written as a snapshot analysis-<name>.json.
    #[arg(long, default_value = "best")]
    pub checkpoint: String,
    /// Re-evaluate with each head masked alone (layers × heads evaluations of the
    /// importance subset), shown in the head grid.
    #[arg(long)]
    pub head_effects: bool,
}

const K: usize = 10;
const BATCH: usize = 32;

fn floats<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32")
}

fn text_of(e: &Example) -> Value {
    match &e.input {
        TextInput::Single(a) => json!(a),
        TextInput::Pair(a, b) => json!([a, b]),
    }
}

fn label_of(e: &Example) -> Value {
    match e.label {
        Label::Class(c) => json!(c),
        Label::Score(s) => json!(s),
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

pub(crate) fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(ProgressStyle::with_template("{msg:>14} [{bar:30}] {pos}/{len} {elapsed}").expect("template"));
    bar.set_message(what.to_string());
    bar
}

impl AnalyseJob {
    /// Settings small enough for the demo (a few seconds on CPU).
    pub fn quick(model: PathBuf, run: PathBuf, dev: Vec<Example>) -> Self {
        Self {
            model,
            run,
            dev,
            settings: AnalyseSettings {
                max_examples: 300,
                importance_examples: 64,
                instances: 8,
                ig_steps: 16,
                tsne_epochs: 500,
                mean_pool: false,
                checkpoint: "best".into(),
                head_effects: true,
            },
        }
    }
}

impl BackendJob for AnalyseJob {
    type Output = Result<PathBuf>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _kind: DeviceKind) -> Self::Output {
        let settings = &self.settings;
        let (mut model, tuning, run_config, task) =
            crate::export::load_run::<B>(&self.model, &self.run, &settings.checkpoint, &device)?;
        model.set_dropout(0.0);
        let tok = TextTokenizer::from_file(CheckpointDir::new(&self.model).tokenizer(), run_config.train.max_length)?;
        let dev = &self.dev[..self.dev.len().min(settings.max_examples)];
        if dev.len() < 2 * K + 2 {
            bail!("need at least {} dev examples, found {}", 2 * K + 2, dev.len());
        }
        let inner = model.valid();
        let ctx = Ctx {
            model: &model,
            inner: &inner,
            tok: &tok,
            dev,
            inputs: dev.iter().map(|e| e.input.clone()).collect(),
            task,
            settings,
            layer_norm_eps: BertConfig::from_file(CheckpointDir::new(&self.model).config())?.layer_norm_eps,
            device: &device,
        };
        let (cls, hidden, examples) = ctx.forward_pass()?;
        let projections = projections(&cls, dev.len(), hidden, settings);
        let heads = ctx.heads()?;
        let chosen = dev.len().min(settings.instances);
        let bar = progress(chosen, "instances");
        let mut instances = Vec::new();
        for index in 0..chosen {
            instances.push(ctx.instance(index)?);
            bar.inc(1);
        }
        bar.finish();
        let of = if settings.mean_pool {
            "mean of the hidden states over real tokens"
        } else {
            "[CLS] hidden state"
        };
        let analysis = json!({
            "format": "kiln.analysis.v1",
            "task": task.short_name(),
            "strategy": tuning.name(),
            "checkpoint": settings.checkpoint,
            "regression": task.is_regression(),
            "num_labels": task.num_labels(),
            "split": "dev",
            "examples": examples,
            "projection": {"of": of, "k": K, "layers": projections},
            "heads": heads,
            "instances": instances,
        });
        let dir = self.run.join("analysis");
        std::fs::create_dir_all(&dir)?;
        let path = if settings.checkpoint == "best" {
            dir.join("analysis.json")
        } else {
            dir.join(format!("analysis-{}.json", settings.checkpoint))
        };
        kiln::tune::checkpoint::write_atomic(&path, serde_json::to_string(&analysis)?.as_bytes())?;
        Ok(path)
    }
}

/// What every phase of the analysis reads: the model (autodiff, for gradients) and its
/// inference copy, the tokenizer, the dev prefix and the settings.
struct Ctx<'a, B: AutodiffBackend> {
    model: &'a SequenceClassifier<B>,
    inner: &'a SequenceClassifier<B::InnerBackend>,
    tok: &'a TextTokenizer,
    dev: &'a [Example],
    inputs: Vec<TextInput>,
    task: GlueTask,
    settings: &'a AnalyseSettings,
    layer_norm_eps: f64,
    device: &'a B::Device,
}

/// The per-example row of `examples[]` from its output `row` (logits, or the score).
fn example_row(e: &Example, row: &[f32], regression: bool) -> Value {
    let (prediction, confidence, loss) = if regression {
        let gold = if let Label::Score(s) = e.label { s } else { 0.0 };
        (
            json!(round(row[0] as f64, 4)),
            Value::Null,
            ((row[0] - gold) as f64).powi(2),
        )
    } else {
        let max = row.iter().copied().fold(f32::MIN, f32::max);
        let z: f32 = row.iter().map(|v| (v - max).exp()).sum();
        let p: Vec<f32> = row.iter().map(|v| (v - max).exp() / z).collect();
        let pred = (0..row.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0);
        let gold = if let Label::Class(g) = e.label { g } else { 0 };
        (
            json!(pred),
            json!(round(p[gold] as f64, 4)),
            -(p[gold].max(1e-12) as f64).ln(),
        )
    };
    json!({
        "text": text_of(e),
        "label": label_of(e),
        "prediction": prediction,
        "p_gold": confidence,
        "loss": round(loss, 4),
    })
}

/// PCA, t-SNE and UMAP of each layer's points (`cls[l]`: `n × hidden`, flattened), with
/// neighbourhood preservation and trustworthiness at `K`. The embedding layer at `[CLS]` is
/// skipped: it is the same vector for every example.
fn projections(cls: &[Vec<f32>], n: usize, hidden: usize, settings: &AnalyseSettings) -> Vec<Value> {
    let bar = progress(cls.len(), "projections");
    let mut projections = Vec::new();
    for (l, points) in cls.iter().enumerate() {
        if l == 0 && !settings.mean_pool {
            bar.inc(1);
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
        let both = projection_scores(points, hidden, &[(&coords, 2), (&t, 2), (&u, 2)], K);
        let scores = |m: usize| {
            json!({
                "neighbourhood_preservation": round(both[m].neighbourhood_preservation, 4),
                "trustworthiness": round(both[m].trustworthiness, 4),
            })
        };
        let rounded = |v: &[f32], d| v.iter().map(|&x| round(x as f64, d)).collect::<Vec<_>>();
        projections.push(json!({
            "layer": l,
            "pca": {
                "coords": rounded(&coords, 4),
                "explained_variance_ratio": fit.explained_variance_ratio.iter().map(|&v| round(v, 4)).collect::<Vec<_>>(),
                "scores": scores(0),
            },
            "tsne": {"coords": rounded(&t, 3), "scores": scores(1)},
            "umap": {"coords": rounded(&u, 3), "scores": scores(2)},
        }));
        bar.inc(1);
    }
    bar.finish();
    projections
}

impl<B: AutodiffBackend> Ctx<'_, B> {
    fn layers(&self) -> usize {
        self.inner.bert.num_layers()
    }

    /// Whether the heads are the backbone's alone (not for side networks or soft prompts,
    /// whose outputs mix in other parameters): head analyses and saliency need it.
    fn plain_backbone(&self) -> bool {
        self.model.side.is_none() && self.model.bert.prompt.is_none()
    }

    /// Forward pass over the dev prefix: each layer's pooled state (`[CLS]` or mean), the
    /// hidden width, and the per-example rows.
    fn forward_pass(&self) -> Result<(Vec<Vec<f32>>, usize, Vec<Value>)> {
        let (inner, dev) = (self.inner, self.dev);
        let bar = progress(dev.len(), "forward");
        let mut cls: Vec<Vec<f32>> = vec![Vec::new(); self.layers() + 1];
        let mut examples = Vec::new();
        let mut hidden = 0;
        let all: Vec<usize> = (0..dev.len()).collect();
        for chunk in all.chunks(BATCH) {
            let enc = encode_indices(self.tok, &self.inputs, chunk)?;
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
                let pooled = if self.settings.mean_pool {
                    kiln::model::mean_pool(h.clone(), mask.clone())
                } else {
                    h.clone().slice([0..n, 0..1, 0..d]).reshape([n, d])
                };
                cls[l].extend(floats(pooled));
            }
            let logits = floats(inner.forward(input_ids, types, mask));
            let c = inner.num_labels();
            for (k, e) in chunk.iter().map(|&i| &dev[i]).enumerate() {
                examples.push(example_row(e, &logits[k * c..(k + 1) * c], self.task.is_regression()));
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish();
        Ok((cls, hidden, examples))
    }

    /// Head importance (gate gradients and first-order Taylor), the pruning curve, and each
    /// head masked alone; `null` where the heads are not the backbone's alone.
    fn heads(&self) -> Result<Value> {
        if !self.plain_backbone() {
            return Ok(Value::Null);
        }
        let (model, device) = (self.model, self.device);
        let subset = &self.dev[..self.dev.len().min(self.settings.importance_examples)];
        let all: Vec<usize> = (0..subset.len()).collect();
        let batches: Vec<&[usize]> = all.chunks(BATCH).collect();
        let bar = progress(2 * batches.len(), "importance");
        let loss_of = |bert: &kiln::model::BertModel<B>, i: usize| {
            let enc = encode_indices(self.tok, &self.inputs, batches[i]).expect("encodes");
            let [input_ids, types, mask] = tensors::<B>(&enc, device);
            let mut m = model.clone();
            m.bert = bert.clone();
            let logits = m.forward(input_ids, types, mask);
            bar.inc(1);
            m.loss(
                logits,
                &targets::<B>(self.dev, batches[i], device).expect("one label kind"),
            )
        };
        let gate = head_importance(&model.bert, batches.len(), true, &loss_of);
        let taylor = taylor_importance(&model.bert, batches.len(), &loss_of);
        bar.finish();
        let total: usize = gate.iter().map(Vec::len).sum();
        let mut curve = Vec::new();
        let mut metric = String::new();
        for share in [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9] {
            let count = (share * total as f64).round() as usize;
            let m = self.metric_with_gates(subset, &prune_least_important(&gate, count))?;
            metric.clone_from(&m.primary);
            curve.push(json!({"pruned": count, "share": share, "metric": round(m.primary_value(), 4)}));
        }
        let masked = if self.settings.head_effects {
            json!(self.masked_metrics(subset, &gate)?)
        } else {
            Value::Null
        };
        let round2 = |m: &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
            m.iter().map(|r| r.iter().map(|&v| round(v, 6)).collect()).collect()
        };
        Ok(json!({
            "gate": round2(&gate),
            "taylor": round2(&taylor),
            "examples": subset.len(),
            "pruning": curve,
            "masked_metric": masked,
            "metric": metric,
        }))
    }

    /// The dev metric on `subset` with head gates `gates` (`[layer][head]`, 0 masks a head).
    fn metric_with_gates(&self, subset: &[Example], gates: &[Vec<f32>]) -> Result<kiln::data::metrics::TaskMetrics> {
        let mut pruned = self.inner.clone();
        set_head_gates(&mut pruned.bert, Some(gates));
        Ok(kiln::tune::trainer::evaluate(
            &pruned,
            self.tok,
            self.task,
            subset,
            64,
            self.device,
        )?)
    }

    /// Each head masked alone: the precomputed effect the head grid shows.
    fn masked_metrics(&self, subset: &[Example], gate: &[Vec<f64>]) -> Result<Vec<Vec<f64>>> {
        let total: usize = gate.iter().map(Vec::len).sum();
        let bar = progress(total, "head masking");
        let mut rows = Vec::new();
        for (l, row) in gate.iter().enumerate() {
            let mut out = Vec::new();
            for h in 0..row.len() {
                let mut gates: Vec<Vec<f32>> = gate.iter().map(|r| vec![1.0; r.len()]).collect();
                gates[l][h] = 0.0;
                out.push(round(self.metric_with_gates(subset, &gates)?.primary_value(), 4));
                bar.inc(1);
            }
            rows.push(out);
        }
        bar.finish();
        Ok(rows)
    }

    /// One example's token-level views: tokens, every head's attention (u8, base64),
    /// attention / value-zeroing / mixing rollouts from `[CLS]`, per-layer mixing ratios and
    /// gradient attributions.
    fn instance(&self, index: usize) -> Result<Value> {
        let (inner, layers) = (self.inner, self.layers());
        let enc = encode_indices(self.tok, &self.inputs, &[index])?;
        let s = enc.seq;
        let tokens: Vec<String> = enc
            .input_ids
            .iter()
            .map(|&id| self.tok.token(id as u32).unwrap_or_else(|| format!("#{id}")))
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
        let heads_n = attentions[0].dims()[1];
        let mut att_bytes = Vec::with_capacity(layers * heads_n * s * s);
        for a in &attentions {
            att_bytes.extend(
                floats(a.clone())
                    .iter()
                    .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8),
            );
        }
        let from_cls = |t: Tensor<B::InnerBackend, 3>| {
            floats(t.slice([0..1, 0..1, 0..s]))
                .iter()
                .map(|&v| round(v as f64, 5))
                .collect::<Vec<_>>()
        };
        let roll = from_cls(rollout(&attentions, mask.clone()));
        let vz: Vec<_> = (0..layers)
            .map(|l| value_zeroing_layer(&inner.bert, l, out.hidden_states[l].clone(), mask.clone(), 16))
            .collect();
        let vz_roll = from_cls(rollout_matrices(&vz, mask.clone(), false));
        let norms: Vec<_> = inner
            .bert
            .encoder
            .layer
            .iter()
            .enumerate()
            .map(|(l, layer)| analyse_layer(layer, &out.layers[l], mask.clone(), self.layer_norm_eps))
            .collect();
        let mix_roll = from_cls(mixing_rollout(&norms, mask.clone()));
        let mean = |t| round(mean_over_real(t, mask.clone()), 4);
        let mixing: Vec<Value> = norms
            .into_iter()
            .map(|r| {
                json!({
                    "attn_w": mean(r.attn_w),
                    "attn_n": mean(r.attn_n),
                    "attnres_n": mean(r.attnres_n),
                    "attnresln_n": mean(r.attnresln_n),
                })
            })
            .collect();
        let saliency = if self.plain_backbone() {
            self.saliency(&enc)
        } else {
            Value::Null
        };
        Ok(json!({
            "example": index,
            "tokens": tokens,
            "attention": {
                "layers": layers, "heads": heads_n, "seq": s,
                "encoding": "u8 base64, value/255, [layer][head][query][key]",
                "data": base64::engine::general_purpose::STANDARD.encode(&att_bytes),
            },
            "rollout": roll,
            "value_zeroing_rollout": vz_roll,
            "mixing_rollout": mix_roll,
            "mixing": mixing,
            "saliency": saliency,
        }))
    }

    /// Gradient × input and integrated gradients (PAD baseline) of every output (class logit,
    /// or the regression score) for one encoded example; the predicted output's set at the top
    /// level, all of them under `per_class`.
    fn saliency(&self, enc: &kiln::data::BatchEncoding) -> Value {
        let (model, s) = (self.model, enc.seq);
        let [aid, atypes, amask] = tensors::<B>(enc, self.device);
        let [input_ids, types, mask] = tensors::<B::InnerBackend>(enc, self.device);
        let logits = floats(self.inner.forward(input_ids, types, mask));
        let predicted = if self.task.is_regression() {
            0
        } else {
            (0..logits.len())
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                .unwrap_or(0)
        };
        let emb = model.bert.embed(aid.clone(), Some(atypes.clone())).detach();
        let pad = model.bert.embed(aid.zeros_like(), Some(atypes)).detach();
        let l2 = |t: Tensor<B::InnerBackend, 3>| floats(t.powf_scalar(2.0).sum_dim(2).sqrt().reshape([s]));
        let r5 = |v: Vec<f32>| v.iter().map(|&x| round(x as f64, 5)).collect::<Vec<_>>();
        let steps = self.settings.ig_steps;
        let per_class: Vec<Value> = (0..logits.len())
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
                let fx = floats(f(emb.clone()).inner())[0];
                let f0 = floats(f(pad.clone()).inner())[0];
                let ig_sum: f32 = floats(ig_tok.clone()).iter().sum();
                json!({
                    "class": class,
                    "grad_x_input": r5(floats(gx.clone().sum_dim(2).reshape([s]))),
                    "grad_x_input_l2": r5(l2(gx)),
                    "integrated_gradients": r5(floats(ig_tok.reshape([s]))),
                    "integrated_gradients_l2": r5(l2(ig)),
                    "ig_completeness": {"sum": ig_sum, "f_x": fx, "f_baseline": f0, "steps": steps},
                })
            })
            .collect();
        let mut saliency = per_class[predicted].clone();
        saliency["per_class"] = json!(per_class);
        saliency
    }
}
