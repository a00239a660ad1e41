//! `cargo xtask lm decoder`: the T2R / Hedgehog decoder experiment. Pretrain a small softmax
//! GPT on a text (byte-level, held-out tail), convert it to each linear-attention variant with
//! and without attention transfer, fine-tune each with the same token budget, and report
//! held-out perplexity — plus a softmax control trained for the same extra budget.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use kiln::attention::AttentionVariant;
use kiln::backend::{BackendJob, DeviceKind};
use kiln::burn::module::AutodiffModule;
use kiln::burn::prelude::*;
use kiln::burn::tensor::backend::AutodiffBackend;
use kiln::burn::tensor::TensorData;
use kiln::data::lm::{byte_tokens, bytes_to_text, random_windows, split_tail, BYTE_VOCAB};
use kiln::model::{gpt2_weights_bytes, load_gpt2_weights, Gpt2Model, GptConfig, Sampling};
use kiln::tune::checkpoint::write_atomic;
use kiln::tune::lm::{perplexity, train_lm, LmHistory, LmTrainConfig, Perplexity};
use kiln::tune::transfer::{decoder_attention_transfer, TransferConfig};
use serde_json::json;

use crate::analyse::progress;

pub struct DecoderJob {
    /// Training text (Tiny Shakespeare by default).
    pub text: PathBuf,
    pub out: PathBuf,
    /// Held-out fraction at the end of the text.
    pub tail: f64,
    pub model: GptConfig,
    pub pretrain: LmTrainConfig,
    pub finetune: LmTrainConfig,
    pub transfer: TransferConfig,
    pub variants: Vec<(String, AttentionVariant)>,
    /// Prompt of the sample generations.
    pub prompt: String,
    /// Where the pretrained softmax model is kept (default `out/pretrained`).
    pub pretrained: Option<PathBuf>,
    /// Also fine-tune the softmax model for the same budget (the control row).
    pub control: bool,
}

/// The model of the experiment: byte-level, 4 × 256, 4 heads, 256 positions, no dropout.
pub fn default_model() -> GptConfig {
    serde_json::from_value(json!({
        "vocab_size": BYTE_VOCAB, "n_positions": 256, "n_embd": 256, "n_layer": 4, "n_head": 4,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "activation_function": "gelu_new"
    }))
    .expect("valid config")
}

/// The variants compared, by name.
pub fn variant(name: &str) -> Result<AttentionVariant> {
    Ok(match name {
        "elu" => AttentionVariant::EluLinear,
        "t2r" => AttentionVariant::T2r {
            features: 32,
            eps: 1e-2,
        },
        "performer" => AttentionVariant::Performer { features: 64, seed: 0 },
        "hedgehog" => AttentionVariant::Hedgehog { features: 64 },
        "hybrid" => AttentionVariant::Hybrid {
            window: 64,
            features: 64,
        },
        other => {
            if let Some(w) = other.strip_prefix("window") {
                AttentionVariant::SlidingWindow {
                    window: w
                        .parse()
                        .with_context(|| format!("{other:?}: window<N> needs a width in tokens, e.g. window64"))?,
                }
            } else {
                bail!("unknown variant {other:?}: elu, t2r, performer, hedgehog, hybrid, window<N>")
            }
        }
    })
}

fn history_lines(kind: &str, h: &LmHistory) -> String {
    h.steps
        .iter()
        .map(|s| {
            format!(
                "{}\n",
                json!({"kind": kind, "step": s.step, "loss": s.loss, "lr": s.lr, "grad_norm": s.grad_norm})
            )
        })
        .chain(h.evals.iter().map(|(step, p)| {
            format!(
                "{}\n",
                json!({"kind": kind, "eval_step": step, "perplexity": p.perplexity})
            )
        }))
        .collect()
}

struct Trained<B: AutodiffBackend> {
    model: Gpt2Model<B>,
    history: LmHistory,
}

fn fit<B: AutodiffBackend>(
    model: Gpt2Model<B>,
    train: &[u32],
    held_out: &[u32],
    cfg: &LmTrainConfig,
    what: &str,
    device: &B::Device,
) -> Result<Trained<B>> {
    let bar = progress(cfg.steps, what);
    let (model, history) = train_lm(
        model,
        train,
        held_out,
        cfg,
        &kiln::tune::strategy::Tuning::new(&[])?,
        |s| {
            bar.inc(1);
            if s.step % 25 == 0 {
                bar.set_message(format!("{what} {:.3}", s.loss));
            }
        },
        device,
    )?;
    bar.finish_and_clear();
    Ok(Trained { model, history })
}

impl BackendJob for DecoderJob {
    type Output = Result<serde_json::Value>;

    fn run<B: AutodiffBackend>(self, device: B::Device, kind: DeviceKind) -> Self::Output {
        let text = std::fs::read_to_string(&self.text).with_context(|| self.text.display().to_string())?;
        let ids = byte_tokens(&text);
        let (train, held_out) = split_tail(&ids, self.tail);
        std::fs::create_dir_all(&self.out)?;
        tracing::info!(train = train.len(), held_out = held_out.len(), "byte-level tokens");

        let (pretrained, pretrain_seconds) = self.pretrained_model::<B>(train, held_out, &device)?;
        let teacher = pretrained.valid();
        let eval = |m: &Gpt2Model<B::InnerBackend>| {
            perplexity(m, held_out, self.finetune.block_len, self.finetune.batch_size, &device)
        };
        let base = eval(&teacher);
        println!("pretrained softmax: held-out perplexity {:.3}", base.perplexity);
        let sample = |m: &Gpt2Model<B::InnerBackend>| -> Result<String> {
            let prompt = byte_tokens(&self.prompt);
            let out = m.generate(
                &prompt,
                160,
                Sampling::Temperature {
                    temperature: 0.8,
                    seed: 1,
                },
                &device,
            )?;
            Ok(format!("{}{}", self.prompt, bytes_to_text(&out)))
        };

        let mut rows = Vec::new();
        let mut curves = String::new();
        let mut losses: Vec<kiln::viz::plots::Series> = Vec::new();
        // Control: the softmax model trained for the same extra budget.
        if self.control {
            let t = fit(pretrained.clone(), train, held_out, &self.finetune, "softmax", &device)?;
            let last = t.history.evals.last().expect("final eval").1;
            curves.push_str(&history_lines("softmax", &t.history));
            losses.push(loss_series("softmax", &t.history));
            rows.push(
                json!({"variant": "softmax", "transfer": false, "converted": base.perplexity,
                             "after_transfer": null, "final": last.perplexity, "nats": last.nats_per_token,
                             "finetune_seconds": t.history.train_seconds, "transfer_seconds": 0.0,
                             "sample": sample(&t.model.valid())?}),
            );
            println!("softmax (control): {:.3}", last.perplexity);
        }
        for (name, variant) in &self.variants {
            // Transfer needs trainable feature maps (T2R, Hedgehog, hybrid); ELU has none and
            // Performer's random features stay fixed.
            let learnable = matches!(
                variant,
                AttentionVariant::T2r { .. } | AttentionVariant::Hedgehog { .. } | AttentionVariant::Hybrid { .. }
            );
            let options: &[bool] = if learnable { &[false, true] } else { &[false] };
            for &with_transfer in options {
                let label = if with_transfer {
                    format!("{name}+transfer")
                } else {
                    name.clone()
                };
                B::seed(&device, self.finetune.seed);
                let mut student = pretrained.clone();
                student.convert_attention(variant, None, 0.0);
                let converted: Perplexity = eval(&student.valid());
                let (student, after_transfer, transfer_seconds, transfer_losses) = if with_transfer {
                    let (s, seconds, losses) = self.transfer(student, &teacher, train, &label, &device);
                    let p = eval(&s.valid());
                    (s, Some(p.perplexity), seconds, losses)
                } else {
                    (student, None, 0.0, Vec::new())
                };
                let t = fit(student, train, held_out, &self.finetune, &label, &device)?;
                let last = t.history.evals.last().expect("final eval").1;
                curves.push_str(&history_lines(&label, &t.history));
                losses.push(loss_series(&label, &t.history));
                for (step, loss) in transfer_losses.iter().enumerate() {
                    curves.push_str(&format!(
                        "{}\n",
                        json!({"kind": format!("{label}/transfer"), "step": step, "loss": loss})
                    ));
                }
                println!(
                    "{label}: converted {:.2} → after transfer {} → fine-tuned {:.3}",
                    converted.perplexity,
                    after_transfer.map_or("-".into(), |p: f64| format!("{p:.2}")),
                    last.perplexity
                );
                rows.push(
                    json!({"variant": name, "transfer": with_transfer, "converted": converted.perplexity,
                                 "after_transfer": after_transfer, "final": last.perplexity,
                                 "nats": last.nats_per_token, "finetune_seconds": t.history.train_seconds,
                                 "transfer_seconds": transfer_seconds, "sample": sample(&t.model.valid())?}),
                );
            }
        }
        write_atomic(&self.out.join("curves.jsonl"), curves.as_bytes())?;
        let params: usize = kiln::tune::params::param_infos(&pretrained)
            .iter()
            .map(|p| p.numel())
            .sum();
        let result = json!({
            "format": "kiln.decoder_conversion.v1",
            "device": format!("{kind:?}"),
            "text": self.text, "train_tokens": train.len(), "held_out_tokens": held_out.len(),
            "model": self.model, "parameters": params,
            "pretrain": self.pretrain, "pretrain_seconds": pretrain_seconds, "pretrained": base,
            "finetune": self.finetune, "transfer": self.transfer, "rows": rows,
        });
        write_atomic(
            &self.out.join("results.json"),
            serde_json::to_string_pretty(&result)?.as_bytes(),
        )?;
        write_tables(&self.out, &result)?;
        write_charts(&self.out, losses)?;
        Ok(result)
    }
}

impl DecoderJob {
    /// The pretrained softmax model and its training seconds: reused from its directory when
    /// the same model, budget and text are recorded there, else trained and written.
    fn pretrained_model<B: AutodiffBackend>(
        &self,
        train: &[u32],
        held_out: &[u32],
        device: &B::Device,
    ) -> Result<(Gpt2Model<B>, f64)> {
        let dir = self.pretrained.clone().unwrap_or_else(|| self.out.join("pretrained"));
        let stamp = json!({"model": self.model, "pretrain": self.pretrain, "text": self.text, "tail": self.tail});
        let weights = dir.join("model.safetensors");
        let recorded = std::fs::read_to_string(dir.join("kiln_pretrain.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .filter(|r| r["stamp"] == stamp && weights.exists());
        Ok(if let Some(recorded) = recorded {
            let mut m = Gpt2Model::<B>::new(&self.model, device);
            load_gpt2_weights(&mut m, &weights)?;
            println!("Reusing the pretrained model in {}", dir.display());
            (m, recorded["train_seconds"].as_f64().unwrap_or(f64::NAN))
        } else {
            B::seed(device, self.pretrain.seed);
            let m = Gpt2Model::<B>::new(&self.model, device);
            let t = fit(m, train, held_out, &self.pretrain, "pretrain", device)?;
            std::fs::create_dir_all(&dir)?;
            let mut config = serde_json::to_value(&self.model)?;
            config["model_type"] = json!("gpt2");
            config["architectures"] = json!(["GPT2LMHeadModel"]);
            write_atomic(
                &dir.join("config.json"),
                serde_json::to_string_pretty(&config)?.as_bytes(),
            )?;
            write_atomic(&weights, &gpt2_weights_bytes(&t.model)?)?;
            write_atomic(
                &self.out.join("pretrain.jsonl"),
                history_lines("pretrain", &t.history).as_bytes(),
            )?;
            let meta = json!({"stamp": stamp, "train_seconds": t.history.train_seconds,
                              "final": t.history.evals.last().map(|e| e.1)});
            write_atomic(
                &dir.join("kiln_pretrain.json"),
                serde_json::to_string_pretty(&meta)?.as_bytes(),
            )?;
            (t.model, t.history.train_seconds)
        })
    }

    /// Attention transfer of `student` to `teacher` on windows of the training stream: the
    /// student, the seconds it took and the per-step losses.
    fn transfer<B: AutodiffBackend>(
        &self,
        student: Gpt2Model<B>,
        teacher: &Gpt2Model<B::InnerBackend>,
        train: &[u32],
        label: &str,
        device: &B::Device,
    ) -> (Gpt2Model<B>, f64, Vec<f64>) {
        let started = Instant::now();
        let bar = progress(self.transfer.steps, &format!("{label} transfer"));
        let windows = self.transfer.batch_size;
        let block = self.finetune.block_len;
        let seed = self.finetune.seed;
        let (s, losses) = decoder_attention_transfer(student, teacher, &self.transfer, |step| {
            bar.inc(1);
            let ids: Vec<i64> = random_windows(train, block, windows, seed ^ 0x7A5 ^ step as u64)
                .into_iter()
                .map(i64::from)
                .collect();
            Tensor::from_data(TensorData::new(ids, [windows, block]), device)
        });
        bar.finish_and_clear();
        (s, started.elapsed().as_secs_f64(), losses)
    }
}

/// A run's training losses as a plot series.
fn loss_series(label: &str, h: &LmHistory) -> kiln::viz::plots::Series {
    (
        label.to_string(),
        h.steps.iter().map(|s| (s.step as f64, s.loss)).collect(),
    )
}

fn write_tables(out: &std::path::Path, result: &serde_json::Value) -> Result<()> {
    let rows = result["rows"].as_array().cloned().unwrap_or_default();
    let fmt = |v: &serde_json::Value| v.as_f64().map_or("–".to_string(), |x| format!("{x:.2}"));
    let mut md = String::from(
        "| variant | attention transfer | ppl right after conversion | after transfer | after fine-tuning | fine-tune s |\n|---|---|---|---|---|---|\n",
    );
    let mut csv = String::from("variant,transfer,converted,after_transfer,final,finetune_seconds,transfer_seconds\n");
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | **{}** | {:.0} |\n",
            r["variant"].as_str().unwrap_or("?"),
            if r["transfer"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            fmt(&r["converted"]),
            fmt(&r["after_transfer"]),
            fmt(&r["final"]),
            r["finetune_seconds"].as_f64().unwrap_or(f64::NAN)
        ));
        csv.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            r["variant"].as_str().unwrap_or("?"),
            r["transfer"],
            r["converted"],
            r["after_transfer"],
            r["final"],
            r["finetune_seconds"],
            r["transfer_seconds"]
        ));
    }
    write_atomic(&out.join("table.md"), md.as_bytes())?;
    write_atomic(&out.join("table.csv"), csv.as_bytes())?;
    println!("{md}");
    Ok(())
}

/// Fine-tuning loss curves of every row (smoothed over 10 steps) → `plots/finetune_loss.*`.
fn write_charts(out: &std::path::Path, mut series: Vec<kiln::viz::plots::Series>) -> Result<()> {
    for s in &mut series {
        let raw: Vec<f64> = s.1.iter().map(|p| p.1).collect();
        for (i, p) in s.1.iter_mut().enumerate() {
            let lo = i.saturating_sub(9);
            p.1 = raw[lo..=i].iter().sum::<f64>() / (i - lo + 1) as f64;
        }
    }
    let written = kiln::viz::plots::lines(
        &out.join("plots"),
        "finetune_loss",
        "fine-tuning loss (nats/byte, 10-step mean)",
        "step",
        &series,
    )?;
    for f in written {
        println!("Written: {}", f.display());
    }
    Ok(())
}
