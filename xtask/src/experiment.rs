//! `cargo xtask run experiments/<name>.toml`: fine-tuning runs described by TOML files.
//!
//! Layers, later ones winning: the file, environment variables `KILN_TRAIN__<KEY>` /
//! `KILN_EXPERIMENT__<KEY>` (`__` separates nesting: `KILN_TRAIN__ADAMW__WEIGHT_DECAY`), and
//! `--set section.key=value`. Unknown keys anywhere are an error.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln::backend::{BackendJob, DeviceKind};
use kiln::burn::tensor::backend::AutodiffBackend;
use kiln::data::{GlueTask, TextTokenizer};
use kiln::model::hub::{shared_dir, DEFAULT_MODEL_ID};
use kiln::model::CheckpointDir;
use kiln::tune::classifier::SequenceClassifier;
use kiln::tune::trainer::{train, RunDir, StopAt, TaskData, TrainConfig, TrainResults};
use serde::{Deserialize, Serialize};

/// `[experiment]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSection {
    /// Name (run directory name by default).
    pub name: String,
    /// GLUE task.
    pub task: GlueTask,
    /// Directory holding the GLUE task folders (`CoLA/`, `SST-2/`, ...). Default:
    /// `$KILN_GLUE_DIR`, else `shared/data/glue` beside the checkout.
    #[serde(default)]
    pub glue_dir: Option<PathBuf>,
    /// Model directory (default: located like `demo`).
    #[serde(default)]
    pub model: Option<PathBuf>,
}

/// A whole experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// What to run.
    pub experiment: ExperimentSection,
    /// How to train.
    #[serde(default)]
    pub train: TrainConfig,
}

/// Reads `path` with environment and `--set` overrides layered on top.
pub fn load(path: &Path, sets: &[String]) -> Result<Experiment> {
    let env: config::Map<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("KILN_TRAIN__") || k.starts_with("KILN_EXPERIMENT__"))
        .collect();
    let mut builder = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml).required(true))
        .add_source(
            config::Environment::with_prefix("KILN")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
    for set in sets {
        let (key, value) = set
            .split_once('=')
            .with_context(|| format!("--set {set:?}: expected key=value"))?;
        builder = builder.set_override(key.trim(), parse_value(value.trim()))?;
    }
    let merged = builder.build().with_context(|| format!("reading {}", path.display()))?;
    merged.try_deserialize::<Experiment>().map_err(|e| {
        // Say where a bad value came from: a --set, an environment variable, or the file.
        let text = e.to_string();
        let from_set = sets.iter().rev().find(|s| {
            s.split_once('=')
                .is_some_and(|(k, _)| text.contains(&format!("`{}`", k.trim())))
        });
        let from_env = std::env::vars().find(|(k, _)| {
            let key = k
                .strip_prefix("KILN_")
                .map(|rest| rest.to_lowercase().replace("__", "."));
            key.is_some_and(|key| text.contains(&format!("`{key}`")))
        });
        match (from_set, from_env) {
            (Some(set), _) => {
                anyhow::anyhow!(e).context(format!("--set {set}: invalid value (applied over {})", path.display()))
            }
            (None, Some((k, v))) => anyhow::anyhow!(e).context(format!(
                "environment {k}={v}: invalid value (applied over {})",
                path.display()
            )),
            (None, None) => anyhow::anyhow!(e).context(format!("{}: invalid experiment", path.display())),
        }
    })
}

/// `--set` values: integers, floats and booleans typed, everything else a string.
fn parse_value(v: &str) -> config::Value {
    if let Ok(i) = v.parse::<i64>() {
        return i.into();
    }
    if let Ok(f) = v.parse::<f64>() {
        return f.into();
    }
    if let Ok(b) = v.parse::<bool>() {
        return b.into();
    }
    v.to_string().into()
}

/// The GLUE directory of an experiment.
pub fn glue_dir(section: &ExperimentSection) -> Result<PathBuf> {
    if let Some(dir) = &section.glue_dir {
        return Ok(dir.clone());
    }
    if let Some(dir) = std::env::var_os("KILN_GLUE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    match shared_dir() {
        Some(shared) => Ok(shared.join("data").join("glue")),
        None => bail!("no GLUE directory: set experiment.glue_dir, KILN_GLUE_DIR, or KILN_SHARED_DIR"),
    }
}

/// One fine-tuning run on any backend.
pub struct RunJob {
    pub model: PathBuf,
    pub data: TaskData,
    /// Where `data` came from (recorded in the run's provenance).
    pub source: kiln::tune::run_dir::DataSource,
    pub train: TrainConfig,
    pub out: PathBuf,
    pub on_existing: kiln::tune::run_dir::OnExisting,
}

impl BackendJob for RunJob {
    type Output = Result<TrainResults>;

    fn run<B: AutodiffBackend>(self, device: B::Device, kind: DeviceKind) -> Self::Output {
        B::seed(&device, self.train.seed);
        let (model, _) = SequenceClassifier::<B>::from_pretrained(&self.model, self.data.task.num_labels(), &device)?;
        let tok = TextTokenizer::from_file(CheckpointDir::new(&self.model).tokenizer(), self.train.max_length)?;
        tracing::info!(task = self.data.task.short_name(), train = self.data.train.len(), dev = self.data.dev.len(), device = %kind, out = %self.out.display(), "fine-tuning");
        let (_, results) = train(
            model,
            &tok,
            &self.data,
            &self.train,
            &RunDir::new(self.out.clone()).with_provenance(provenance(&self.model, Some(self.source), kind)?),
            self.on_existing,
            StopAt::default(),
            &device,
        )?;
        Ok(results)
    }
}

/// The provenance of a run fine-tuning the model in `model` on `kind`.
pub fn provenance(
    model: &Path,
    data: Option<kiln::tune::run_dir::DataSource>,
    kind: DeviceKind,
) -> Result<kiln::tune::run_files::Provenance> {
    let model = std::path::absolute(model)?;
    // The hub id, when this directory is where the default model is found by its id (the HF
    // or kiln cache, shared/): PEFT exports name it as their base.
    let id = kiln::model::hub::locate_model(DEFAULT_MODEL_ID, None)
        .ok()
        .and_then(|(dir, _)| std::path::absolute(dir).ok())
        .filter(|dir| dir == &model)
        .map(|_| DEFAULT_MODEL_ID.to_string());
    let record = kiln::tune::run_files::ModelRecord::of_dir(&model, id)?;
    Ok(kiln::tune::run_files::Provenance::now(
        record,
        data,
        &kind.to_string(),
        option_env!("KILN_GIT_COMMIT"),
    ))
}

/// Prints where the results are and the final metrics.
pub fn report(out: &Path, results: &TrainResults) {
    println!(
        "\n{} finished: {} steps in {:.0} s ({:.1} train seq/s)",
        results.task, results.steps, results.wall_time_s, results.train_seq_per_s
    );
    for (k, v) in &results.final_metrics.values {
        println!("  dev {k:<9} {v:.4}");
    }
    if let Some((best, step)) = results.best {
        println!("  best {} {best:.4} at step {step}", results.final_metrics.primary);
    }
    println!(
        "Results: {}/results.json, metrics: {}/metrics.jsonl, checkpoints: {}/checkpoints/",
        out.display(),
        out.display(),
        out.display()
    );
}

/// The default model directory (located or fetched).
pub fn default_model(explicit: Option<&Path>, allow_fetch: bool) -> Result<PathBuf> {
    Ok(kiln::model::hub::locate_or_fetch(
        DEFAULT_MODEL_ID,
        explicit,
        allow_fetch,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln::tune::strategy::StrategyConfig;
    use kiln::tune::strategy::{ChildTuningD, Lora};

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn every_shipped_experiment_file_parses_and_builds_its_strategy() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let e = load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                kiln::tune::strategy::Tuning::new(&e.train.tuning).unwrap();
                // all-MiniLM-L6-v2's limits: every shipped recipe must pass validation.
                let minilm = kiln::tune::validate::ModelLimits {
                    max_positions: 512,
                    num_layers: 6,
                };
                kiln::tune::validate::validate_train(&e.train, &minilm)
                    .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 13, "found {n} experiment files");
    }

    #[test]
    fn file_env_and_set_layer_in_order_and_unknown_keys_fail() {
        let f = write("[experiment]\nname = \"x\"\ntask = \"rte\"\n[train]\nlr = 1e-5\nepochs = 2\n");
        let e = load(f.path(), &[]).unwrap();
        assert_eq!(
            (e.train.lr, e.train.epochs, e.experiment.task),
            (1e-5, 2, GlueTask::Rte)
        );
        let e = load(f.path(), &["train.lr=3e-5".into(), "train.adamw.weight_decay=0".into()]).unwrap();
        assert_eq!((e.train.lr, e.train.adamw.weight_decay), (3e-5, 0.0));
        let tuned = write(
            "[experiment]\nname = \"x\"\ntask = \"rte\"\n[[train.tuning]]\nkind = \"lora\"\nr = 4\ntargets = [\"query\", \"re:.*value\"]\n[[train.tuning]]\nkind = \"child_tuning_d\"\n",
        );
        let e = load(tuned.path(), &[]).unwrap();
        assert_eq!(
            e.train.tuning,
            vec![
                StrategyConfig::Lora(Lora {
                    r: 4,
                    alpha: 16.0,
                    dropout: 0.0,
                    targets: vec!["query".into(), "re:.*value".into()]
                }),
                StrategyConfig::ChildTuningD(ChildTuningD { reserve_p: 0.3 })
            ]
        );
        let typo = write("[experiment]\nname = \"x\"\ntask = \"rte\"\n[[train.tuning]]\nkind = \"lora\"\nrank = 4\n");
        let err = format!("{:#}", load(typo.path(), &[]).unwrap_err());
        assert!(err.contains("rank"), "{err}");
        let err = format!("{:#}", load(f.path(), &["train.epochs=1.5".into()]).unwrap_err());
        assert!(err.starts_with("--set train.epochs=1.5: invalid value"), "{err}");
        assert!(err.contains("1.5: expected a whole number"), "{err}");
        let err = format!("{:#}", load(f.path(), &["train.lr=fast".into()]).unwrap_err());
        assert!(err.starts_with("--set train.lr=fast"), "{err}");
        let bad = write("[experiment]\nname = \"x\"\ntask = \"rte\"\n[train]\nlearning_rate = 1e-5\n");
        let err = format!("{:#}", load(bad.path(), &[]).unwrap_err());
        assert!(err.contains("learning_rate"), "{err}");
    }
}
