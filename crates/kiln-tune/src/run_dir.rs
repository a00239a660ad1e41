//! Who may write a run directory, and what happens to one that already holds a run.
//!
//! - **Lock**: a training process holds an exclusive advisory lock (`flock`, through
//!   [`std::fs::File::try_lock`]) on `<run>/.lock` for as long as it writes, and records its
//!   pid there. A second process is refused with that pid in the message. The kernel drops the
//!   lock when its holder exits, however it exits (kill -9 included), so a lock left by a dead
//!   process is never in the way: stale locks cannot exist, and the recorded pid only serves
//!   the message. (A pid file checked with `kill(pid, 0)` would need the same care for pid
//!   reuse and for the window between reading and taking over; `flock` has neither problem.)
//! - **An existing run** (a directory holding any of [`RUN_ENTRIES`]): a new run is refused
//!   unless it is a resume or the caller clears it first ([`RunDir::clear`], the CLI's
//!   `--overwrite`), which also removes what was derived from the old run (analysis, report,
//!   plots), so a new report can never show an old model's analysis.
//! - **Resume**: refused where there is no complete checkpoint, and — unless allowed — where
//!   the configuration differs from the one the run was started with, since a different batch
//!   size, seed or length would silently reinterpret the saved position.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::trainer::RunDir;

/// What training does with a run directory that already holds a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnExisting {
    /// Refuse ([`RunDirError::Exists`]); an empty or new directory starts a run.
    #[default]
    Refuse,
    /// Clear the old run and what was derived from it ([`RunDir::clear`]), then start.
    Overwrite,
    /// Continue from `checkpoints/last`, with the configuration the run was started with;
    /// refused where there is no complete checkpoint.
    Resume,
    /// As `Resume`, but a changed configuration is accepted (the differences are logged
    /// and `config.json` is rewritten).
    ResumeAllowingConfigChange,
    /// Resume where a complete checkpoint exists (same configuration), else clear and start:
    /// for sweeps and schedulers that restart the same command after a preemption.
    ResumeIfPresent,
}

impl From<bool> for OnExisting {
    /// `true`: [`OnExisting::Resume`]; `false`: [`OnExisting::Refuse`].
    fn from(resume: bool) -> Self {
        if resume {
            Self::Resume
        } else {
            Self::Refuse
        }
    }
}

/// Files and folders a run directory can hold (written by training, analysis and reports).
/// [`RunDir::clear`] removes exactly these — never anything else a user keeps there.
pub const RUN_ENTRIES: &[&str] = &[
    "config.json",
    "data.json",
    "metrics.jsonl",
    "results.json",
    "trainable.json",
    "transfer.jsonl",
    "dynamics.jsonl",
    "checkpoints",
    "analysis",
    "plots",
    "report.html",
];

/// Why a run directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// Another process holds the lock.
    #[error("run directory {dir} is in use by another kiln process (pid {pid}, lock {lock}); wait for it or choose another --out")]
    Locked {
        /// The run directory.
        dir: PathBuf,
        /// The pid recorded by the holder (`?` if unreadable).
        pid: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// The directory already holds a run and neither resume nor overwrite was asked for.
    #[error("{dir} already holds a run ({found}); pass --resume to continue it or --overwrite to replace it (its analysis, report and plots are removed too)")]
    Exists {
        /// The run directory.
        dir: PathBuf,
        /// The first run file found.
        found: String,
    },
    /// Resume was asked for but there is no complete checkpoint.
    #[error("nothing to resume in {dir}: no complete checkpoint at {checkpoint}; start it without --resume (add --overwrite if the directory holds an unfinished run)")]
    NothingToResume {
        /// The run directory.
        dir: PathBuf,
        /// Where the checkpoint was looked for.
        checkpoint: PathBuf,
    },
    /// Resume with a configuration different from the run's own.
    #[error("--resume with a different configuration than {config}: {changes}; resuming would reinterpret the saved position (use the original values, or allow the change explicitly)")]
    ConfigChanged {
        /// The run's `config.json`.
        config: PathBuf,
        /// `key: old → new` for each difference.
        changes: String,
    },
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunDirError + '_ {
    move |source| RunDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An exclusive hold on a run directory; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl RunDir {
    /// The lock file, `.lock`.
    pub fn lock_file(&self) -> PathBuf {
        self.0.join(".lock")
    }

    /// Creates the directory if needed and takes its lock.
    ///
    /// # Errors
    /// [`RunDirError::Locked`] naming the holder's pid, or [`RunDirError::Io`].
    pub fn lock(&self) -> Result<RunLock, RunDirError> {
        std::fs::create_dir_all(&self.0).map_err(io(&self.0))?;
        let path = self.lock_file();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(RunDirError::Locked {
                    dir: self.0.clone(),
                    pid: if pid.is_empty() { "?".into() } else { pid.into() },
                    lock: path,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
        }
        file.set_len(0).map_err(io(&path))?;
        file.rewind().map_err(io(&path))?;
        write!(file, "{}", std::process::id()).map_err(io(&path))?;
        file.sync_all().map_err(io(&path))?;
        Ok(RunLock { _file: file, path })
    }

    /// The first of [`RUN_ENTRIES`] present, if any.
    pub fn existing_run(&self) -> Option<&'static str> {
        RUN_ENTRIES.iter().copied().find(|e| self.0.join(e).exists())
    }

    /// Removes every entry of [`RUN_ENTRIES`] (the run and what was derived from it) and
    /// kiln's TensorBoard event files (`events.out.tfevents.*.kiln`), nothing else.
    ///
    /// # Errors
    /// [`RunDirError::Io`].
    pub fn clear(&self) -> Result<(), RunDirError> {
        for e in RUN_ENTRIES {
            let p = self.0.join(e);
            let result = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            match result {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(io(&p)(err)),
            }
        }
        // kiln's TensorBoard event files (a user's own event files there stay).
        for p in kiln_format::tensorboard::event_files(&self.0) {
            if p.extension().is_some_and(|e| e == "kiln") {
                std::fs::remove_file(&p).map_err(io(&p))?;
            }
        }
        Ok(())
    }
}

pub use kiln_format::run::DataSource;

/// Differences between two `config.json` values, as `key: old → new`, keys dotted.
pub fn config_changes(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                let null = serde_json::Value::Null;
                for k in keys {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), out);
                }
            }
            _ if a != b => out.push(format!("{prefix}: {a} → {b}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        let held = run.lock().unwrap();
        let err = run.lock().unwrap_err();
        assert!(
            matches!(&err, RunDirError::Locked { pid, .. } if *pid == std::process::id().to_string()),
            "{err}"
        );
        drop(held);
        run.lock().unwrap();
    }

    #[test]
    fn clear_removes_the_run_and_its_derived_files_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        for f in [
            "config.json",
            "metrics.jsonl",
            "report.html",
            "notes.txt",
            "events.out.tfevents.1.h.2.kiln",
            "events.out.tfevents.1.mine",
        ] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        for d in ["checkpoints/last", "analysis", "data"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        assert_eq!(run.existing_run(), Some("config.json"));
        run.clear().unwrap();
        assert_eq!(run.existing_run(), None);
        assert!(dir.path().join("notes.txt").exists() && dir.path().join("data").exists());
        assert!(!dir.path().join("events.out.tfevents.1.h.2.kiln").exists());
        assert!(dir.path().join("events.out.tfevents.1.mine").exists());
    }

    #[test]
    fn config_changes_lists_each_differing_key() {
        let a = serde_json::json!({"task": "rte", "train": {"lr": 2e-5, "batch_size": 16, "adamw": {"eps": 1e-8}}});
        let b = serde_json::json!({"task": "rte", "train": {"lr": 3e-5, "batch_size": 16, "adamw": {"eps": 1e-6}}});
        assert_eq!(
            config_changes(&a, &b),
            vec![
                "train.adamw.eps: 1e-8 → 1e-6".to_string(),
                "train.lr: 0.00002 → 0.00003".to_string()
            ]
        );
        assert!(config_changes(&a, &a).is_empty());
    }
}
