//! `cargo xtask bench generate` (decoding speed: softmax + KV cache vs RNN mode) and
//! `cargo xtask bench attention` (each mechanism's forward and forward + backward at growing
//! sequence lengths). Both print a table and write JSON, markdown and (generate) charts.

use std::time::Instant;

use anyhow::Result;
use kiln::attention::{Attention, AttentionMask, AttentionVariant};
use kiln::backend::{BackendJob, DeviceKind};
use kiln::burn::prelude::*;
use kiln::burn::tensor::backend::AutodiffBackend;
use kiln::burn::tensor::{Distribution, TensorData};
use kiln::model::{DecodeState, Gpt2Model, GptConfig};
use serde::Serialize;

use kiln::tune::trainer::rss_mb;

pub struct GenerateJob {
    pub model: GptConfig,
    pub lengths: Vec<usize>,
    pub variants: Vec<(String, AttentionVariant)>,
    /// Tokens averaged at each length (those just before it).
    pub window: usize,
}

/// One variant at one length.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateRow {
    pub variant: String,
    pub length: usize,
    pub ms_per_token: f64,
    /// Attention state held (KV cache or recurrent state), MiB.
    pub state_mb: f64,
    /// Resident set of the process when the length was reached, MiB.
    pub rss_mb: Option<f64>,
}

impl BackendJob for GenerateJob {
    type Output = Result<Vec<GenerateRow>>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _kind: DeviceKind) -> Self::Output {
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let max = self.lengths.iter().copied().max().unwrap_or(0);
        let mut config = self.model.clone();
        config.n_positions = config.n_positions.max(max);
        let mut rows = Vec::new();
        for (name, variant) in &self.variants {
            I::<B>::seed(&device, 0);
            let mut model = Gpt2Model::<I<B>>::new(&config, &device);
            model.convert_attention(variant, None, 0.0);
            let mut state = DecodeState::new(model.num_layers());
            let mut token = 1i64;
            let mut times = Vec::with_capacity(max);
            let bar = crate::analyse::progress(max, name);
            for pos in 0..max {
                let started = Instant::now();
                let input = Tensor::<I<B>, 2, Int>::from_data(TensorData::new(vec![token], [1, 1]), &device);
                let (logits, next) = model.step(input, state)?;
                state = next;
                // Greedy: the host needs the token, which also synchronises the device.
                token = logits.argmax(1).into_scalar().elem::<i64>();
                times.push(started.elapsed().as_secs_f64());
                bar.inc(1);
                if self.lengths.contains(&(pos + 1)) {
                    let lo = (pos + 1).saturating_sub(self.window);
                    let mean = times[lo..].iter().sum::<f64>() / (pos + 1 - lo) as f64;
                    rows.push(GenerateRow {
                        variant: name.clone(),
                        length: pos + 1,
                        ms_per_token: mean * 1e3,
                        state_mb: state.state_bytes() as f64 / (1024.0 * 1024.0),
                        rss_mb: rss_mb(),
                    });
                }
            }
            bar.finish_and_clear();
        }
        Ok(rows)
    }
}

pub struct AttentionJob {
    pub lengths: Vec<usize>,
    pub variants: Vec<(String, AttentionVariant)>,
    pub heads: usize,
    pub head_dim: usize,
    pub causal: bool,
    pub iters: usize,
    /// Also measure each training step's peak memory in a child process.
    pub memory: bool,
    /// This process is such a child: run one forward + backward per (variant, length) and
    /// print its peak-RSS growth.
    pub peak_child: bool,
}

/// Peak memory (MiB above the inputs) of one forward + backward of `variant` at `n`, measured
/// in a fresh child process with glibc's default allocator settings, so that nothing retained
/// from other lengths hides the growth.
fn train_peak_in_child(name: &str, n: usize, heads: usize, head_dim: usize, causal: bool) -> Option<f64> {
    let mut cmd = std::process::Command::new(std::env::current_exe().ok()?);
    cmd.args(["bench", "attention", "--peak-child", "--iters", "1"])
        .args(["--lengths", &n.to_string(), "--variants", name])
        .args(["--heads", &heads.to_string(), "--head-dim", &head_dim.to_string()])
        .env("KILN_MALLOC_DEFAULTS", "1");
    if !causal {
        cmd.arg("--bidirectional");
    }
    let out = cmd.output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("PEAK ")?.trim().parse().ok())
}

/// One mechanism at one length.
#[derive(Debug, Clone, Serialize)]
pub struct AttentionRow {
    pub variant: String,
    pub length: usize,
    pub forward_ms: f64,
    pub backward_ms: f64,
    /// Peak memory of one forward + backward above its inputs, MiB (with `--memory`).
    pub train_peak_mb: Option<f64>,
}

impl BackendJob for AttentionJob {
    type Output = Result<Vec<AttentionRow>>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _kind: DeviceKind) -> Self::Output {
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let mut rows = Vec::new();
        let (h, d) = (self.heads, self.head_dim);
        for (name, variant) in &self.variants {
            B::seed(&device, 0);
            let mechanism = variant.build::<B>(h, d, 0.0, &device);
            let inner = variant.build::<I<B>>(h, d, 0.0, &device);
            for &n in &self.lengths {
                let mask = AttentionMask::none().with_causal(self.causal);
                let inner_mask = AttentionMask::none().with_causal(self.causal);
                let qkv = || Tensor::<B, 4>::random([1, h, n, d], Distribution::Normal(0.0, 1.0), &device);
                let (q, k, v) = (qkv(), qkv(), qkv());
                if self.peak_child {
                    let before = rss_mb().unwrap_or(0.0);
                    let out = mechanism.attend(q.require_grad(), k.require_grad(), v.require_grad(), &mask, false);
                    drop(out.context.powi_scalar(2).mean().backward());
                    println!("PEAK {:.1}", kiln::tune::trainer::peak_rss_mb().unwrap_or(0.0) - before);
                    continue;
                }
                let forward = crate::bench::median_time(
                    || {
                        let out = inner.attend(
                            q.clone().inner(),
                            k.clone().inner(),
                            v.clone().inner(),
                            &inner_mask,
                            false,
                        );
                        drop(out.context.into_data());
                    },
                    self.iters,
                );
                let backward = crate::bench::median_time(
                    || {
                        let q = q.clone().require_grad();
                        let out = mechanism.attend(q, k.clone().require_grad(), v.clone().require_grad(), &mask, false);
                        drop(out.context.powi_scalar(2).mean().backward());
                    },
                    self.iters,
                );
                println!(
                    "{name:>12} n={n:>5}: forward {:>9.2} ms, forward+backward {:>9.2} ms",
                    forward * 1e3,
                    backward * 1e3
                );
                let train_peak_mb = self
                    .memory
                    .then(|| train_peak_in_child(name, n, h, d, self.causal))
                    .flatten();
                rows.push(AttentionRow {
                    variant: name.clone(),
                    length: n,
                    forward_ms: forward * 1e3,
                    backward_ms: backward * 1e3,
                    train_peak_mb,
                });
            }
        }
        Ok(rows)
    }
}

/// A measurement of one variant at one length.
pub trait Keyed {
    /// `(variant, length)`.
    fn key(&self) -> (&str, usize);
}

impl Keyed for GenerateRow {
    fn key(&self) -> (&str, usize) {
        (&self.variant, self.length)
    }
}

impl Keyed for AttentionRow {
    fn key(&self) -> (&str, usize) {
        (&self.variant, self.length)
    }
}

/// Markdown table: one row per length, one column per variant.
pub fn markdown<R: Keyed>(rows: &[R], cell: impl Fn(&R) -> String, corner: &str) -> String {
    let mut variants: Vec<&str> = Vec::new();
    let mut lengths: Vec<usize> = Vec::new();
    for r in rows {
        let (v, n) = r.key();
        if !variants.contains(&v) {
            variants.push(v);
        }
        if !lengths.contains(&n) {
            lengths.push(n);
        }
    }
    let mut md = format!(
        "| {corner} | {} |\n|---|{}\n",
        variants.join(" | "),
        "---|".repeat(variants.len())
    );
    for n in lengths {
        let cells: Vec<String> = variants
            .iter()
            .map(|v| rows.iter().find(|r| r.key() == (*v, n)).map_or("–".into(), &cell))
            .collect();
        md.push_str(&format!("| {n} | {} |\n", cells.join(" | ")));
    }
    md
}

/// Writes `out/generate.md` (time, state and RSS tables, the crossover), `generate.json` and
/// `plots/ms_per_token.*`, `plots/state_mb.*`, and prints the tables.
pub fn write_generate_report(rows: &[GenerateRow], model: &GptConfig, out: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let speed = markdown(rows, |r| format!("{:.2}", r.ms_per_token), "length (ms/token)");
    let state = markdown(rows, |r| format!("{:.2}", r.state_mb), "length (state MiB)");
    let rss = markdown(
        rows,
        |r| r.rss_mb.map_or("–".into(), |m| format!("{m:.0}")),
        "length (RSS MiB)",
    );
    let softmax: Vec<&GenerateRow> = rows.iter().filter(|r| r.variant == "softmax").collect();
    let mut crossover = serde_json::Map::new();
    for name in rows.iter().map(|r| r.variant.as_str()).filter(|v| *v != "softmax") {
        if crossover.contains_key(name) {
            continue;
        }
        let first = softmax.iter().find_map(|s| {
            rows.iter()
                .find(|r| r.variant == name && r.length == s.length && r.ms_per_token < s.ms_per_token)
                .map(|r| r.length)
        });
        crossover.insert(name.to_string(), serde_json::json!(first));
    }
    let text = format!(
        "{speed}\n{state}\n{rss}\nFirst measured length at which RNN mode is faster than the KV cache: {}\n",
        serde_json::Value::Object(crossover.clone())
    );
    println!("{text}");
    kiln::tune::checkpoint::write_atomic(&out.join("generate.md"), text.as_bytes())?;
    let json = serde_json::json!({"rows": rows, "crossover": crossover, "model": model});
    kiln::tune::checkpoint::write_atomic(
        &out.join("generate.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    let series = |f: &dyn Fn(&GenerateRow) -> f64| {
        let mut s: Vec<kiln::viz::plots::Series> = Vec::new();
        for r in rows {
            match s.iter_mut().find(|x| x.0 == r.variant) {
                Some(x) => x.1.push((r.length as f64, f(r))),
                None => s.push((r.variant.clone(), vec![(r.length as f64, f(r))])),
            }
        }
        s
    };
    let dir = out.join("plots");
    let mut written = kiln::viz::plots::lines(
        &dir,
        "ms_per_token",
        "decoding time per token (ms)",
        "tokens generated",
        &series(&|r| r.ms_per_token),
    )?;
    written.extend(kiln::viz::plots::lines(
        &dir,
        "state_mb",
        "attention state (MiB)",
        "tokens generated",
        &series(&|r| r.state_mb),
    )?);
    for f in written {
        println!("Written: {}", f.display());
    }

    Ok(())
}
