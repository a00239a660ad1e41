//! `cargo xtask lens analyse RUN`: loads a finished run's checkpoint and its dev examples,
//! runs `kiln_lens::pipeline::analyse` (what is computed: that module's doc) with progress
//! bars, and writes the typed result to `RUN/analysis/analysis.json` (or
//! `analysis-<checkpoint>.json`; layout in docs/run-directory.md).

use std::cell::RefCell;
use std::path::PathBuf;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use kiln::backend::{BackendJob, DeviceKind};
use kiln::burn::tensor::backend::AutodiffBackend;
use kiln::data::{Example, TextTokenizer};
use kiln::lens::pipeline::{analyse, AnalysisInput, AnalysisSettings, Phase};
use kiln::model::{BertConfig, CheckpointDir};

pub struct AnalyseJob {
    pub model: PathBuf,
    pub run: PathBuf,
    /// The run's dev examples (GLUE dev file, or the demo fixture's).
    pub dev: Vec<Example>,
    pub settings: AnalysisSettings,
    /// Checkpoint to analyse (`best`, or another name under RUN/checkpoints/).
    pub checkpoint: String,
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

impl AnalyseSettings {
    /// The pipeline's settings (everything but the checkpoint's name).
    pub fn pipeline(&self) -> AnalysisSettings {
        AnalysisSettings {
            max_examples: self.max_examples,
            importance_examples: self.importance_examples,
            instances: self.instances,
            ig_steps: self.ig_steps,
            tsne_epochs: self.tsne_epochs,
            mean_pool: self.mean_pool,
            head_effects: self.head_effects,
        }
    }
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
            settings: AnalysisSettings::quick(),
            checkpoint: "best".into(),
        }
    }
}

/// One progress bar per phase, drawn from the pipeline's `(phase, done, total)` reports.
fn bars() -> impl Fn(Phase, usize, usize) {
    let current: RefCell<Option<(Phase, ProgressBar)>> = RefCell::new(None);
    move |phase, done, total| {
        let mut current = current.borrow_mut();
        if current.as_ref().is_none_or(|(p, _)| *p != phase) {
            if let Some((_, bar)) = current.take() {
                bar.finish();
            }
            *current = Some((phase, progress(total, phase.label())));
        }
        let (_, bar) = current.as_ref().expect("set above");
        bar.set_position(done as u64);
        if done == total {
            bar.finish();
        }
    }
}

impl BackendJob for AnalyseJob {
    type Output = Result<PathBuf>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _kind: DeviceKind) -> Self::Output {
        let (mut model, tuning, run_config, task) =
            crate::export::load_run::<B>(&self.model, &self.run, &self.checkpoint, &device)?;
        model.set_dropout(0.0);
        let checkpoint = CheckpointDir::new(&self.model);
        let tokenizer = TextTokenizer::from_file(checkpoint.tokenizer(), run_config.train.max_length)?;
        let input = AnalysisInput {
            model: &model,
            tokenizer: &tokenizer,
            dev: &self.dev,
            task,
            strategy: &tuning.name(),
            checkpoint: &self.checkpoint,
            layer_norm_eps: BertConfig::from_file(checkpoint.config())?.layer_norm_eps,
        };
        let analysis = analyse(&input, &self.settings, &bars(), &device)?;
        let dir = self.run.join("analysis");
        std::fs::create_dir_all(&dir)?;
        let path = if self.checkpoint == "best" {
            dir.join("analysis.json")
        } else {
            dir.join(format!("analysis-{}.json", self.checkpoint))
        };
        kiln::tune::checkpoint::write_atomic(&path, serde_json::to_string(&analysis)?.as_bytes())?;
        Ok(path)
    }
}
