//! # kiln-viz
//!
//! A run directory (docs/experiments.md) → one self-contained `report.html`: no server, no
//! CDN, no network at view time; the page's JS and CSS are kiln's own (`assets/`), inlined at
//! build time with `include_str!`. Data is embedded as one JSON document in a
//! `<script type="application/json">` element, escaped so that no string from a data set can
//! close the element or be parsed as markup (`<`, `>`, `&`, U+2028/9 become `\uXXXX`), and
//! the page inserts every string with `textContent`, never `innerHTML`.
//!
//! Views: training curves (loss, learning rate, gradient norm, dev metrics), the data map
//! (confidence vs variability, from `dynamics.jsonl`, with box selection listing its examples),
//! the strategy and trainable-parameter summary, the attention-variant table of converted
//! models, final results; and, when `RUN/analysis/analysis.json` exists (`cargo xtask lens
//! analyse`), the projection of per-example hidden states (layer, PCA/t-SNE, colour, filters,
//! box selection, zoom, with the projection's distortion scores; another checkpoint's
//! projection beside it from `analysis-<name>.json`) linked to a sortable example table, the
//! head-importance grid with the pruning curve, and the instance view (tokens shaded by IG,
//! gradient × input or rollout; a head's attention map; mixing ratios per layer). Drawn on
//! `<canvas>` from coordinates embedded as base64 f32 ([`pack_projection`]), so 10k points
//! redraw in ≈ 14 ms (docs/benchmarks.md).
//!
//! Static SVG/PNG plots of the same data for papers: [`plots`] (plotters).
//!
//! **Owns:** reading run files and rendering. **Must not touch:** training, models, analysis
//! arithmetic (it only displays what `kiln-tune` and `kiln-lens` wrote).
#![warn(missing_docs)]

pub mod headless;
pub mod plots;

use std::path::{Path, PathBuf};

use kiln_format::analysis::{Analysis, Coords, PackedDtype, Projection};
use kiln_format::run::{Results, RunConfig, RunFileError, Trainable};
use kiln_format::training::{read_lines, DynamicsLine, MetricsLine, TransferLine};
use serde_json::{json, Value};

/// Errors of building a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A plot could not be drawn (plotters' message).
    #[error("{path}: {message}")]
    Draw {
        /// The plot file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// No usable TrueType font for plot text (`KILN_PLOT_FONT`, or the usual system places).
    #[error("{0}")]
    Font(String),
    /// A typed run file (`analysis.json`, a line of `metrics.jsonl` …) is malformed or of
    /// another format version; the error names the file (and line).
    #[error(transparent)]
    RunFile(#[from] kiln_format::FormatError),
    /// `config.json`, `results.json` or `trainable.json` is unreadable or malformed, or from a
    /// newer kiln; the error names the file.
    #[error(transparent)]
    Run(#[from] RunFileError),
}

const PAGE: &str = include_str!("../assets/report.html");
const SCRIPT: &str = include_str!("../assets/report.js");
const ANALYSIS: &str = include_str!("../assets/analysis.js");
const STYLE: &str = include_str!("../assets/report.css");

/// The report's data for `run`: everything the page shows, as one JSON value. `texts` are the
/// training examples' texts in file order (for the data map's tooltips), when known.
///
/// # Errors
/// [`ReportError`] for unreadable or malformed run files.
pub fn report_data(run: &Path, texts: Option<Vec<String>>) -> Result<Value, ReportError> {
    let (train, eval): (Vec<MetricsLine>, Vec<MetricsLine>) = read_lines::<MetricsLine>(&run.join("metrics.jsonl"))?
        .into_iter()
        .partition(|l| matches!(l, MetricsLine::Train { .. }));
    let dynamics = read_lines::<DynamicsLine>(&run.join("dynamics.jsonl"))?;
    let analysis = read_analysis(&run.join("analysis").join("analysis.json"))?.map(|mut a| {
        pack_projection(&mut a.projection);
        a
    });
    Ok(json!({
        "run": run.display().to_string(),
        "config": read_config(run)?,
        "results": Results::read(run)?,
        "trainable": Trainable::read(run)?,
        "train": train,
        "eval": eval,
        "dynamics": dynamics,
        "transfer": read_lines::<TransferLine>(&run.join("transfer.jsonl"))?,
        "texts": texts,
        "analysis": analysis,
        "snapshots": snapshots(run)?,
    }))
}

/// `run/config.json` — its envelope and provenance typed, the training configuration (which
/// the page only lists) as a tree — or `None` where there is none.
///
/// # Errors
/// [`ReportError::Run`] for an unreadable or malformed file, or one from a newer kiln.
pub fn read_config(run: &Path) -> Result<Option<RunConfig<Value>>, ReportError> {
    if !RunConfig::<Value>::file(run).exists() {
        return Ok(None);
    }
    Ok(Some(RunConfig::read(run)?))
}

/// The analysis at `path`, or `None` where there is none (the run was not analysed).
///
/// # Errors
/// [`ReportError::RunFile`] for a malformed file or another format version.
pub fn read_analysis(path: &Path) -> Result<Option<Analysis>, ReportError> {
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(Analysis::read(path)?))
}

/// Replaces each projection's points (`[x0, y0, x1, y1, …]`) by the same numbers as
/// little-endian f32 bytes, base64 ([`Coords::Packed`]) — a quarter of the text of printed
/// floats for 10k points, decoded by the page into a `Float32Array` without parsing numbers.
pub fn pack_projection(projection: &mut Projection) {
    use base64::Engine;
    for layer in &mut projection.layers {
        for coords in [&mut layer.pca.coords, &mut layer.tsne.coords, &mut layer.umap.coords] {
            if let Coords::Points(values) = coords {
                let bytes: Vec<u8> = values.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect();
                *coords = Coords::Packed {
                    dtype: PackedDtype::F32,
                    base64: base64::engine::general_purpose::STANDARD.encode(bytes),
                };
            }
        }
    }
}

/// Analyses of other checkpoints (`RUN/analysis/analysis-<name>.json`, from `lens analyse
/// --checkpoint <name>`), by name: their projection and per-example prediction, gold
/// probability and loss, for the side-by-side view.
fn snapshots(run: &Path) -> Result<Vec<Value>, ReportError> {
    let dir = run.join("analysis");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ReportError::Io { path: dir, source }),
    };
    let mut named: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let name = file.strip_prefix("analysis-")?.strip_suffix(".json")?.to_string();
            Some((name, e.path()))
        })
        .collect();
    named.sort();
    named
        .into_iter()
        .map(|(name, path)| {
            let mut a = Analysis::read(&path)?;
            pack_projection(&mut a.projection);
            let examples: Vec<Value> = a
                .examples
                .iter()
                .map(|e| json!({"prediction": e.prediction, "p_gold": e.p_gold, "loss": e.loss}))
                .collect();
            Ok(json!({"name": name, "projection": a.projection, "examples": examples}))
        })
        .collect()
}

/// JSON for embedding inside `<script type="application/json">`: `<`, `>`, `&` and the JS
/// line separators are written as `\uXXXX`, which JSON.parse reads back unchanged.
pub fn embed_json(value: &Value) -> String {
    let text = serde_json::to_string(value).expect("serialisable");
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// The complete page for `data`.
pub fn render(data: &Value) -> String {
    PAGE.replace("/*STYLE*/", STYLE)
        .replace("/*SCRIPT*/", SCRIPT)
        .replace("/*ANALYSIS*/", ANALYSIS)
        .replace("{{DATA}}", &embed_json(data))
}

/// Writes `run/report.html` (atomically: temporary file, then rename) and returns its path.
///
/// Every view draws what the run directory holds; a run with only its training log gets the
/// curves, and the analysis views appear once `analysis/analysis.json` exists:
///
/// ```
/// use kiln_format::training::MetricsLine;
///
/// let run = tempfile::tempdir()?;
/// let lines = [
///     MetricsLine::Train { step: 1, epoch: 0, loss: 0.69, lr: 2e-5, grad_norm: 1.5, seq_per_s: 40.0 },
///     MetricsLine::Eval { step: 1, epoch: 0, metrics: [("accuracy".to_string(), 0.75)].into() },
/// ];
/// let text: String = lines.iter().map(|l| serde_json::to_string(l).unwrap() + "\n").collect();
/// std::fs::write(run.path().join("metrics.jsonl"), text)?;
/// let page = kiln_viz::write_report(run.path(), None)?;
/// let html = std::fs::read_to_string(page)?;
/// assert!(html.starts_with("<!DOCTYPE html>") && html.contains("0.69"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`ReportError`].
pub fn write_report(run: &Path, texts: Option<Vec<String>>) -> Result<PathBuf, ReportError> {
    let html = render(&report_data(run, texts)?);
    let path = run.join("report.html");
    let tmp = run.join(".report.html.tmp");
    let io = |source: std::io::Error| ReportError::Io {
        path: path.clone(),
        source,
    };
    std::fs::write(&tmp, html).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_strings_cannot_leave_the_data_element() {
        let evil = "</script><script>alert(1)</script> & \u{2028} \"quoted\" &lt;";
        let html = render(&json!({ "texts": [evil] }));
        let data_start = html.find("id=\"kiln-data\"").unwrap();
        let data_end = data_start + html[data_start..].find("</script>").unwrap();
        let embedded = &html[data_start..data_end];
        assert!(!embedded[embedded.find('>').unwrap() + 1..].contains('<'));
        // The embedded JSON parses back to the original string.
        let json_text = &embedded[embedded.find('>').unwrap() + 1..];
        let back: Value = serde_json::from_str(json_text).unwrap();
        assert_eq!(back["texts"][0], evil);
        // Self-contained: no external resources.
        for needle in ["src=\"http", "href=\"http", "@import", "<link"] {
            assert!(!html.contains(needle), "{needle}");
        }
        // The page never uses innerHTML.
        assert!(!SCRIPT.contains("innerHTML") && !ANALYSIS.contains("innerHTML"));
    }

    const TRAIN_LINE: &str =
        r#"{"kind":"train","step":1,"epoch":0,"loss":0.7,"lr":1e-5,"grad_norm":1.0,"seq_per_s":10.0}"#;

    #[test]
    fn report_reads_a_run_directory_and_reports_malformed_lines_with_their_number() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("metrics.jsonl"),
            format!("{TRAIN_LINE}\n{{\"kind\":\"eval\",\"step\":1,\"epoch\":0,\"metrics\":{{\"accuracy\":0.5}}}}\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("dynamics.jsonl"),
            "{\"epoch\":0,\"step\":1,\"p_gold\":[0.5],\"correct\":[true]}\n",
        )
        .unwrap();
        let data = report_data(dir.path(), Some(vec!["a <b> film".into()])).unwrap();
        assert_eq!(data["train"].as_array().unwrap().len(), 1);
        assert_eq!(data["eval"][0]["metrics"]["accuracy"], 0.5);
        assert_eq!(data["dynamics"][0]["p_gold"][0], 0.5);
        let path = write_report(dir.path(), None).unwrap();
        assert!(std::fs::read_to_string(path).unwrap().contains("kiln-data"));
        std::fs::write(dir.path().join("metrics.jsonl"), format!("{TRAIN_LINE}\nnot json\n")).unwrap();
        let err = report_data(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl:2"), "{err}");
        // A line of the wrong shape is named too (the typed reader, not only bad JSON).
        std::fs::write(dir.path().join("metrics.jsonl"), "{\"kind\":\"train\",\"step\":1}\n").unwrap();
        let err = report_data(dir.path(), None).unwrap_err().to_string();
        assert!(
            err.contains("metrics.jsonl:1") && err.contains("missing field"),
            "{err}"
        );
    }

    /// An analysis of one example with one projected layer at `coords`.
    pub(crate) fn analysis_with(coords: &[f64]) -> Analysis {
        use kiln_format::analysis::{ExampleRow, ExampleText, LayerProjection, Map2d, Pca, Target};
        let points = Coords::Points(coords.to_vec());
        Analysis {
            examples: vec![ExampleRow {
                text: ExampleText::Single("a".into()),
                label: Target::Class(1),
                prediction: Target::Class(1),
                p_gold: Some(0.9),
                loss: 0.1,
            }],
            projection: Projection {
                of: "[CLS] hidden state".into(),
                k: 10,
                layers: vec![LayerProjection {
                    layer: 6,
                    pca: Pca {
                        coords: points.clone(),
                        explained_variance_ratio: vec![0.5, 0.25],
                        scores: Default::default(),
                    },
                    tsne: Map2d {
                        coords: points.clone(),
                        scores: Default::default(),
                    },
                    umap: Map2d {
                        coords: points,
                        scores: Default::default(),
                    },
                }],
            },
            ..Default::default()
        }
    }

    #[test]
    fn an_unreadable_run_file_is_an_io_error_keeping_the_os_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("config.json")).unwrap();
        let err = report_data(dir.path(), None).unwrap_err();
        assert!(matches!(err, ReportError::Run(RunFileError::Io { .. })), "{err:?}");
        assert!(err.to_string().contains("config.json"), "{err}");
        let source = std::error::Error::source(&err).expect("a source");
        assert!(source.downcast_ref::<std::io::Error>().is_some(), "{source:?}");
    }

    #[test]
    fn an_analysis_in_another_format_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("analysis")).unwrap();
        let mut old = serde_json::to_value(analysis_with(&[1.0, 2.0])).unwrap();
        old["format"] = json!("kiln.analysis.v0");
        std::fs::write(dir.path().join("analysis/analysis.json"), old.to_string()).unwrap();
        let e = report_data(dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("analysis.json") && e.contains("kiln.analysis.v0"), "{e}");
        std::fs::write(
            dir.path().join("analysis/analysis.json"),
            r#"{"format": "kiln.analysis.v1", "heads": 3}"#,
        )
        .unwrap();
        let e = report_data(dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("analysis.json") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn projections_are_embedded_as_little_endian_f32_and_snapshots_by_name() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("analysis")).unwrap();
        let coords = [0.5, -1.25, 3.0e-3, 1.0e6];
        let analysis = serde_json::to_string(&analysis_with(&coords)).unwrap();
        std::fs::write(dir.path().join("analysis/analysis.json"), &analysis).unwrap();
        std::fs::write(dir.path().join("analysis/analysis-last.json"), &analysis).unwrap();
        std::fs::write(dir.path().join("analysis/notes.txt"), "not an analysis").unwrap();
        let data = report_data(dir.path(), None).unwrap();
        for packed in [&data["analysis"], &data["snapshots"][0]] {
            let c = &packed["projection"]["layers"][0]["pca"]["coords"];
            assert_eq!(c["dtype"], "f32");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(c["base64"].as_str().unwrap())
                .unwrap();
            let back: Vec<f32> = bytes
                .chunks(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            assert_eq!(back, coords.map(|x| x as f32));
            for method in ["tsne", "umap"] {
                assert_eq!(packed["projection"]["layers"][0][method]["coords"], *c);
            }
        }
        let snapshots = data["snapshots"].as_array().unwrap();
        assert_eq!(snapshots.len(), 1);
        assert_eq!(snapshots[0]["name"], "last");
        assert_eq!(
            snapshots[0]["examples"][0],
            json!({"prediction": 1, "p_gold": 0.9, "loss": 0.1})
        );
    }
}
