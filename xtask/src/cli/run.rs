//! `run`, `sweep`, `table`, `report`, `export`: experiments and what is made of their run directories.

use std::path::PathBuf;

use anyhow::Result;
use kiln::backend::{run_on, DeviceKind};

use super::common::*;
use crate::{experiment, export, sweep};

#[derive(clap::Args)]
pub struct SweepArgs {
    /// Experiment files (e.g. experiments/strategies-*.toml).
    pub files: Vec<PathBuf>,
    /// Comma-separated tasks.
    #[arg(long, value_delimiter = ',', default_value = "cola,mrpc,rte,stsb", value_parser = glue_task)]
    pub tasks: Vec<kiln::data::GlueTask>,
    /// Comma-separated seeds.
    #[arg(long, value_delimiter = ',', default_value = "42,43,44")]
    pub seeds: Vec<u64>,
    #[arg(long, default_value = "runs/strategies")]
    pub out: PathBuf,
    /// Override any key of every file: --set train.epochs=1 (repeatable).
    #[arg(long = "set")]
    pub sets: Vec<String>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl SweepArgs {
    pub fn run(self) -> Result<()> {
        let Self {
            files,
            tasks,
            seeds,
            out,
            sets,
            device,
        } = self;
        let device = device.device;
        sweep::sweep(&files, &tasks, &seeds, &out, &sets, device)?;

        Ok(())
    }
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The run directory (holding config.json and checkpoints/best).
    pub run: PathBuf,
    #[arg(long, value_enum)]
    pub format: export::ExportFormat,
    #[arg(long)]
    pub out: PathBuf,
    /// Base model directory (default: located like demo).
    #[arg(long)]
    pub model: Option<PathBuf>,
}

impl ExportArgs {
    pub fn run(self) -> Result<()> {
        let Self {
            run,
            format,
            out,
            model,
        } = self;
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

        Ok(())
    }
}

#[derive(clap::Args)]
pub struct StrategiesArgs {
    /// Sweep root.
    #[arg(long, default_value = "runs/strategies")]
    pub runs: PathBuf,
    /// Output path without extension (.md and .csv are written).
    #[arg(long, default_value = "runs/strategies/table")]
    pub out: PathBuf,
}

impl StrategiesArgs {
    pub fn run(self) -> Result<()> {
        let Self { runs, out } = self;
        println!("{}", sweep::strategies_table(&runs, &out)?);
        println!("Written: {}.md, {}.csv", out.display(), out.display());

        Ok(())
    }
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The experiment file.
    pub file: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Override train.seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run directory (default: runs/<name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override any key: --set train.lr=3e-5 (repeatable).
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// Continue from <out>/checkpoints/last (refused without a complete checkpoint or with a
    /// configuration different from the run's).
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// With --resume: accept a changed configuration (the changes are logged).
    #[arg(long, requires = "resume")]
    pub allow_config_change: bool,
    /// Resume when <out> holds a complete checkpoint, else start over (for sweeps and
    /// requeued jobs).
    #[arg(long, conflicts_with_all = ["resume", "overwrite"])]
    pub resume_if_present: bool,
    /// Replace the run in <out> (its checkpoints, metrics, analysis, report and plots).
    #[arg(long)]
    pub overwrite: bool,
}

impl RunArgs {
    pub fn run(self) -> Result<()> {
        let Self {
            file,
            device,
            seed,
            out,
            mut sets,
            resume,
            allow_config_change,
            resume_if_present,
            overwrite,
        } = self;
        let device = device.device;
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
        source.write(&out)?;
        experiment::report(&out, &results);
        println!("Report: {}", kiln::viz::write_report(&out, Some(texts))?.display());
        report_plots(&out);

        Ok(())
    }
}

#[derive(clap::Args)]
pub struct ReportArgs {
    pub run: PathBuf,
    /// GLUE directory for the training texts shown in the data map (default: shared/data/glue).
    #[arg(long)]
    pub glue_dir: Option<PathBuf>,
}

impl ReportArgs {
    pub fn run(self) -> Result<()> {
        let Self { run, glue_dir } = self;
        require_run(&run)?;
        let texts = report_texts(&run, glue_dir);
        println!("{}", kiln::viz::write_report(&run, texts)?.display());
        report_plots(&run);

        Ok(())
    }
}

#[derive(clap::Args)]
pub struct ImportPeftArgs {
    /// The PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors; f32, f16 or bf16).
    pub adapter: PathBuf,
    /// The run directory to create.
    #[arg(long)]
    pub out: PathBuf,
    /// The adapter's GLUE task (its dev set is evaluated; default: the bundled sentiment fixture, as `demo`).
    #[arg(long, value_parser = glue_task)]
    pub task: Option<kiln::data::GlueTask>,
    /// GLUE directory holding the task's folder (default: shared/data/glue when found).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl ImportPeftArgs {
    pub fn run(self) -> Result<()> {
        let model = self.model.resolve()?;
        let (data, source) = crate::demo::demo_data(self.task, self.data.as_deref())?;
        let results = run_on(
            self.device.device,
            crate::import_peft::ImportPeftJob {
                adapter: self.adapter.clone(),
                model,
                data,
                source,
                out: self.out.clone(),
            },
        )??;
        println!(
            "Imported {} ({}, {} of {} parameters) into {}",
            self.adapter.display(),
            results.strategy,
            results.trainable_params,
            results.total_params,
            self.out.display()
        );
        for (k, v) in &results.final_metrics.values {
            println!("  dev {k:<9} {v:.4}");
        }
        println!(
            "Next: cargo xtask lens analyse {0}; cargo xtask report {0}",
            self.out.display()
        );
        Ok(())
    }
}
