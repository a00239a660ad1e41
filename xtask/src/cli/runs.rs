//! `runs`: list the run directories under a folder, or compare some side by side.

use std::path::PathBuf;

use anyhow::{bail, Result};
use kiln::format::runs::{compare, find_runs, fmt_duration, RunSummary};

#[derive(clap::Args)]
pub struct RunsArgs {
    /// Folder searched for run directories (any depth; a directory whose config.json has `task` and `train`).
    #[arg(default_value = "runs")]
    pub dir: PathBuf,
    /// Compare these run directories instead: configuration keys that differ, then results.
    #[arg(long, num_args = 2..)]
    pub compare: Vec<PathBuf>,
    /// With --compare: also show keys that differ between any two runs by nature (start time, commit).
    #[arg(long)]
    pub all_keys: bool,
}

impl RunsArgs {
    pub fn run(self) -> Result<()> {
        let text = if self.compare.is_empty() {
            listing(&self.dir)?
        } else {
            comparison(&self.compare, self.all_keys)?
        };
        print!("{text}");
        Ok(())
    }
}

/// The table of every run under `root`.
pub fn listing(root: &std::path::Path) -> Result<String> {
    let dirs = find_runs(root);
    if dirs.is_empty() {
        bail!(
            "no run directory (a folder whose config.json has a task and a train section) under {}",
            root.display()
        );
    }
    let mut rows = Vec::new();
    for dir in &dirs {
        let name = dir.strip_prefix(root).unwrap_or(dir).display().to_string();
        let name = if name.is_empty() { ".".to_string() } else { name };
        match RunSummary::read(dir) {
            Ok(s) => {
                let r = s.results.as_ref();
                rows.push(vec![
                    name,
                    s.task.clone(),
                    s.strategy.clone().unwrap_or_else(|| "—".into()),
                    s.seed.map_or_else(|| "—".into(), |x| x.to_string()),
                    s.best_metric().unwrap_or_else(|| "—".into()),
                    r.map_or_else(|| "—".into(), |r| r.steps.to_string()),
                    r.map_or_else(|| "—".into(), |r| fmt_duration(r.wall_time_s)),
                    if r.is_some() { "finished" } else { "unfinished" }.into(),
                ]);
            }
            Err(e) => rows.push(vec![
                name,
                format!("unreadable: {e}"),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]),
        }
    }
    let header = [
        "run",
        "task",
        "strategy",
        "seed",
        "best",
        "steps",
        "wall time",
        "status",
    ];
    Ok(table(&header.map(String::from), &rows))
}

/// Differing configuration keys, then results, of `runs` side by side.
pub fn comparison(runs: &[PathBuf], all_keys: bool) -> Result<String> {
    let (config, results) = compare(runs, all_keys)?;
    let mut header = vec!["".to_string()];
    header.extend(runs.iter().map(|r| r.display().to_string()));
    let rows = |rs: Vec<(String, Vec<String>)>| -> Vec<Vec<String>> {
        rs.into_iter()
            .map(|(k, cells)| std::iter::once(k).chain(cells).collect())
            .collect()
    };
    let mut out = String::from("configuration (keys that differ)\n");
    if config.is_empty() {
        out.push_str("  (identical)\n");
    } else {
        out.push_str(&table(&header, &rows(config)));
    }
    out.push_str("\nresults\n");
    out.push_str(&table(&header, &rows(results)));
    Ok(out)
}

/// A markdown table with columns padded to their widest cell.
fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let width = |c: usize| {
        rows.iter()
            .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
            .chain([header[c].chars().count(), 3])
            .max()
            .unwrap_or(3)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let s = cells.get(i).map_or("", String::as_str);
                format!("{s}{}", " ".repeat(w - s.chars().count()))
            })
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header);
    out.push_str(&format!(
        "|{}|\n",
        widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("|")
    ));
    for r in rows {
        out.push_str(&line(r));
    }
    out
}
