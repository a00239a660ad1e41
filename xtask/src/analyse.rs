//! `cargo xtask lens analyse RUN`: loads a finished run's checkpoint and its dev examples,
//! runs `kiln_lens::pipeline::analyse` (what is computed: that module's doc) with progress
//! bars, and writes the typed result to `RUN/analysis/analysis.json` (or
//! `analysis-<checkpoint>.json`; layout in docs/run-directory.md). For a causal-LM run
//! ([`DecoderAnalyseJob`]) it loads the decoder and the run's held-out tokens instead and runs
//! `kiln_lens::decoder::analyse_decoder`, written in the same format.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kiln::backend::{BackendJob, DeviceKind};
use kiln::burn::tensor::backend::AutodiffBackend;
use kiln::data::{Example, TextTokenizer};
use kiln::lens::decoder::{analyse_decoder, DecoderInput};
use kiln::lens::pipeline::{analyse, AnalysisInput, AnalysisSettings, Phase};
use kiln::model::{BertConfig, CheckpointDir, Gpt2Model};
use kiln::tune::strategy::Tuning;

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
        write_analysis(&self.run, &self.checkpoint, &analysis)
    }
}

/// Writes `analysis` of `checkpoint` into `run/analysis/` (`analysis.json` for `best`, else
/// `analysis-<checkpoint>.json`), atomically.
fn write_analysis(run: &Path, checkpoint: &str, analysis: &kiln::format::analysis::Analysis) -> Result<PathBuf> {
    let dir = run.join("analysis");
    std::fs::create_dir_all(&dir)?;
    let path = if checkpoint == "best" {
        dir.join("analysis.json")
    } else {
        dir.join(format!("analysis-{checkpoint}.json"))
    };
    kiln::tune::checkpoint::write_atomic(&path, serde_json::to_string(analysis)?.as_bytes())?;
    Ok(path)
}

/// `lens analyse` on a causal-LM run (`lm finetune`, `train_lm_run`): the decoder the run
/// started from (its hash checked against the run's provenance), the strategy's modules and
/// the checkpoint's weights, and the held-out tail of the recorded text (its hash checked
/// too).
pub struct DecoderAnalyseJob {
    pub model: PathBuf,
    pub run: PathBuf,
    pub settings: AnalysisSettings,
    pub checkpoint: String,
}

impl BackendJob for DecoderAnalyseJob {
    type Output = Result<PathBuf>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _kind: DeviceKind) -> Self::Output {
        use kiln::tune::run_dir::DataSource;
        let config = kiln::tune::lm::LmRunFile::read(&self.run)?;
        let provenance = config.provenance.as_ref().with_context(|| {
            format!(
                "{}: config.json records no provenance (model, text)",
                self.run.display()
            )
        })?;
        provenance.model.verify(&self.model)?;
        let Some(
            data @ DataSource::Text {
                path, held_out_tokens, ..
            },
        ) = provenance.data.as_ref()
        else {
            bail!("{}: config.json records no text data source", self.run.display());
        };
        data.verify()?;
        let (model, gpt_config) = Gpt2Model::<B>::from_pretrained(&self.model, &device)
            .with_context(|| format!("loading the decoder from {}", self.model.display()))?;
        let tuning = Tuning::new(&config.train.tuning).context("the run's tuning")?;
        let model = tuning.insert(model, &device)?;
        let weights = self.run.join("checkpoints").join(&self.checkpoint);
        let mut model = kiln::tune::checkpoint::read_weights(&weights, model, &tuning)?;
        model.set_dropout(0.0);
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        let tokenizer = crate::lm_finetune::tokenizer(&self.model)?;
        let ids = crate::lm_finetune::encode(tokenizer.as_ref(), &self.model, gpt_config.vocab_size, &text)?;
        let held_out = &ids[ids.len().saturating_sub(*held_out_tokens)..];
        let token_text = |id: u32| match &tokenizer {
            Some(tok) => tok.decode(&[i64::from(id)]).unwrap_or_else(|_| format!("#{id}")),
            None => byte_text(id),
        };
        let input = DecoderInput {
            model: &model,
            held_out,
            block_len: config.train.train.block_len,
            token_text: &token_text,
            task: &config.task,
            strategy: &tuning.name(),
            checkpoint: &self.checkpoint,
        };
        let analysis = analyse_decoder(&input, &self.settings, &bars(), &device)?;
        write_analysis(&self.run, &self.checkpoint, &analysis)
    }
}

/// A byte-level token as text: the character for printable ASCII and whitespace, else `\xNN`.
fn byte_text(id: u32) -> String {
    match u8::try_from(id) {
        Ok(b) if b.is_ascii_graphic() || b == b' ' => char::from(b).to_string(),
        Ok(b'\n') => "⏎".into(),
        Ok(b) => format!("\\x{b:02x}"),
        Err(_) => format!("#{id}"),
    }
}
