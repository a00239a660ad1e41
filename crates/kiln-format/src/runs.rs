//! Finding, listing and comparing run directories (what `cargo xtask runs` prints): every
//! directory under a root that holds a `config.json`, summarised from its typed files, and a
//! side-by-side of several runs' configurations (only the keys that differ) and results.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::run::{Results, RunConfig, RunFileError};

/// One run as `runs` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// The run directory.
    pub dir: PathBuf,
    /// `config.json`'s task.
    pub task: String,
    /// The strategy (from `results.json`, else the configuration's `train.strategy`).
    pub strategy: Option<String>,
    /// The configuration's `train.seed`, where it has one.
    pub seed: Option<u64>,
    /// `results.json`, absent while a run is unfinished (or was interrupted).
    pub results: Option<Results>,
}

impl RunSummary {
    /// Reads a run directory's `config.json` (any training configuration) and `results.json`.
    ///
    /// # Errors
    /// [`RunFileError`] naming the file that cannot be read.
    pub fn read(dir: &Path) -> Result<Self, RunFileError> {
        let config = RunConfig::<serde_json::Value>::read(dir)?;
        let results = Results::read(dir)?;
        let strategy = results.as_ref().map(|r| r.strategy.clone()).or_else(|| {
            config.train.get("strategy").map(|s| match s {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        });
        Ok(Self {
            dir: dir.to_path_buf(),
            task: config.task,
            strategy,
            // A classification run's `train.seed`, a language-model run's `train.train.seed`.
            seed: config
                .train
                .get("seed")
                .or_else(|| config.train.pointer("/train/seed"))
                .and_then(serde_json::Value::as_u64),
            results,
        })
    }

    /// `name=value` of the primary metric at the best checkpoint (else the final one).
    pub fn best_metric(&self) -> Option<String> {
        let r = self.results.as_ref()?;
        let value = r.best.map_or_else(|| r.final_metrics.primary_value(), |(v, _)| v);
        Some(format!("{}={}", r.final_metrics.primary, fmt_number(value)))
    }
}

/// Whether `dir/config.json` is a run configuration (an object with `task` and `train`), not
/// a model's `config.json`.
pub fn is_run_dir(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("task").is_some() && v.get("train").is_some())
}

/// Every run directory at or below `root` ([`is_run_dir`]; a run's own subdirectories are not
/// searched further), sorted by path.
pub fn find_runs(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        if is_run_dir(dir) {
            out.push(dir.to_path_buf());
            return;
        }
        if depth == 0 {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                walk(&p, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, 6, &mut out);
    out.sort();
    out
}

/// A number as a person reads it: 4 significant digits, no trailing zeros.
pub fn fmt_number(x: f64) -> String {
    if !x.is_finite() || x == 0.0 {
        return if x == 0.0 { "0".into() } else { x.to_string() };
    }
    if x.abs() >= 1e6 || x.abs() < 1e-3 {
        return format!("{x:.3e}");
    }
    let decimals = (3 - x.abs().log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Seconds as `12.3 s`, `4 min 05 s` or `1 h 02 min`.
pub fn fmt_duration(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{} min {:02} s", (s / 60.0).floor(), (s % 60.0).round() as u64)
    } else {
        format!(
            "{} h {:02} min",
            (s / 3600.0).floor(),
            ((s % 3600.0) / 60.0).round() as u64
        )
    }
}

/// A JSON value flattened to dotted keys (`train.lr`, `train.strategy.lora.rank`); arrays
/// stay whole (written as JSON).
pub fn flatten(value: &serde_json::Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            serde_json::Value::String(s) => {
                out.insert(prefix.to_string(), s.clone());
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

/// Keys of a run's `config.json` that say nothing about what was trained and differ between
/// any two runs (when they started, a local path's hash is kept: it names the weights).
const VOLATILE: &[&str] = &["provenance.started_unix_s", "provenance.git_commit"];

/// Rows of a comparison: a key and one cell per run ("—" where a run lacks it).
pub type Rows = Vec<(String, Vec<String>)>;

/// The side-by-side of `runs`: configuration keys whose values differ between them (start
/// time and commit left out unless asked), then results (every final metric, the best
/// checkpoint, steps, wall time, throughput, trainable parameters).
///
/// # Errors
/// [`RunFileError`] naming the first file that cannot be read.
pub fn compare(runs: &[PathBuf], include_volatile: bool) -> Result<(Rows, Rows), RunFileError> {
    let mut configs = Vec::new();
    let mut results = Vec::new();
    for dir in runs {
        let config = RunConfig::<serde_json::Value>::read(dir)?;
        configs.push(flatten(&config.to_value()));
        results.push(Results::read(dir)?);
    }
    let keys: BTreeSet<&String> = configs.iter().flat_map(|c| c.keys()).collect();
    let dash = || "—".to_string();
    let config_rows = keys
        .into_iter()
        .filter(|k| include_volatile || !VOLATILE.contains(&k.as_str()))
        .map(|k| {
            (
                k.clone(),
                configs
                    .iter()
                    .map(|c| c.get(k).cloned().unwrap_or_else(dash))
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, cells)| cells.iter().any(|c| c != &cells[0]))
        .collect();
    let metric_names: BTreeSet<&String> = results
        .iter()
        .flatten()
        .flat_map(|r| r.final_metrics.values.keys())
        .collect();
    let cell = |f: &dyn Fn(&Results) -> String| results.iter().map(|r| r.as_ref().map_or_else(dash, f)).collect();
    let mut result_rows: Rows = metric_names
        .into_iter()
        .map(|m| {
            let cells = cell(&|r: &Results| r.final_metrics.values.get(m).map_or_else(dash, |v| fmt_number(*v)));
            (format!("final {m}"), cells)
        })
        .collect();
    result_rows.push((
        "best (primary @ step)".into(),
        cell(&|r: &Results| {
            r.best.map_or_else(dash, |(v, s)| {
                format!("{} {} @ {s}", r.final_metrics.primary, fmt_number(v))
            })
        }),
    ));
    result_rows.push(("steps".into(), cell(&|r: &Results| r.steps.to_string())));
    result_rows.push(("wall time".into(), cell(&|r: &Results| fmt_duration(r.wall_time_s))));
    result_rows.push(("train seq/s".into(), cell(&|r: &Results| fmt_number(r.train_seq_per_s))));
    result_rows.push((
        "trainable params".into(),
        cell(&|r: &Results| format!("{} of {}", r.trainable_params, r.total_params)),
    ));
    Ok((config_rows, result_rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::TaskMetrics;

    fn results(acc: f64, best: Option<(f64, usize)>, strategy: &str) -> Results {
        Results {
            task: "rte".into(),
            final_metrics: TaskMetrics {
                primary: "accuracy".into(),
                values: BTreeMap::from([("accuracy".into(), acc)]),
            },
            best,
            steps: 30,
            wall_time_s: 125.0,
            train_seq_per_s: 12.3456,
            peak_rss_mb: None,
            resumed: false,
            strategy: strategy.into(),
            trainable_params: 10,
            total_params: 100,
            attention: None,
        }
    }

    fn run(root: &Path, rel: &str, lr: f64, seed: u64, res: Option<Results>) -> PathBuf {
        let dir = root.join(rel);
        std::fs::create_dir_all(&dir).unwrap();
        let train = serde_json::json!({"lr": lr, "seed": seed, "strategy": "lora"});
        RunConfig::new("rte", train, None).write(&dir).unwrap();
        if let Some(r) = res {
            r.write(&dir).unwrap();
        }
        dir
    }

    #[test]
    fn runs_are_found_below_a_root_and_summarised() {
        let root = tempfile::tempdir().unwrap();
        let a = run(
            root.path(),
            "sweep/rte/lora/seed1",
            1e-4,
            1,
            Some(results(0.6, Some((0.625, 20)), "lora")),
        );
        let b = run(root.path(), "demo", 2e-5, 7, None);
        std::fs::create_dir_all(a.join("checkpoints/best")).unwrap();
        std::fs::write(a.join("checkpoints/best/config.json"), "{}").unwrap();
        std::fs::create_dir_all(root.path().join("empty")).unwrap();
        std::fs::create_dir_all(root.path().join("models/m")).unwrap();
        std::fs::write(root.path().join("models/m/config.json"), r#"{"model_type": "bert"}"#).unwrap();
        assert_eq!(find_runs(root.path()), vec![b.clone(), a.clone()]);
        let sa = RunSummary::read(&a).unwrap();
        assert_eq!(
            (sa.task.as_str(), sa.strategy.as_deref(), sa.seed),
            ("rte", Some("lora"), Some(1))
        );
        assert_eq!(sa.best_metric().as_deref(), Some("accuracy=0.625"));
        let sb = RunSummary::read(&b).unwrap();
        assert_eq!(
            (sb.results.is_none(), sb.strategy.as_deref(), sb.best_metric()),
            (true, Some("lora"), None)
        );
        let lm = root.path().join("lm");
        std::fs::create_dir_all(&lm).unwrap();
        let train = serde_json::json!({"train": {"seed": 9, "steps": 30}, "tuning": []});
        RunConfig::new("causal-lm", train, None).write(&lm).unwrap();
        assert_eq!(RunSummary::read(&lm).unwrap().seed, Some(9));
    }

    #[test]
    fn a_comparison_shows_only_differing_keys_and_every_result() {
        let root = tempfile::tempdir().unwrap();
        let a = run(root.path(), "a", 1e-4, 1, Some(results(0.6, Some((0.625, 20)), "lora")));
        let b = run(root.path(), "b", 2e-5, 1, Some(results(0.55, None, "lora")));
        let (config, res) = compare(&[a, b], false).unwrap();
        assert_eq!(
            config,
            vec![(
                "train.lr".to_string(),
                vec!["0.0001".to_string(), "0.00002".to_string()]
            )]
        );
        let row = |name: &str| res.iter().find(|r| r.0 == name).unwrap().1.clone();
        assert_eq!(row("final accuracy"), ["0.6", "0.55"]);
        assert_eq!(row("best (primary @ step)"), ["accuracy 0.625 @ 20", "—"]);
        assert_eq!(row("wall time"), ["2 min 05 s", "2 min 05 s"]);
        assert_eq!(row("train seq/s"), ["12.35", "12.35"]);
    }

    #[test]
    fn numbers_and_durations_read_as_a_person_writes_them() {
        let cases = [
            (20.9683, "20.97"),
            (0.5, "0.5"),
            (646.0, "646"),
            (0.0, "0"),
            (1e-5, "1.000e-5"),
            (-0.1234567, "-0.1235"),
        ];
        for (x, want) in cases {
            assert_eq!(fmt_number(x), want, "{x}");
        }
        assert_eq!(fmt_duration(20.9683), "21.0 s");
        assert_eq!(fmt_duration(3725.0), "1 h 02 min");
    }
}
