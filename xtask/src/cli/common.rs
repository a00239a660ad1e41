//! What several commands share: the device argument, run-directory helpers, variant names.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kiln::backend::DeviceKind;

use crate::{demo, export, lm};

/// A GLUE task name for clap (`--task`, `--tasks`): refused at parse time with the valid names.
pub fn glue_task(name: &str) -> Result<kiln::data::GlueTask, String> {
    kiln::data::GlueTask::parse(name).map_err(|e| e.to_string())
}

/// `--device`, shared by every command that runs a model.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct DeviceArgs {
    /// Device: cpu (Flex), flex, ndarray, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
}

/// `--model` and `--offline`, shared by the commands that run the default pretrained encoder
/// (`demo`, `embed`, `lens mixing`): located like the demo's and fetched once unless offline.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ModelArgs {
    /// Model directory (else KILN_MODEL_DIR, the HF cache, kiln's cache, shared/; fetched if absent).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Do not fetch the model when it is not found locally.
    #[arg(long)]
    pub offline: bool,
}

impl ModelArgs {
    /// The model directory: `--model`, else located (and, unless `--offline`, fetched).
    ///
    /// # Errors
    /// Not found (offline), or the fetch failed.
    pub fn resolve(&self) -> Result<PathBuf> {
        Ok(kiln::model::hub::locate_or_fetch(
            kiln::model::hub::DEFAULT_MODEL_ID,
            self.model.as_deref(),
            !self.offline,
        )?)
    }
}

/// An attention variant named on the command line, with the name as given.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedVariant {
    /// The name (`t2r`, `window64` …), used in tables and file names.
    pub name: String,
    /// The mechanism it stands for.
    pub variant: kiln::attention::AttentionVariant,
}

impl NamedVariant {
    /// `(name, variant)` pairs of a parsed list.
    pub fn pairs(list: Vec<Self>) -> Vec<(String, kiln::attention::AttentionVariant)> {
        list.into_iter().map(|v| (v.name, v.variant)).collect()
    }
}

/// clap parser for `--variants` of the benches: `softmax` or an [`lm::variant`] name; an
/// unknown name is refused at parse time with the valid names.
pub fn attention_variant(name: &str) -> Result<NamedVariant, String> {
    if name == "softmax" {
        return Ok(NamedVariant {
            name: name.into(),
            variant: kiln::attention::AttentionVariant::Softmax,
        });
    }
    conversion_variant(name)
}

/// clap parser for `--variants` of a conversion (`lm decoder`): an [`lm::variant`] name
/// (softmax is what is converted from, so it is not one).
pub fn conversion_variant(name: &str) -> Result<NamedVariant, String> {
    let variant = lm::variant(name).map_err(|e| e.to_string())?;
    Ok(NamedVariant {
        name: name.into(),
        variant,
    })
}

/// Training texts in file order (pairs joined by " ||| "), as the data map indexes them.
pub fn train_texts(data: &kiln::tune::trainer::TaskData, limit: Option<usize>) -> Vec<String> {
    data.train
        .iter()
        .take(limit.unwrap_or(usize::MAX))
        .map(|e| match &e.input {
            kiln::data::TextInput::Single(a) => a.clone(),
            kiln::data::TextInput::Pair(a, b) => format!("{a} ||| {b}"),
        })
        .collect()
}

pub fn backend_name(kind: DeviceKind) -> &'static str {
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
pub fn report_texts(run: &std::path::Path, glue_dir: Option<PathBuf>) -> Option<Vec<String>> {
    let (config, _) = export::run_config(run).ok()?;
    let limit = config.train.max_train_examples;
    run_data(run, glue_dir).ok().map(|d| train_texts(&d, limit))
}

/// The examples a run was trained on: from its `data.json` (the demo fixture or a GLUE
/// directory; an explicit `--glue-dir` wins over the recorded one), else — for runs written
/// before kiln recorded it — the run's task under `--glue-dir` or `shared/data/glue`.
pub fn run_data(run: &std::path::Path, glue_dir: Option<PathBuf>) -> Result<kiln::tune::trainer::TaskData> {
    use kiln::tune::run_dir::DataSource;
    let (_, task) = export::run_config(run)?;
    let recorded = DataSource::read(run)?;
    let dir = match (recorded, glue_dir) {
        (Some(DataSource::Fixture { name }), _) if name == "sentiment" => return demo::fixture(),
        (Some(DataSource::Fixture { name }), _) => bail!("{}: unknown fixture {name:?} in data.json", run.display()),
        (Some(DataSource::Text { path, .. }), _) => bail!(
            "{}: data.json names a text file ({}), which classification runs do not read",
            run.display(),
            path.display()
        ),
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
pub fn report_plots(run: &std::path::Path) {
    match kiln::viz::plots::write_plots(run) {
        Ok(files) => println!("Plots: {} files in {}", files.len(), run.join("plots").display()),
        Err(e) => tracing::warn!("plots not written: {e}"),
    }
}

/// Fails with a clear message unless `run` is a run directory (holds `config.json`).
pub fn require_run(run: &std::path::Path) -> Result<()> {
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
