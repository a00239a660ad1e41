//! `cargo xtask sweep` runs experiment files over tasks and seeds; `cargo xtask table
//! strategies` aggregates the finished runs into a markdown + CSV table.
//!
//! Layout: `<root>/<task>/<experiment name>/seed<N>/` is an ordinary run directory
//! (docs/experiments.md). A run whose `results.json` exists is skipped, so a sweep can be
//! stopped and started again; an interrupted run resumes from its last checkpoint. Each run
//! is its own `xtask run` process, so its peak memory is its own.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln::backend::DeviceKind;
use kiln::data::GlueTask;
use kiln::tune::trainer::TrainResults;

use crate::experiment;

/// One sweep: every file × task × seed, sequentially.
pub fn sweep(
    files: &[PathBuf],
    tasks: &[GlueTask],
    seeds: &[u64],
    root: &Path,
    sets: &[String],
    device: DeviceKind,
) -> Result<()> {
    let total = files.len() * tasks.len() * seeds.len();
    let mut done = 0;
    for file in files {
        for &task in tasks {
            for &seed in seeds {
                done += 1;
                let mut sets = sets.to_vec();
                sets.push(format!("experiment.task={}", task.short_name()));
                sets.push(format!("train.seed={seed}"));
                let exp = experiment::load(file, &sets)?;
                let out = root
                    .join(task.short_name())
                    .join(&exp.experiment.name)
                    .join(format!("seed{seed}"));
                if out.join("results.json").exists() {
                    tracing::info!(run = %out.display(), "[{done}/{total}] already finished, skipped");
                    continue;
                }
                tracing::info!(run = %out.display(), "[{done}/{total}] starting");
                // One process per run: peak memory is then the run's own, and burn's
                // process-global RNG starts fresh.
                let exe = std::env::current_exe().context("locating the xtask binary")?;
                let mut cmd = std::process::Command::new(exe);
                cmd.arg("run")
                    .arg(file)
                    .arg("--out")
                    .arg(&out)
                    .arg("--device")
                    .arg(device.to_string())
                    .arg("--resume-if-present");
                for set in &sets {
                    cmd.arg("--set").arg(set);
                }
                let status = cmd.status().context("starting a run")?;
                anyhow::ensure!(status.success(), "run {} failed ({status})", out.display());
            }
        }
    }
    Ok(())
}

/// Mean and sample standard deviation.
fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

struct Cell {
    metrics: BTreeMap<String, Vec<f64>>,
    primary: String,
    trainable_percent: Vec<f64>,
    wall_s: Vec<f64>,
    peak_mb: Vec<f64>,
}

/// Reads every `<root>/<task>/<name>/seed*/results.json` and writes `<out>.md` and `<out>.csv`;
/// returns the markdown.
pub fn strategies_table(root: &Path, out: &Path) -> Result<String> {
    let mut cells: BTreeMap<(String, String), Cell> = BTreeMap::new();
    let mut tasks: Vec<String> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for task_dir in read_dirs(root)? {
        let task = file_name(&task_dir);
        for name_dir in read_dirs(&task_dir)? {
            let name = file_name(&name_dir);
            for seed_dir in read_dirs(&name_dir)? {
                let file = seed_dir.join("results.json");
                if !file.exists() {
                    continue;
                }
                let text = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
                let r: TrainResults = serde_json::from_str(&text).with_context(|| file.display().to_string())?;
                let cell = cells.entry((task.clone(), name.clone())).or_insert_with(|| Cell {
                    metrics: BTreeMap::new(),
                    primary: r.final_metrics.primary.clone(),
                    trainable_percent: Vec::new(),
                    wall_s: Vec::new(),
                    peak_mb: Vec::new(),
                });
                for (k, v) in &r.final_metrics.values {
                    cell.metrics.entry(k.clone()).or_default().push(*v);
                }
                cell.trainable_percent
                    .push(100.0 * r.trainable_params as f64 / r.total_params.max(1) as f64);
                cell.wall_s.push(r.wall_time_s);
                cell.peak_mb.extend(r.peak_rss_mb);
                if !tasks.contains(&task) {
                    tasks.push(task.clone());
                }
                if !names.contains(&name) {
                    names.push(name.clone());
                }
            }
        }
    }
    anyhow::ensure!(
        !cells.is_empty(),
        "no finished runs (results.json) under {}",
        root.display()
    );
    let mut md = String::new();
    let mut csv = String::from("strategy,task,metric,mean,std,n,trainable_percent,wall_time_s,peak_rss_mb\n");
    let _ = write!(md, "| strategy | trainable % |");
    for t in &tasks {
        let _ = write!(md, " {t} |");
    }
    let _ = writeln!(md, " wall time / run (s) | peak RSS (MiB) |");
    let _ = writeln!(md, "|---|---|{}---|---|", "---|".repeat(tasks.len()));
    for name in &names {
        let mut trainable = None;
        let mut walls = Vec::new();
        let mut peaks = Vec::new();
        let mut row = String::new();
        for t in &tasks {
            match cells.get(&(t.clone(), name.clone())) {
                Some(c) => {
                    let shown: Vec<String> = c
                        .metrics
                        .iter()
                        .filter(|(k, _)| {
                            *k == &c.primary || (k.as_str() == "spearman") || (t == "mrpc" && k.as_str() == "accuracy")
                        })
                        .map(|(k, xs)| {
                            let (m, s) = mean_std(xs);
                            let _ = writeln!(
                                csv,
                                "{name},{t},{k},{m:.4},{s:.4},{},{:.4},{:.1},{:.0}",
                                xs.len(),
                                mean_std(&c.trainable_percent).0,
                                mean_std(&c.wall_s).0,
                                c.peak_mb.iter().copied().fold(0.0, f64::max)
                            );
                            format!("{k} {:.1} ± {:.1}", 100.0 * m, 100.0 * s)
                        })
                        .collect();
                    let n = c.metrics.values().next().map_or(0, Vec::len);
                    let _ = write!(row, " {} (n={n}) |", shown.join(", "));
                    trainable = Some(mean_std(&c.trainable_percent).0);
                    walls.extend(&c.wall_s);
                    peaks.extend(&c.peak_mb);
                }
                None => {
                    let _ = write!(row, " — |");
                }
            }
        }
        let _ = writeln!(
            md,
            "| {name} | {} |{row} {:.0} | {:.0} |",
            trainable.map_or("—".into(), |p| format!("{p:.2}")),
            mean_std(&walls).0,
            peaks.iter().copied().fold(0.0, f64::max)
        );
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    kiln::tune::checkpoint::write_atomic(&out.with_extension("md"), md.as_bytes())?;
    kiln::tune::checkpoint::write_atomic(&out.with_extension("csv"), csv.as_bytes())?;
    Ok(md)
}

fn read_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    Ok(v)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert!((m - 5.0).abs() < 1e-12);
        // Sample (n − 1) standard deviation: √(32 / 7).
        assert!((s - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
    }
}
