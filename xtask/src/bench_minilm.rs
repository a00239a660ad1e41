//! `cargo xtask bench minilm | memory | leak`: MiniLM inference and fine-tuning throughput,
//! peak memory against batch and sequence length, and a long-run leak check — each compared
//! with PyTorch eager when `--baseline-python` names a Python with torch + transformers.
//!
//! Every (workload, shape) is measured in its own child process (this binary re-invoked with
//! one shape), so each peak RSS belongs to one workload; the PyTorch side runs
//! `benches/python/bench_minilm.py`, which does the same work and prints the same JSON line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use kiln::backend::{run_on, BackendJob, DeviceKind};
use kiln::burn::module::AutodiffModule;
use kiln::burn::optim::GradientsParams;
use kiln::burn::prelude::*;
use kiln::burn::tensor::backend::AutodiffBackend;
use kiln::burn::tensor::{Distribution, TensorData};
use kiln::tune::classifier::{SequenceClassifier, Targets};
use kiln::tune::optim::{AdamW, AdamWConfig, ParamGroup};
use serde::{Deserialize, Serialize};

use crate::bench::minilm_shaped_config;

/// What one measurement times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Inference: classifier logits without autodiff.
    Forward,
    /// Fine-tuning: forward with dropout, cross-entropy, backward, clip to norm 1, AdamW step.
    TrainStep,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Self::Forward => "minilm_forward",
            Self::TrainStep => "minilm_train_step",
        }
    }
    /// The row name for a model of `size` (`minilm_forward`, `bert_base_train_step` …), as
    /// benches/python/bench_minilm.py names its rows.
    fn row_name(self, size: ModelSize) -> String {
        format!("{}_{}", size.arg().replace('-', "_"), self.python_mode())
    }
    fn python_mode(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::TrainStep => "train_step",
        }
    }
}

/// The encoder measured: MiniLM (pretrained when found, else random weights) or a random
/// BERT-base-sized one (GPU throughput and model-FLOPs utilisation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelSize {
    /// all-MiniLM-L6-v2's shape: 6 layers, width 384, FFN 1536, 12 heads.
    #[default]
    Minilm,
    /// BERT-base's shape: 12 layers, width 768, FFN 3072, 12 heads (random weights).
    BertBase,
}

impl ModelSize {
    fn config(self) -> kiln::model::BertConfig {
        match self {
            Self::Minilm => minilm_shaped_config(),
            Self::BertBase => serde_json::from_value(serde_json::json!({
                "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
                "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512
            }))
            .expect("valid config"),
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Self::Minilm => "minilm",
            Self::BertBase => "bert-base",
        }
    }
}

/// Model FLOPs of one sequence of `seq` tokens: the matrix products of the encoder (QKV,
/// output, FFN: `2·(4d² + 2·d·ff)` per token and layer; scores and context: `4·S·d`) plus
/// pooler and classifier, ×3 for a training step (backward = 2× forward). Embedding gathers,
/// norms, softmax and the optimizer are not counted, as in the usual MFU convention.
pub fn model_flops_per_seq(size: ModelSize, seq: usize, workload: Workload) -> f64 {
    let c = size.config();
    let (d, ff, l, s) = (
        c.hidden_size as f64,
        c.intermediate_size as f64,
        c.num_hidden_layers as f64,
        seq as f64,
    );
    let forward = s * l * (8.0 * d * d + 4.0 * d * ff + 4.0 * s * d) + 2.0 * d * d + 4.0 * d;
    match workload {
        Workload::Forward => forward,
        Workload::TrainStep => 3.0 * forward,
    }
}

/// One JSON line of `bench minilm --json` (the PyTorch script prints the same keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub name: String,
    pub device: String,
    pub backend: String,
    pub batch: usize,
    pub seq: usize,
    pub seq_per_s: f64,
    pub tokens_per_s: f64,
    pub peak_rss_mb: Option<f64>,
    /// Model FLOP rate (TFLOP/s, [`model_flops_per_seq`] × seq/s); filled in by the parent.
    #[serde(default)]
    pub model_tflops: Option<f64>,
}

#[derive(clap::Args)]
pub struct MinilmArgs {
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    /// Shapes as BATCHxSEQ (replaced by --batch/--seq when both are given).
    #[arg(long, value_delimiter = ',', default_value = "32x128,32x32")]
    pub shapes: Vec<String>,
    #[arg(long)]
    pub batch: Option<usize>,
    #[arg(long)]
    pub seq: Option<usize>,
    #[arg(long, value_enum, value_delimiter = ',', default_value = "forward,train-step")]
    pub workloads: Vec<Workload>,
    /// Timed iterations (median reported, after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Model directory (default: located like demo; random MiniLM-shaped weights if absent).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Encoder shape; `bert-base` always uses random weights.
    #[arg(long, value_enum, default_value = "minilm")]
    pub size: ModelSize,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// A Python with torch + transformers: run benches/python/bench_minilm.py on the same
    /// workloads and report kiln/PyTorch ratios.
    #[arg(long)]
    pub baseline_python: Option<PathBuf>,
    /// Torch threads for the baseline (0: PyTorch's default).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Let the PyTorch baseline use TF32 tensor cores for f32 matmuls on CUDA, as burn 0.21's
    /// CUDA matmul does (like-for-like GPU comparison; PyTorch's default keeps TF32 off).
    #[arg(long)]
    pub baseline_tf32: bool,
    /// Where results.jsonl and table.md go (with more than one measurement).
    #[arg(long, default_value = "docs/bench/minilm")]
    pub out: PathBuf,
}

#[derive(clap::Args)]
pub struct MemoryArgs {
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
    pub batches: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "32,64,128")]
    pub seqs: Vec<usize>,
    #[arg(long, default_value_t = 2)]
    pub iters: usize,
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub baseline_python: Option<PathBuf>,
    #[arg(long, default_value = "docs/bench/memory")]
    pub out: PathBuf,
}

#[derive(clap::Args)]
pub struct LeakArgs {
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    #[arg(long, default_value_t = 1000)]
    pub steps: usize,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 32)]
    pub seq: usize,
    /// RSS is sampled every this many steps.
    #[arg(long, default_value_t = 20)]
    pub every: usize,
    /// Growth over the second half of the run (MiB) above which the command fails.
    #[arg(long, default_value_t = 32.0)]
    pub max_growth_mb: f64,
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value = "docs/bench/leak")]
    pub out: PathBuf,
}

fn locate_model(model: Option<PathBuf>) -> Option<PathBuf> {
    model.or_else(|| {
        kiln::model::hub::locate_model(kiln::model::hub::DEFAULT_MODEL_ID, None)
            .ok()
            .map(|(d, _)| d)
    })
}

/// A MiniLM classifier (2 labels), its optimizer and one random batch.
struct Bench<B: AutodiffBackend> {
    model: SequenceClassifier<B>,
    ids: Tensor<B, 2, Int>,
    types: Tensor<B, 2, Int>,
    mask: Tensor<B, 2, Int>,
    targets: Targets<B>,
}

impl<B: AutodiffBackend> Bench<B> {
    fn new(model: Option<&Path>, size: ModelSize, batch: usize, seq: usize, device: &B::Device) -> Result<Self> {
        B::seed(device, 0);
        let model = match model {
            Some(dir) => SequenceClassifier::<B>::from_pretrained(dir, 2, device)?.0,
            None => {
                let config = size.config();
                let bert = kiln::model::BertModel::<B>::new(&config, true, device);
                SequenceClassifier::new_head(bert, &config, 2, device)
            }
        };
        model.bert.check_input(batch, seq, &[], &[])?;
        let ids = Tensor::<B, 2>::random([batch, seq], Distribution::Uniform(1000.0, 29000.0), device).int();
        let labels: Vec<i64> = (0..batch as i64).map(|i| i % 2).collect();
        Ok(Self {
            model,
            ids,
            types: Tensor::zeros([batch, seq], device),
            mask: Tensor::ones([batch, seq], device),
            targets: Targets::Classes(Tensor::from_data(TensorData::new(labels, [batch]), device)),
        })
    }

    /// One fine-tuning step (as `tune::trainer::train` does it, without data loading).
    fn train_step(self, opt: &mut AdamW<B::InnerBackend>) -> Self {
        let logits = self
            .model
            .forward(self.ids.clone(), self.types.clone(), self.mask.clone());
        let loss = self.model.loss(logits, &self.targets);
        let grads = GradientsParams::from_grads(loss.backward(), &self.model);
        let (model, _) = opt.step(self.model, grads, 2e-5);
        Self { model, ..self }
    }
}

struct MinilmJob {
    model: Option<PathBuf>,
    size: ModelSize,
    workload: Workload,
    batch: usize,
    seq: usize,
    iters: usize,
}

/// Median seconds per iteration after one warm-up.
impl BackendJob for MinilmJob {
    type Output = Result<f64>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _kind: DeviceKind) -> Self::Output {
        let mut bench = Bench::<B>::new(self.model.as_deref(), self.size, self.batch, self.seq, &device)?;
        let mut times = Vec::with_capacity(self.iters);
        match self.workload {
            Workload::Forward => {
                let model = bench.model.valid();
                let ids = bench.ids.inner();
                let types = bench.types.inner();
                let mask = bench.mask.inner();
                for i in 0..=self.iters {
                    let t = Instant::now();
                    drop(model.forward(ids.clone(), types.clone(), mask.clone()).into_data());
                    if i > 0 {
                        times.push(t.elapsed().as_secs_f64());
                    }
                }
            }
            Workload::TrainStep => {
                let mut opt = AdamW::new(
                    AdamWConfig::default(),
                    &kiln::tune::params::param_infos(&bench.model),
                    ParamGroup::hf_default,
                );
                for i in 0..=self.iters {
                    let t = Instant::now();
                    bench = bench.train_step(&mut opt);
                    // GPU backends queue work: wait for the step before reading the clock.
                    B::sync(&device).map_err(|e| anyhow::anyhow!("device sync: {e:?}"))?;
                    if i > 0 {
                        times.push(t.elapsed().as_secs_f64());
                    }
                }
            }
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }
}

/// Measures one workload at one shape in this process.
fn measure(
    device: DeviceKind,
    model: Option<PathBuf>,
    size: ModelSize,
    workload: Workload,
    batch: usize,
    seq: usize,
    iters: usize,
) -> Result<Measurement> {
    let secs = run_on(
        device,
        MinilmJob {
            model,
            size,
            workload,
            batch,
            seq,
            iters: iters.max(1),
        },
    )??;
    let seq_per_s = batch as f64 / secs;
    Ok(Measurement {
        name: workload.row_name(size),
        device: device.to_string(),
        backend: crate::cli::common::backend_name(device).into(),
        batch,
        seq,
        seq_per_s,
        tokens_per_s: seq_per_s * seq as f64,
        peak_rss_mb: kiln::tune::trainer::peak_rss_mb(),
        model_tflops: Some(seq_per_s * model_flops_per_seq(size, seq, workload) / 1e12),
    })
}

fn parse_shape(s: &str) -> Result<(usize, usize)> {
    let (b, q) = s
        .split_once('x')
        .with_context(|| format!("shape {s:?}: expected BATCHxSEQ, e.g. 32x128"))?;
    Ok((b.trim().parse()?, q.trim().parse()?))
}

/// The JSON line a child process printed last.
fn last_json_line(out: &std::process::Output, what: &str) -> Result<Measurement> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{what} printed no JSON line:\n{stdout}"))?;
    Ok(serde_json::from_str(line)?)
}

/// This binary, measuring one workload at one shape in a fresh process.
fn measure_in_child(
    device: DeviceKind,
    model: Option<&Path>,
    size: ModelSize,
    workload: Workload,
    (batch, seq): (usize, usize),
    iters: usize,
) -> Result<Measurement> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["bench", "minilm", "--json", "--device", &device.to_string()])
        .args(["--batch", &batch.to_string(), "--seq", &seq.to_string()])
        .args(["--iters", &iters.to_string(), "--size", size.arg()])
        .args([
            "--workloads",
            if workload == Workload::Forward {
                "forward"
            } else {
                "train-step"
            },
        ]);
    if let Some(m) = model {
        cmd.arg("--model").arg(m);
    }
    last_json_line(&cmd.output()?, &format!("kiln {} {batch}x{seq}", workload.name()))
}

/// The PyTorch script beside this workspace.
fn python_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("benches")
        .join("python")
        .join("bench_minilm.py")
}

/// Where the PyTorch baseline runs: the GPU for kiln's GPU backends, else the CPU.
fn python_device(device: DeviceKind) -> &'static str {
    match device {
        DeviceKind::Cuda => "cuda",
        DeviceKind::Cpu | DeviceKind::Flex | DeviceKind::NdArray | DeviceKind::Wgpu => "cpu",
    }
}

/// The PyTorch baseline's interpreter and settings.
struct Baseline<'a> {
    python: &'a Path,
    /// Torch threads (0: PyTorch's default).
    threads: usize,
    /// Allow TF32 matmuls on CUDA.
    tf32: bool,
}

fn measure_python(
    baseline: &Baseline<'_>,
    device: DeviceKind,
    model: Option<&Path>,
    size: ModelSize,
    workload: Workload,
    (batch, seq): (usize, usize),
    iters: usize,
) -> Result<Measurement> {
    let Baseline { python, threads, tf32 } = *baseline;
    let mut cmd = Command::new(python);
    cmd.arg(python_script())
        .args(["--mode", workload.python_mode()])
        .args(["--device", python_device(device), "--size", size.arg()])
        .args(["--batch", &batch.to_string(), "--seq", &seq.to_string()])
        .args(["--iters", &iters.to_string(), "--threads", &threads.to_string()]);
    if let Some(m) = model {
        cmd.arg("--model").arg(m);
    }
    if tf32 {
        cmd.arg("--tf32");
    }
    let out = cmd.output().with_context(|| format!("running {}", python.display()))?;
    let mut m = last_json_line(&out, &format!("PyTorch {} {batch}x{seq}", workload.name()))?;
    m.model_tflops = Some(m.seq_per_s * model_flops_per_seq(size, seq, workload) / 1e12);
    Ok(m)
}

/// A row of the comparison: kiln's measurement and PyTorch's at the same workload and shape.
#[derive(Debug, Serialize)]
pub struct Compared {
    pub kiln: Measurement,
    pub pytorch: Option<Measurement>,
}

impl Compared {
    fn ratio(&self) -> Option<f64> {
        self.pytorch.as_ref().map(|p| self.kiln.seq_per_s / p.seq_per_s)
    }
}

fn fmt_rss(m: Option<f64>) -> String {
    m.map_or("–".into(), |v| format!("{v:.0}"))
}

fn table(rows: &[Compared]) -> String {
    let mut t = String::from(
        "| workload | batch × seq | kiln seq/s | kiln tokens/s | kiln model TFLOP/s | kiln peak RSS (MiB) | PyTorch seq/s | PyTorch model TFLOP/s | PyTorch peak RSS (MiB) | kiln / PyTorch |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let k = &r.kiln;
        let tflops = |m: &Measurement| m.model_tflops.map_or("–".into(), |v| format!("{v:.2}"));
        let (p_speed, p_tflops, p_rss) = r.pytorch.as_ref().map_or(("–".into(), "–".into(), "–".into()), |p| {
            (format!("{:.1}", p.seq_per_s), tflops(p), fmt_rss(p.peak_rss_mb))
        });
        t += &format!(
            "| {} ({}) | {} × {} | {:.1} | {:.0} | {} | {} | {} | {} | {} | {} |\n",
            k.name,
            k.backend,
            k.batch,
            k.seq,
            k.seq_per_s,
            k.tokens_per_s,
            tflops(k),
            fmt_rss(k.peak_rss_mb),
            p_speed,
            p_tflops,
            p_rss,
            r.ratio().map_or("–".into(), |x| format!("{x:.2}×")),
        );
    }
    t
}

fn write_results(out: &Path, name: &str, rows: &[Compared], header: &str) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let mut jsonl = String::new();
    for r in rows {
        jsonl += &serde_json::to_string(&r.kiln)?;
        jsonl.push('\n');
        if let Some(p) = &r.pytorch {
            jsonl += &serde_json::to_string(p)?;
            jsonl.push('\n');
        }
    }
    kiln::tune::checkpoint::write_atomic(&out.join("results.jsonl"), jsonl.as_bytes())?;
    let md = format!("{header}\n\n{}", table(rows));
    kiln::tune::checkpoint::write_atomic(&out.join(format!("{name}.md")), md.as_bytes())?;
    println!("Written: {}", out.display());
    Ok(())
}

fn machine_line(threads: usize) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cores} cores; kiln {} release build; PyTorch threads: {}.",
        crate::cli::common::backend_name(DeviceKind::Cpu),
        if threads == 0 {
            "default".into()
        } else {
            threads.to_string()
        }
    )
}

/// `cargo xtask bench minilm`.
pub fn minilm(args: MinilmArgs) -> Result<()> {
    let shapes: Vec<(usize, usize)> = match (args.batch, args.seq) {
        (Some(b), Some(s)) => vec![(b, s)],
        (None, None) => args.shapes.iter().map(|s| parse_shape(s)).collect::<Result<_>>()?,
        _ => bail!("--batch and --seq go together"),
    };
    let model = match (args.size, args.model) {
        (ModelSize::Minilm, model) => locate_model(model),
        (ModelSize::BertBase, None) => None,
        (ModelSize::BertBase, Some(m)) => bail!(
            "--size bert-base uses random weights; --model {} is for --size minilm",
            m.display()
        ),
    };
    if shapes.len() == 1 && args.workloads.len() == 1 && args.baseline_python.is_none() {
        let (batch, seq) = shapes[0];
        let m = measure(args.device, model, args.size, args.workloads[0], batch, seq, args.iters)?;
        if args.json {
            println!("{}", serde_json::to_string(&m)?);
        } else {
            print!("{}", table(&[Compared { kiln: m, pytorch: None }]));
        }
        return Ok(());
    }
    let mut rows = Vec::new();
    for &workload in &args.workloads {
        for &shape in &shapes {
            let kiln = measure_in_child(args.device, model.as_deref(), args.size, workload, shape, args.iters)?;
            let pytorch = match &args.baseline_python {
                Some(py) => Some(measure_python(
                    &Baseline {
                        python: py,
                        threads: args.threads,
                        tf32: args.baseline_tf32,
                    },
                    args.device,
                    model.as_deref(),
                    args.size,
                    workload,
                    shape,
                    args.iters,
                )?),
                None => None,
            };
            if args.json {
                println!("{}", serde_json::to_string(&kiln)?);
                if let Some(p) = &pytorch {
                    println!("{}", serde_json::to_string(p)?);
                }
            }
            rows.push(Compared { kiln, pytorch });
        }
    }
    if args.baseline_python.is_none() {
        eprintln!("note: no --baseline-python given: PyTorch columns left empty");
    }
    if !args.json {
        print!("{}", table(&rows));
    }
    write_results(&args.out, "table", &rows, &machine_line(args.threads))
}

/// `cargo xtask bench memory`: peak RSS of a fine-tuning step against batch and length.
pub fn memory(args: MemoryArgs) -> Result<()> {
    let model = locate_model(args.model);
    let mut rows = Vec::new();
    for &batch in &args.batches {
        for &seq in &args.seqs {
            let kiln = measure_in_child(
                args.device,
                model.as_deref(),
                ModelSize::Minilm,
                Workload::TrainStep,
                (batch, seq),
                args.iters,
            )?;
            let pytorch = match &args.baseline_python {
                Some(py) => Some(measure_python(
                    &Baseline {
                        python: py,
                        threads: 0,
                        tf32: false,
                    },
                    args.device,
                    model.as_deref(),
                    ModelSize::Minilm,
                    Workload::TrainStep,
                    (batch, seq),
                    args.iters,
                )?),
                None => None,
            };
            eprintln!(
                "train step {batch}×{seq}: kiln {} MiB, PyTorch {} MiB",
                fmt_rss(kiln.peak_rss_mb),
                fmt_rss(pytorch.as_ref().and_then(|p| p.peak_rss_mb))
            );
            rows.push(Compared { kiln, pytorch });
        }
    }
    print!("{}", table(&rows));
    let series = |f: &dyn Fn(&Compared) -> Option<f64>, label: &str| -> Vec<kiln::viz::plots::Series> {
        args.batches
            .iter()
            .map(|&b| {
                let points = rows
                    .iter()
                    .filter(|r| r.kiln.batch == b)
                    .filter_map(|r| Some((r.kiln.seq as f64, f(r)?)))
                    .collect();
                (format!("{label} batch {b}"), points)
            })
            .filter(|s: &kiln::viz::plots::Series| !s.1.is_empty())
            .collect()
    };
    let mut all = series(&|r| r.kiln.peak_rss_mb, "kiln");
    all.extend(series(&|r| r.pytorch.as_ref()?.peak_rss_mb, "PyTorch"));
    write_results(&args.out, "memory", &rows, &machine_line(0))?;
    if let Err(e) = kiln::viz::plots::lines(
        &args.out,
        "peak_rss",
        "Fine-tuning step peak RSS (MiB)",
        "sequence length",
        &all,
    ) {
        tracing::warn!("plot not written: {e}");
    }
    Ok(())
}

struct LeakJob {
    model: Option<PathBuf>,
    steps: usize,
    batch: usize,
    seq: usize,
    every: usize,
}

/// (step, RSS MiB) samples over `steps` fine-tuning steps.
impl BackendJob for LeakJob {
    type Output = Result<Vec<(usize, f64)>>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _kind: DeviceKind) -> Self::Output {
        let mut bench = Bench::<B>::new(self.model.as_deref(), ModelSize::Minilm, self.batch, self.seq, &device)?;
        let mut opt = AdamW::new(
            AdamWConfig::default(),
            &kiln::tune::params::param_infos(&bench.model),
            ParamGroup::hf_default,
        );
        let bar = indicatif::ProgressBar::new(self.steps as u64);
        let mut samples = Vec::new();
        for step in 1..=self.steps {
            bench = bench.train_step(&mut opt);
            if step % self.every.max(1) == 0 || step == 1 {
                samples.push((step, kiln::tune::trainer::rss_mb().context("no /proc/self/status")?));
            }
            bar.inc(1);
        }
        bar.finish();
        Ok(samples)
    }
}

/// `cargo xtask bench leak`: RSS across many fine-tuning steps; fails when it keeps growing.
pub fn leak(args: LeakArgs) -> Result<()> {
    let model = locate_model(args.model);
    let start = Instant::now();
    let samples = run_on(
        args.device,
        LeakJob {
            model,
            steps: args.steps,
            batch: args.batch,
            seq: args.seq,
            every: args.every,
        },
    )??;
    let half = args.steps / 2;
    let second: Vec<&(usize, f64)> = samples.iter().filter(|(s, _)| *s >= half).collect();
    let (first_rss, last_rss) = (second.first().map_or(0.0, |s| s.1), second.last().map_or(0.0, |s| s.1));
    let max_rss = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    let growth = last_rss - first_rss;
    let summary = serde_json::json!({
        "steps": args.steps, "batch": args.batch, "seq": args.seq, "backend": crate::cli::common::backend_name(args.device),
        "rss_after_step_1_mb": samples.first().map(|s| s.1), "rss_at_half_mb": first_rss,
        "rss_at_end_mb": last_rss, "max_rss_mb": max_rss, "growth_second_half_mb": growth,
        "max_growth_mb": args.max_growth_mb, "seconds": start.elapsed().as_secs_f64(),
        "samples": samples,
    });
    std::fs::create_dir_all(&args.out)?;
    kiln::tune::checkpoint::write_atomic(
        &args.out.join("leak.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    let points: Vec<(f64, f64)> = samples.iter().map(|&(s, r)| (s as f64, r)).collect();
    if let Err(e) = kiln::viz::plots::lines(
        &args.out,
        "rss",
        "RSS during fine-tuning (MiB)",
        "step",
        &[(format!("{}×{}", args.batch, args.seq), points)],
    ) {
        tracing::warn!("plot not written: {e}");
    }
    println!(
        "{} steps of {}×{}: RSS {:.0} MiB after step 1, {first_rss:.0} at step {half}, {last_rss:.0} at the end \
         (max {max_rss:.0}); growth over the second half {growth:+.1} MiB (limit {})",
        args.steps,
        args.batch,
        args.seq,
        samples.first().map_or(0.0, |s| s.1),
        args.max_growth_mb
    );
    if growth > args.max_growth_mb {
        bail!("RSS grew by {growth:.1} MiB over the second half of the run: a leak");
    }
    Ok(())
}
