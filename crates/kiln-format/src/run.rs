//! The files that describe a whole run — `config.json` ([`RunConfig`], with its
//! [`Provenance`]), `data.json` ([`DataSource`]), `results.json` ([`Results`]) and
//! `trainable.json` ([`Trainable`]) — shared by training (`kiln-tune`, the writer) and every
//! reader (`lens analyse`, `export`, the report), and [`write_atomic`], which every run file
//! is written with.
//!
//! `config.json` is generic over the training configuration `T`: `kiln-tune` owns that type
//! (it is made of its strategies' own config structs) and reads `RunConfig<TrainConfig>`;
//! readers that only show it (the report) read `RunConfig<serde_json::Value>` — the envelope,
//! its version check and the provenance typed, the training configuration as a tree.
//!
//! `config.json` carries a format version ([`FORMAT_VERSION`]). Files from before versioning
//! (no `format` key: `{"task", "train"}`) are read as version 1, without provenance; a file
//! written by a newer kiln is refused with a message naming both versions.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The run-format version this kiln writes (and the newest it reads).
pub const FORMAT_VERSION: u32 = 2;

/// `config.json`: what the run was started with and where everything came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig<T> {
    /// Run-format version ([`FORMAT_VERSION`] when written by this kiln).
    pub format: u32,
    /// Task short name (`rte`, `sst2` …).
    pub task: String,
    /// The training configuration (strategy, attention conversion, seed … included).
    pub train: T,
    /// Where the model and data came from, and what ran it; `None` for runs written before
    /// format 2, or by library callers that give none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
}

/// Where a run's inputs came from and what ran it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// The pretrained model.
    pub model: ModelRecord,
    /// The data, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataSource>,
    /// kiln's version.
    pub kiln_version: String,
    /// The git commit kiln was built from, where the program that trained knew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// The backend that trained (`flex`, `ndarray`, `wgpu`, `cuda`).
    pub backend: String,
    /// Start time, seconds since the Unix epoch (UTC).
    pub started_unix_s: u64,
}

impl Provenance {
    /// The provenance of a run starting now on `backend` with `model` and `data`; kiln's
    /// version is this crate's, the git commit `git_commit` (a binary knows it from its build
    /// script; a library does not).
    pub fn now(model: ModelRecord, data: Option<DataSource>, backend: &str, git_commit: Option<&str>) -> Self {
        Self {
            model,
            data,
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: git_commit.map(str::to_string),
            backend: backend.to_string(),
            started_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// A pretrained model directory and the hash of its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRecord {
    /// The directory it was loaded from.
    pub path: PathBuf,
    /// Its hub id, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The weights file's name inside `path`.
    pub weights: String,
    /// SHA-256 of the weights file, lowercase hex.
    pub sha256: String,
}

/// The weights files kiln loads, in the order it looks for them.
const WEIGHTS_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.safetensors"];

impl ModelRecord {
    /// Records the model in `dir` (its weights file hashed).
    ///
    /// # Errors
    /// [`RunFileError::Io`] when no weights file can be read.
    pub fn of_dir(dir: &Path, id: Option<String>) -> Result<Self, RunFileError> {
        let weights = WEIGHTS_FILES
            .iter()
            .find(|f| dir.join(f).is_file())
            .ok_or_else(|| RunFileError::Io {
                path: dir.join(WEIGHTS_FILES[0]),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no weights file"),
            })?;
        Ok(Self {
            path: dir.to_path_buf(),
            id,
            weights: weights.to_string(),
            sha256: sha256_file(&dir.join(weights))?,
        })
    }

    /// Checks that `dir` holds the same weights as recorded.
    ///
    /// # Errors
    /// [`RunFileError::ModelChanged`] naming both hashes; [`RunFileError::Io`].
    pub fn verify(&self, dir: &Path) -> Result<(), RunFileError> {
        let file = dir.join(&self.weights);
        let actual = sha256_file(&file)?;
        if actual == self.sha256 {
            Ok(())
        } else {
            Err(RunFileError::ModelChanged {
                file,
                recorded: self.sha256.clone(),
                actual,
            })
        }
    }
}

impl DataSource {
    /// Checks that a [`DataSource::Text`] file still has the recorded hash (other sources
    /// record none and pass).
    ///
    /// # Errors
    /// [`RunFileError::DataChanged`] naming both hashes; [`RunFileError::Io`].
    pub fn verify(&self) -> Result<(), RunFileError> {
        let DataSource::Text { path, sha256, .. } = self else {
            return Ok(());
        };
        let actual = sha256_file(path)?;
        if &actual == sha256 {
            Ok(())
        } else {
            Err(RunFileError::DataChanged {
                file: path.clone(),
                recorded: sha256.clone(),
                actual,
            })
        }
    }
}

/// SHA-256 of a file, lowercase hex (read in 1 MiB chunks).
///
/// # Errors
/// [`RunFileError::Io`].
pub fn sha256_file(path: &Path) -> Result<String, RunFileError> {
    let io = |source| RunFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Errors of reading and writing run files.
#[derive(Debug, thiserror::Error)]
pub enum RunFileError {
    /// File system.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not JSON of the file's shape (serde names the field, line and column).
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// Valid JSON, but not a run file kiln can read.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Written by a newer kiln.
    #[error("{path}: run format {found} was written by a newer kiln; this kiln reads formats 1 to {FORMAT_VERSION} (upgrade kiln to read this run)")]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// Its format version.
        found: u32,
    },
    /// The model's weights differ from the ones the run was trained from.
    #[error("{file} is not the model this run was trained from: its SHA-256 is {actual}, the run recorded {recorded} (pass the original model, or retrain)")]
    ModelChanged {
        /// The weights file checked.
        file: PathBuf,
        /// The hash in `config.json`.
        recorded: String,
        /// The file's hash now.
        actual: String,
    },
    /// A run's text data differs from the file it was trained on.
    #[error("{file}: the text changed since the run (sha256 {actual}, the run recorded {recorded})")]
    DataChanged {
        /// The text file checked.
        file: PathBuf,
        /// The hash in `config.json`.
        recorded: String,
        /// The file's hash now.
        actual: String,
    },
}

fn read_text(path: &Path) -> Result<String, RunFileError> {
    std::fs::read_to_string(path).map_err(|source| RunFileError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads `path` as JSON of type `T`; `Ok(None)` where the file does not exist.
fn read_optional<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, RunFileError> {
    if !path.exists() {
        return Ok(None);
    }
    let text = read_text(path)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| RunFileError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes `value` as pretty JSON to `path`, atomically.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RunFileError> {
    let text = serde_json::to_string_pretty(value).map_err(|source| RunFileError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, text.as_bytes())
}

/// The first-version layout (before `format`): task and training configuration only.
#[derive(Deserialize)]
struct RunConfigV1<T> {
    task: String,
    train: T,
}

impl<T: Serialize + DeserializeOwned> RunConfig<T> {
    /// A format-[`FORMAT_VERSION`] config.
    pub fn new(task: &str, train: T, provenance: Option<Provenance>) -> Self {
        Self {
            format: FORMAT_VERSION,
            task: task.to_string(),
            train,
            provenance,
        }
    }

    /// `run/config.json`.
    pub fn file(run: &Path) -> PathBuf {
        run.join("config.json")
    }

    /// Reads `run/config.json`, of any format this kiln knows.
    ///
    /// # Errors
    /// [`RunFileError`]: unreadable, malformed, or from a newer kiln.
    pub fn read(run: &Path) -> Result<Self, RunFileError> {
        let path = Self::file(run);
        Self::parse(&read_text(&path)?, &path)
    }

    /// Parses the text of a `config.json` found at `path` (for messages).
    ///
    /// # Errors
    /// As [`RunConfig::read`].
    pub fn parse(text: &str, path: &Path) -> Result<Self, RunFileError> {
        let parse = |source: serde_json::Error| RunFileError::Parse {
            path: path.to_path_buf(),
            source,
        };
        let invalid = |message: &str| RunFileError::Invalid {
            path: path.to_path_buf(),
            message: message.into(),
        };
        let value: serde_json::Value = serde_json::from_str(text).map_err(parse)?;
        match value.get("format").map(serde_json::Value::as_u64) {
            None if value.get("provenance").is_some() => Err(invalid(
                "has `provenance` but no `format` (a format-2 file missing its version?)",
            )),
            None => {
                let v1: RunConfigV1<T> = serde_json::from_value(value).map_err(parse)?;
                Ok(Self {
                    format: 1,
                    task: v1.task,
                    train: v1.train,
                    provenance: None,
                })
            }
            Some(Some(found)) if found > u64::from(FORMAT_VERSION) => Err(RunFileError::NewerFormat {
                path: path.to_path_buf(),
                found: found.try_into().unwrap_or(u32::MAX),
            }),
            Some(Some(_)) => serde_json::from_value(value).map_err(parse),
            Some(None) => Err(invalid("`format` must be a whole number")),
        }
    }

    /// Writes `run/config.json` atomically.
    ///
    /// # Errors
    /// [`RunFileError::Io`].
    pub fn write(&self, run: &Path) -> Result<(), RunFileError> {
        write_json(&Self::file(run), self)
    }

    /// The JSON value written to `config.json` (and compared on resume).
    ///
    /// # Panics
    /// If `T`'s `Serialize` fails (derived implementations do not).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a run config serialises")
    }
}

/// `file`, `write` (atomic) and `read` (`Ok(None)` where the file is absent) of a run file
/// with a fixed name, through its type.
macro_rules! run_file {
    ($ty:ty, $name:literal, $absent:literal) => {
        impl $ty {
            #[doc = concat!("`run/", $name, "`.")]
            pub fn file(run: &Path) -> PathBuf {
                run.join($name)
            }

            #[doc = concat!("Writes `run/", $name, "` atomically.")]
            ///
            /// # Errors
            /// [`RunFileError::Io`].
            pub fn write(&self, run: &Path) -> Result<(), RunFileError> {
                write_json(&Self::file(run), self)
            }

            #[doc = concat!("Reads `run/", $name, "`; `Ok(None)` ", $absent, ".")]
            ///
            /// # Errors
            /// [`RunFileError`] if it exists but cannot be read or parsed.
            pub fn read(run: &Path) -> Result<Option<Self>, RunFileError> {
                read_optional(&Self::file(run))
            }
        }
    };
}

/// Where a run's examples came from (`<run>/data.json`), so that what reads the run later
/// (`lens analyse`, `report`) uses the same data — a demo run on the bundled fixture is not
/// analysed on GLUE SST-2 because a GLUE directory happens to exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataSource {
    /// A GLUE task directory's `train.tsv` / `dev.tsv`.
    Glue {
        /// The GLUE root (holding `CoLA/`, `MRPC/`, ...).
        dir: PathBuf,
        /// Task short name (`mrpc`).
        task: String,
    },
    /// A fixture compiled into the command line (`sentiment`: the demo's).
    Fixture {
        /// Fixture name.
        name: String,
    },
    /// A plain-text file tokenized into one stream (causal-LM runs): the last
    /// `held_out_tokens` tokens are the held-out stream, the rest trains.
    Text {
        /// The file.
        path: PathBuf,
        /// sha256 of its bytes.
        sha256: String,
        /// Tokens held out at the end of the stream.
        held_out_tokens: usize,
    },
}

run_file!(DataSource, "data.json", "for runs written before kiln recorded it");

/// The metrics of a task on one split: the primary one (which picks the best checkpoint) and
/// every metric by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskMetrics {
    /// Name of the primary metric (used to pick the best checkpoint).
    pub primary: String,
    /// Every metric by name (`accuracy`, `f1`, `mcc`, `pearson`, `spearman`).
    pub values: BTreeMap<String, f64>,
}

impl TaskMetrics {
    /// Value of the primary metric.
    ///
    /// # Panics
    /// If `values` lacks the primary metric (never for metrics kiln computed).
    pub fn primary_value(&self) -> f64 {
        self.values[&self.primary]
    }
}

/// A converted model's attention, as the report shows it: which mechanism replaced softmax,
/// with what settings, in which layers, and whether attention transfer ran first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionSummary {
    /// The mechanism (`t2r`, `hedgehog` …).
    pub kind: String,
    /// Its settings by name (`features: 32` …), as written in the run's configuration.
    pub settings: BTreeMap<String, serde_json::Value>,
    /// Converted layers; `None` = all.
    pub layers: Option<Vec<usize>>,
    /// Whether the feature maps were trained to imitate softmax attention first.
    pub transfer: bool,
}

/// `results.json`: how a finished run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Results {
    /// Task name.
    pub task: String,
    /// Metrics of the last evaluation.
    pub final_metrics: TaskMetrics,
    /// Best primary metric and the step it was reached.
    pub best: Option<(f64, usize)>,
    /// Optimizer steps done.
    pub steps: usize,
    /// Wall time of this process's training, seconds.
    pub wall_time_s: f64,
    /// Training examples per second (this process).
    pub train_seq_per_s: f64,
    /// Peak resident memory in MiB (Linux), if known.
    pub peak_rss_mb: Option<f64>,
    /// Whether the run was resumed from a checkpoint.
    pub resumed: bool,
    /// Strategy name (`full`, `lora`, `bit_fit+child_tuning_f`, ...).
    pub strategy: String,
    /// Trainable parameters (head included).
    pub trainable_params: usize,
    /// All parameters, inserted modules included.
    pub total_params: usize,
    /// The attention conversion, for converted models (absent in runs before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<AttentionSummary>,
}

run_file!(Results, "results.json", "for an unfinished run");

/// `trainable.json`: what a strategy trains, in total and per module group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trainable {
    /// Strategy name.
    pub strategy: String,
    /// Trainable parameters.
    pub trainable: usize,
    /// All parameters (including inserted ones).
    pub total: usize,
    /// `trainable / total · 100`.
    pub percent: f64,
    /// `(module, trainable, total)` per module group (`embeddings`, `layer.N.attention`, ...).
    pub per_module: Vec<(String, usize, usize)>,
}

run_file!(Trainable, "trainable.json", "where training never got that far");

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync,
/// rename, fsync of the directory (so the rename itself survives a power cut). On failure
/// (disk full, say) the temporary file is removed and `path` is untouched.
///
/// # Errors
/// [`RunFileError::Io`] naming the file or directory that failed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunFileError> {
    use std::io::Write;
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| RunFileError::Io { path: p, source }
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for kiln-tune's training configuration.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Train {
        epochs: usize,
        lr: f64,
    }

    #[test]
    fn a_version_1_config_reads_without_provenance_and_a_newer_one_is_refused() {
        let path = Path::new("run/config.json");
        let v1 = r#"{"task": "rte", "train": {"epochs": 2, "lr": 3e-5}}"#;
        let c = RunConfig::<Train>::parse(v1, path).unwrap();
        assert_eq!(
            (c.format, c.task.as_str(), c.train.epochs, c.train.lr),
            (1, "rte", 2, 3e-5)
        );
        assert!(c.provenance.is_none());

        let newer = r#"{"format": 3, "task": "rte", "train": {}, "provenance": {"anything": 1}}"#;
        let e = RunConfig::<Train>::parse(newer, path).unwrap_err().to_string();
        assert!(
            e.contains("run format 3 was written by a newer kiln") && e.contains("1 to 2"),
            "{e}"
        );

        let unversioned = r#"{"task": "rte", "train": {}, "provenance": {}}"#;
        let e = RunConfig::<Train>::parse(unversioned, path).unwrap_err().to_string();
        assert!(e.contains("has `provenance` but no `format`"), "{e}");

        let bad = r#"{"format": 2, "task": "rte", "train": {"epoch": 2}}"#;
        let e = RunConfig::<Train>::parse(bad, path).unwrap_err();
        assert!(matches!(e, RunFileError::Parse { .. }), "{e:?}");
        let e = e.to_string();
        assert!(
            e.starts_with("run/config.json: ") && e.contains("unknown field `epoch`"),
            "{e}"
        );

        // A reader that only shows the training configuration takes it as a tree.
        let c = RunConfig::<serde_json::Value>::parse(v1, path).unwrap();
        assert_eq!(c.train["epochs"], 2);
    }

    #[test]
    fn a_config_round_trips_and_a_changed_model_is_named_by_both_hashes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.safetensors"), b"weights v1").unwrap();
        let model = ModelRecord::of_dir(dir.path(), Some("sentence-transformers/all-MiniLM-L6-v2".into())).unwrap();
        // sha256("weights v1"), computed independently (Python hashlib).
        assert_eq!(
            model.sha256,
            "13e35c44395f6cade670c076230362267c5288989d3498e207877d62b859a6d8"
        );
        let config = RunConfig::new(
            "mrpc",
            Train { epochs: 3, lr: 2e-5 },
            Some(Provenance::now(model.clone(), None, "flex", Some("abc123"))),
        );
        let run = dir.path().join("run");
        config.write(&run).unwrap();
        assert_eq!(RunConfig::<Train>::read(&run).unwrap(), config);
        model.verify(dir.path()).unwrap();
        std::fs::write(dir.path().join("model.safetensors"), b"weights v2").unwrap();
        let e = model.verify(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(&model.sha256) && e.contains("is not the model this run was trained from"),
            "{e}"
        );
        let actual = sha256_file(&dir.path().join("model.safetensors")).unwrap();
        assert!(e.contains(&actual), "{e}");
    }

    #[test]
    fn data_source_results_and_trainable_round_trip_and_older_runs_have_none() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        assert_eq!(DataSource::read(run).unwrap(), None);
        assert_eq!(Results::read(run).unwrap(), None);
        assert_eq!(Trainable::read(run).unwrap(), None);
        for source in [
            DataSource::Fixture {
                name: "sentiment".into(),
            },
            DataSource::Glue {
                dir: "/data/glue".into(),
                task: "mrpc".into(),
            },
            DataSource::Text {
                path: "/data/input.txt".into(),
                sha256: "ab".repeat(32),
                held_out_tokens: 1000,
            },
        ] {
            source.write(run).unwrap();
            assert_eq!(DataSource::read(run).unwrap(), Some(source));
        }
        std::fs::write(DataSource::file(run), r#"{"source": "s3"}"#).unwrap();
        assert!(DataSource::read(run).unwrap_err().to_string().contains("data.json"));

        // A results file from before `attention` was recorded still reads.
        let old = r#"{"task": "rte", "final_metrics": {"primary": "accuracy", "values": {"accuracy": 0.625}},
            "best": [0.65, 40], "steps": 78, "wall_time_s": 151.5, "train_seq_per_s": 16.4,
            "peak_rss_mb": null, "resumed": false, "strategy": "lora", "trainable_params": 74498,
            "total_params": 22787330}"#;
        std::fs::write(Results::file(run), old).unwrap();
        let r = Results::read(run).unwrap().unwrap();
        assert_eq!(
            (r.final_metrics.primary_value(), r.best, r.attention),
            (0.625, Some((0.65, 40)), None)
        );
        let with = Results {
            attention: Some(AttentionSummary {
                kind: "t2r".into(),
                settings: [("features".to_string(), serde_json::json!(32))].into(),
                layers: Some(vec![0, 5]),
                transfer: true,
            }),
            ..r
        };
        with.write(run).unwrap();
        assert_eq!(Results::read(run).unwrap(), Some(with));

        let t = Trainable {
            strategy: "bit_fit".into(),
            trainable: 10,
            total: 1000,
            percent: 1.0,
            per_module: vec![("embeddings".into(), 0, 600), ("layer.0.attention".into(), 10, 400)],
        };
        t.write(run).unwrap();
        assert_eq!(Trainable::read(run).unwrap(), Some(t));
        std::fs::write(Trainable::file(run), r#"{"strategy": "x", "trainable": "ten"}"#).unwrap();
        let e = Trainable::read(run).unwrap_err().to_string();
        assert!(e.contains("trainable.json") && e.contains("invalid type"), "{e}");
    }

    #[test]
    fn an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.json");
        write_atomic(&path, b"old").unwrap();
        // The temporary's name is taken by a directory: creating it fails.
        std::fs::create_dir(dir.path().join(".results.json.tmp")).unwrap();
        let e = write_atomic(&path, b"new").unwrap_err().to_string();
        assert!(e.contains(".results.json.tmp"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }
}
