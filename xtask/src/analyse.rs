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
use kiln::data::{Example, Label, TextInput, TextTokenizer};
use kiln::lens::attribution::{gradient_x_input, integrated_gradients, repeat_rows, rollout, rollout_matrices};
use kiln::lens::heads::{head_importance, prune_least_important, set_head_gates, taylor_importance};
use kiln::lens::norm::{analyse_layer, capture, mean_over_real, mixing_rollout};
use kiln::lens::projection::{pca, projection_scores, tsne, umap, TsneConfig, UmapConfig};
use kiln::lens::value_zeroing::value_zeroing_layer;
use kiln::model::{BertConfig, Capture, CheckpointDir};
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
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let (mut model, tuning, task) =
            crate::export::load_run::<B>(&self.model, &self.run, &self.settings.checkpoint, &device)?;
        model.set_dropout(0.0);
        let (run_config, _) = crate::export::run_config(&self.run)?;
        let max_length = run_config.train.max_length;
        let tok = TextTokenizer::from_file(CheckpointDir::new(&self.model).tokenizer(), max_length)?;
        let dev = &self.dev[..self.dev.len().min(self.settings.max_examples)];
        let inputs: Vec<TextInput> = dev.iter().map(|e| e.input.clone()).collect();
        let all: Vec<usize> = (0..dev.len()).collect();
        let layer_norm_eps = BertConfig::from_file(CheckpointDir::new(&self.model).config())?.layer_norm_eps;
        if dev.len() < 2 * K + 2 {
            bail!("need at least {} dev examples, found {}", 2 * K + 2, dev.len());
        }
        let inner = model.valid();
        let layers = inner.bert.num_layers();
        let regression = task.is_regression();

        // 1. Forward pass: [CLS] states of every layer, predictions, losses.
        let bar = progress(dev.len(), "forward");
        let mut cls: Vec<Vec<f32>> = vec![Vec::new(); layers + 1];
        let mut examples = Vec::new();
        let mut hidden = 0;
        for chunk in all.chunks(BATCH) {
            let enc = encode_indices(&tok, &inputs, chunk)?;
            let [input_ids, types, mask] = tensors::<I<B>>(&enc, &device);
            let out = inner.bert.forward(
                input_ids.clone(),
                Some(types.clone()),
                Some(mask.clone()),
                Capture {
                    hidden_states: true,
                    ..Capture::none()
                },
            );
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
                let row = &logits[k * c..(k + 1) * c];
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
                    let pred = (0..c).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0);
                    let gold = if let Label::Class(g) = e.label { g } else { 0 };
                    (
                        json!(pred),
                        json!(round(p[gold] as f64, 4)),
                        -(p[gold].max(1e-12) as f64).ln(),
                    )
                };
                examples.push(json!({
                    "text": text_of(e),
                    "label": label_of(e),
                    "prediction": prediction,
                    "p_gold": confidence,
                    "loss": round(loss, 4),
                }));
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish();

        // 2. Projections per layer.
        let n = dev.len();
        let bar = progress(layers + 1, "projections");
        let mut projections = Vec::new();
        for (l, points) in cls.iter().enumerate() {
            if l == 0 && !self.settings.mean_pool {
                // The embedding output at [CLS] is the same vector for every example.
                bar.inc(1);
                continue;
            }
            let (fit, coords) = pca(points, n, hidden, 2);
            let t = tsne(
                points,
                n,
                hidden,
                TsneConfig {
                    perplexity: 30.0,
                    epochs: self.settings.tsne_epochs,
                    theta: 0.5,
                },
            );
            let u = umap(points, n, hidden, UmapConfig::default());
            let both = projection_scores(points, hidden, &[(&coords, 2), (&t, 2), (&u, 2)], K);
            let scores = |m: usize| {
                json!({
                    "neighbourhood_preservation": round(both[m].neighbourhood_preservation, 4),
                    "trustworthiness": round(both[m].trustworthiness, 4),
                })
            };
            projections.push(json!({
                "layer": l,
                "pca": {
                    "coords": coords.iter().map(|&v| round(v as f64, 4)).collect::<Vec<_>>(),
                    "explained_variance_ratio": fit.explained_variance_ratio.iter().map(|&v| round(v, 4)).collect::<Vec<_>>(),
                    "scores": scores(0),
                },
                "tsne": {
                    "coords": t.iter().map(|&v| round(v as f64, 3)).collect::<Vec<_>>(),
                    "scores": scores(1),
                },
                "umap": {
                    "coords": u.iter().map(|&v| round(v as f64, 3)).collect::<Vec<_>>(),
                    "scores": scores(2),
                },
            }));
            bar.inc(1);
        }
        bar.finish();

        // 3. Head importance and the pruning curve (skipped for side networks/prompts, whose
        //    heads are not the backbone's alone).
        let mut heads = Value::Null;
        if model.side.is_none() && model.bert.prompt.is_none() {
            let subset = &dev[..dev.len().min(self.settings.importance_examples)];
            let batches: Vec<&[usize]> = all[..subset.len()].chunks(BATCH).collect();
            let bar = progress(2 * batches.len(), "importance");
            let loss_of = |bert: &kiln::model::BertModel<B>, i: usize| {
                let enc = encode_indices(&tok, &inputs, batches[i]).expect("encodes");
                let [input_ids, types, mask] = tensors::<B>(&enc, &device);
                let mut m = model.clone();
                m.bert = bert.clone();
                let logits = m.forward(input_ids, types, mask);
                bar.inc(1);
                m.loss(logits, &targets::<B>(dev, batches[i], &device).expect("one label kind"))
            };
            let gate = head_importance(&model.bert, batches.len(), true, &loss_of);
            let taylor = taylor_importance(&model.bert, batches.len(), &loss_of);
            bar.finish();
            let total: usize = gate.iter().map(Vec::len).sum();
            let mut curve = Vec::new();
            let mut metric = String::new();
            for share in [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9] {
                let count = (share * total as f64).round() as usize;
                let mut pruned = inner.clone();
                set_head_gates(&mut pruned.bert, Some(&prune_least_important(&gate, count)));
                let m = kiln::tune::trainer::evaluate(&pruned, &tok, task, subset, 64, &device)?;
                metric.clone_from(&m.primary);
                curve.push(json!({"pruned": count, "share": share, "metric": round(m.primary_value(), 4)}));
            }
            // Each head masked alone: the precomputed effect the head grid shows.
            let mut masked = Value::Null;
            if self.settings.head_effects {
                let bar = progress(total, "head masking");
                let mut rows = Vec::new();
                for (l, row) in gate.iter().enumerate() {
                    let mut out = Vec::new();
                    for h in 0..row.len() {
                        let mut gates: Vec<Vec<f32>> = gate.iter().map(|r| vec![1.0; r.len()]).collect();
                        gates[l][h] = 0.0;
                        let mut pruned = inner.clone();
                        set_head_gates(&mut pruned.bert, Some(&gates));
                        let m = kiln::tune::trainer::evaluate(&pruned, &tok, task, subset, 64, &device)?;
                        out.push(round(m.primary_value(), 4));
                        bar.inc(1);
                    }
                    rows.push(out);
                }
                bar.finish();
                masked = json!(rows);
            }
            let round2 = |m: &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
                m.iter().map(|r| r.iter().map(|&v| round(v, 6)).collect()).collect()
            };
            heads = json!({
                "gate": round2(&gate),
                "taylor": round2(&taylor),
                "examples": subset.len(),
                "pruning": curve,
                "masked_metric": masked,
                "metric": metric,
            });
        }

        // 4. Instances.
        let mut instances = Vec::new();
        let chosen = dev.len().min(self.settings.instances);
        let bar = progress(chosen, "instances");
        for index in 0..chosen {
            let enc = encode_indices(&tok, &inputs, &[index])?;
            let s = enc.seq;
            let tokens: Vec<String> = enc
                .input_ids
                .iter()
                .map(|&id| tok.token(id as u32).unwrap_or_else(|| format!("#{id}")))
                .collect();
            let [input_ids, types, mask] = tensors::<I<B>>(&enc, &device);
            let out = inner.bert.forward(
                input_ids.clone(),
                Some(types.clone()),
                Some(mask.clone()),
                Capture {
                    hidden_states: true,
                    ..capture()
                },
            );
            let attentions: Vec<Tensor<I<B>, 4>> = out
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
            let roll = floats(rollout(&attentions, mask.clone()).slice([0..1, 0..1, 0..s]));
            let vz: Vec<_> = (0..layers)
                .map(|l| value_zeroing_layer(&inner.bert, l, out.hidden_states[l].clone(), mask.clone(), 16))
                .collect();
            let vz_roll = floats(rollout_matrices(&vz, mask.clone(), false).slice([0..1, 0..1, 0..s]));
            let norms: Vec<_> = inner
                .bert
                .encoder
                .layer
                .iter()
                .enumerate()
                .map(|(l, layer)| analyse_layer(layer, &out.layers[l], mask.clone(), layer_norm_eps))
                .collect();
            let mix_roll = floats(mixing_rollout(&norms, mask.clone()).slice([0..1, 0..1, 0..s]));
            let mut mixing = Vec::new();
            for r in norms {
                let mean = |t| round(mean_over_real(t, mask.clone()), 4);
                mixing.push(json!({
                    "attn_w": mean(r.attn_w),
                    "attn_n": mean(r.attn_n),
                    "attnres_n": mean(r.attnres_n),
                    "attnresln_n": mean(r.attnresln_n),
                }));
            }
            // Gradient attributions of the predicted class logit (regression: the score).
            let mut saliency = Value::Null;
            if model.side.is_none() && model.bert.prompt.is_none() {
                let [aid, atypes, amask] = tensors::<B>(&enc, &device);
                let logits = floats(inner.forward(input_ids.clone(), types.clone(), mask.clone()));
                let predicted = if regression {
                    0
                } else {
                    (0..logits.len())
                        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                        .unwrap_or(0)
                };
                let emb = model.bert.embed(aid.clone(), Some(atypes.clone())).detach();
                let pad = model.bert.embed(aid.zeros_like(), Some(atypes.clone())).detach();
                let l2 = |t: Tensor<I<B>, 3>| floats(t.powf_scalar(2.0).sum_dim(2).sqrt().reshape([s]));
                let r5 = |v: Vec<f32>| v.iter().map(|&x| round(x as f64, 5)).collect::<Vec<_>>();
                // One attribution set per output (class logit, or the regression score).
                let mut per_class = Vec::new();
                for class in 0..logits.len() {
                    let f = |emb: Tensor<B, 3>| {
                        let rows = emb.dims()[0];
                        let m = repeat_rows(amask.clone(), rows);
                        let h = model.bert.encode(emb, Some(m), Capture::none()).last_hidden_state;
                        let pooled = model.bert.pooler.as_ref().expect("pooler").forward(h);
                        let out = model.classifier.forward(pooled);
                        out.slice([0..rows, class..class + 1]).reshape([rows])
                    };
                    let (gx, _) = gradient_x_input(emb.clone(), f);
                    let (ig, ig_tok) =
                        integrated_gradients(emb.clone(), Some(pad.clone()), self.settings.ig_steps, 8, f);
                    let fx = floats(f(emb.clone()).inner())[0];
                    let f0 = floats(f(pad.clone()).inner())[0];
                    let ig_sum: f32 = floats(ig_tok.clone()).iter().sum();
                    per_class.push(json!({
                        "class": class,
                        "grad_x_input": r5(floats(gx.clone().sum_dim(2).reshape([s]))),
                        "grad_x_input_l2": r5(l2(gx)),
                        "integrated_gradients": r5(floats(ig_tok.reshape([s]))),
                        "integrated_gradients_l2": r5(l2(ig)),
                        "ig_completeness": {"sum": ig_sum, "f_x": fx, "f_baseline": f0, "steps": self.settings.ig_steps},
                    }));
                }
                // The predicted output's set at the top level; all of them under `per_class`.
                saliency = per_class[predicted].clone();
                saliency["per_class"] = json!(per_class);
            }
            instances.push(json!({
                "example": index,
                "tokens": tokens,
                "attention": {
                    "layers": layers, "heads": heads_n, "seq": s,
                    "encoding": "u8 base64, value/255, [layer][head][query][key]",
                    "data": base64::engine::general_purpose::STANDARD.encode(&att_bytes),
                },
                "rollout": roll.iter().map(|&v| round(v as f64, 5)).collect::<Vec<_>>(),
                "value_zeroing_rollout": vz_roll.iter().map(|&v| round(v as f64, 5)).collect::<Vec<_>>(),
                "mixing_rollout": mix_roll.iter().map(|&v| round(v as f64, 5)).collect::<Vec<_>>(),
                "mixing": mixing,
                "saliency": saliency,
            }));
            bar.inc(1);
        }
        bar.finish();

        let analysis = json!({
            "format": "kiln.analysis.v1",
            "task": task.short_name(),
            "strategy": tuning.name(),
            "checkpoint": self.settings.checkpoint,
            "regression": regression,
            "num_labels": task.num_labels(),
            "split": "dev",
            "examples": examples,
            "projection": {"of": if self.settings.mean_pool { "mean of the hidden states over real tokens" } else { "[CLS] hidden state" }, "k": K, "layers": projections},
            "heads": heads,
            "instances": instances,
        });
        let dir = self.run.join("analysis");
        std::fs::create_dir_all(&dir)?;
        let path = if self.settings.checkpoint == "best" {
            dir.join("analysis.json")
        } else {
            dir.join(format!("analysis-{}.json", self.settings.checkpoint))
        };
        kiln::tune::checkpoint::write_atomic(&path, serde_json::to_string(&analysis)?.as_bytes())?;
        Ok(path)
    }
}
