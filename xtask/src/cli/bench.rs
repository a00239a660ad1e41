//! `bench …`: benchmarks (each prints ratios against its baseline run in the same command).

use std::path::PathBuf;

use anyhow::Result;
use kiln::backend::{run_on, DeviceKind};

use super::common::*;
use crate::{bench, bench_attention, lm};

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    #[arg(long, value_delimiter = ',', default_value = "256,512,1024,2048,4096,8192")]
    pub lengths: Vec<usize>,
    /// softmax, elu, t2r, performer, hedgehog, hybrid, window<N>.
    #[arg(long, value_delimiter = ',', default_value = "softmax,t2r,elu", value_parser = attention_variant)]
    pub variants: Vec<NamedVariant>,
    /// Tokens averaged at each length.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    #[arg(long, default_value = "docs/bench/generate")]
    pub out: PathBuf,
}

impl GenerateArgs {
    pub fn run(self) -> Result<()> {
        let Self {
            device,
            lengths,
            variants,
            window,
            out,
        } = self;
        let device = device.device;
        let variants = NamedVariant::pairs(variants);
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

        Ok(())
    }
}

#[derive(clap::Args)]
pub struct AttentionArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    #[arg(long, value_delimiter = ',', default_value = "128,256,512,1024,2048,4096")]
    pub lengths: Vec<usize>,
    /// softmax, elu, t2r, performer, hedgehog, hybrid, window<N>.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "softmax,window64,elu,t2r,performer,hedgehog",
        value_parser = attention_variant
    )]
    pub variants: Vec<NamedVariant>,
    #[arg(long, default_value_t = 8)]
    pub heads: usize,
    #[arg(long, default_value_t = 64)]
    pub head_dim: usize,
    /// Bidirectional instead of causal.
    #[arg(long)]
    pub bidirectional: bool,
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    #[arg(long, default_value = "docs/bench/attention")]
    pub out: PathBuf,
    /// Also measure the peak memory of one training step (forward + backward) at each
    /// length, each in a fresh child process.
    #[arg(long)]
    pub memory: bool,
    /// Internal: run as the child of --memory.
    #[arg(long, hide = true)]
    pub peak_child: bool,
}

impl AttentionArgs {
    pub fn run(self) -> Result<()> {
        let Self {
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
        } = self;
        let device = device.device;
        let variants = NamedVariant::pairs(variants);
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

        Ok(())
    }
}

#[derive(clap::Args)]
pub struct MatmulArgs {
    #[arg(long, value_delimiter = ',', default_value = "256,512,1024,2048")]
    pub sizes: Vec<usize>,
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
}

impl MatmulArgs {
    pub fn run(self) -> Result<()> {
        let Self { sizes, repeats } = self;
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

        Ok(())
    }
}

#[derive(clap::Args)]
pub struct OpsArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Python with torch: runs benches/python/bench_ops.py in the same command and prints
    /// PyTorch's time and the ratio beside each row.
    #[arg(long)]
    pub baseline_python: Option<PathBuf>,
    /// Threads for PyTorch (kiln uses rayon's default, the machine's cores).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

impl OpsArgs {
    pub fn run(self) -> Result<()> {
        let Self {
            device,
            batch,
            seq,
            iters,
            baseline_python,
            threads,
        } = self;
        let device = device.device;
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

        Ok(())
    }
}

#[derive(clap::Args)]
pub struct GemmArgs {
    #[arg(long, value_delimiter = ',', default_value = "32x128,32x32")]
    pub shapes: Vec<String>,
    #[arg(long, default_value_t = 7)]
    pub iters: usize,
    #[arg(long)]
    pub baseline_python: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

impl GemmArgs {
    pub fn run(self) -> Result<()> {
        let Self {
            shapes,
            iters,
            baseline_python,
            threads,
        } = self;
        bench::gemm_table(&shapes, iters, baseline_python.as_deref(), threads)?;
        Ok(())
    }
}
