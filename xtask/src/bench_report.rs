//! `cargo xtask bench report`: how the HTML report copes with many points. Writes a synthetic
//! run with N analysed examples (6 layers × PCA and t-SNE coordinates), opens its report in
//! headless Chromium with `#bench=R`, and reads back what the page measured with
//! `performance.now()`: the mean time of a filter change (projection and table redrawn) and
//! of a projection redraw (what panning and zooming cost), plus the time until the page was
//! ready and the file's size.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Analysed examples (points in the projection).
    #[arg(long, default_value_t = 10_000)]
    pub points: usize,
    /// Repetitions of each timed interaction.
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
    #[arg(long, default_value = "docs/bench/report")]
    pub out: PathBuf,
}

/// A run directory whose analysis has `n` examples of two classes (1 in 7 misclassified).
fn synthetic_run(dir: &Path, n: usize) -> Result<()> {
    std::fs::write(dir.join("config.json"), r#"{"task":"sst2","train":{"epochs":1}}"#)?;
    std::fs::write(
        dir.join("metrics.jsonl"),
        "{\"kind\":\"train\",\"step\":1,\"loss\":0.7,\"lr\":1e-5,\"grad_norm\":1.0}\n",
    )?;
    // kiln's seeded generator: the same points every run.
    let mut rng = kiln::data::batching::rng(0x2545_f491_4f6c_dd1d);
    let mut uniform = move || kiln::data::batching::unit(&mut rng);
    let examples: Vec<_> = (0..n)
        .map(|i| {
            let label = i % 2;
            let prediction = if i % 7 == 0 { 1 - label } else { label };
            let p_gold = if prediction == label {
                0.6 + 0.4 * uniform()
            } else {
                0.4 * uniform()
            };
            json!({"text": format!("synthetic example sentence number {i} with a few more words"),
                   "label": label, "prediction": prediction, "p_gold": p_gold, "loss": -f64::ln(p_gold.max(1e-6))})
        })
        .collect();
    let mut coords = |label_shift: f64| -> Vec<f64> {
        (0..n)
            .flat_map(|i| [uniform() + label_shift * (i % 2) as f64, uniform()])
            .collect::<Vec<_>>()
    };
    let layers: Vec<_> = (1..=6)
        .map(|l| {
            let scores = json!({"neighbourhood_preservation": 0.5, "trustworthiness": 0.9});
            json!({"layer": l, "pca": {"coords": coords(l as f64 * 0.2), "explained_variance_ratio": [0.3, 0.1], "scores": scores},
                   "tsne": {"coords": coords(1.0), "scores": scores}})
        })
        .collect();
    let analysis = json!({"format": "kiln.analysis.v1", "task": "sst2", "regression": false, "num_labels": 2,
        "examples": examples, "projection": {"of": "[CLS] hidden state", "k": 10, "layers": layers},
        "heads": null, "instances": []});
    std::fs::create_dir_all(dir.join("analysis"))?;
    std::fs::write(dir.join("analysis/analysis.json"), analysis.to_string())?;
    Ok(())
}

/// A number-valued attribute of the dumped page's `<body>`.
fn body_number(dom: &str, name: &str) -> Option<f64> {
    kiln::viz::headless::body_attr(dom, name)?.parse().ok()
}

/// `cargo xtask bench report`.
pub fn report(args: ReportArgs) -> Result<()> {
    let run = tempfile::tempdir()?;
    synthetic_run(run.path(), args.points)?;
    let page = kiln::viz::write_report(run.path(), None)?;
    let bytes = std::fs::metadata(&page)?.len();
    let profile = tempfile::tempdir()?;
    let browser =
        kiln::viz::headless::chromium().context("no headless browser: install chromium or set KILN_CHROMIUM")?;
    let out = kiln::viz::headless::command(&browser, profile.path())
        .arg("--dump-dom")
        .arg(format!("file://{}#bench={}", page.display(), args.repeats))
        .output()
        .context("running chromium")?;
    let dom = String::from_utf8_lossy(&out.stdout);
    let (Some(filter), Some(draw), Some(ready)) = (
        body_number(&dom, "data-bench-filter-ms"),
        body_number(&dom, "data-bench-draw-ms"),
        body_number(&dom, "data-ready-ms"),
    ) else {
        bail!(
            "the page reported no timings (script error?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let result = json!({"points": args.points, "repeats": args.repeats, "report_bytes": bytes,
        "ready_ms": ready, "filter_change_ms": filter, "projection_redraw_ms": draw,
        "browser": "headless Chromium, software canvas (--disable-gpu)"});
    println!(
        "{} points: report {:.1} MiB, ready after {ready:.0} ms; filter change (projection + table) {filter:.1} ms; \
         projection redraw {draw:.1} ms",
        args.points,
        bytes as f64 / (1 << 20) as f64
    );
    std::fs::create_dir_all(&args.out)?;
    kiln::tune::checkpoint::write_atomic(
        &args.out.join(format!("report-{}.json", args.points)),
        serde_json::to_string_pretty(&result)?.as_bytes(),
    )?;
    Ok(())
}
