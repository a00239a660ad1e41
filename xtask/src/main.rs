//! kiln's command line (`cargo xtask ...`): demo, parity checks, model fetching, benchmarks.

mod analyse;
mod bench;
mod bench_attention;
mod bench_minilm;
mod bench_report;
mod cli;
mod demo;
mod embed;
mod experiment;
mod export;
mod fuzz;
mod import_peft;
mod lens;
mod lm;
mod lm_finetune;
mod neurons;
mod parity;
mod sweep;

use anyhow::Result;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "kiln: train, convert and look inside transformer language models"
)]
struct Cli {
    #[command(subcommand)]
    command: cli::Command,
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
    Cli::parse().command.run()
}
