//! Static plots for papers: `RUN/plots/*.svg` and `*.png`, drawn with plotters.
//!
//! From the run files: training loss, learning rate, dev metrics; from `analysis/analysis.json`
//! (when present): the head-pruning curve, the mean mixing ratio per layer over the analysed
//! instances, and the head-importance heatmap. Text is laid out with a TrueType font found on
//! the system (`KILN_PLOT_FONT`, else DejaVu Sans or Liberation Sans in the usual Debian,
//! Fedora and macOS places); a machine without one gets [`ReportError::Font`] naming the
//! variable. Files are written to a temporary name and renamed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

use kiln_format::analysis::{Analysis, Mixing};

use crate::ReportError;

const SIZE: (u32, u32) = (720, 440);
const COLOURS: [RGBColor; 10] = [
    RGBColor(47, 111, 222),
    RGBColor(217, 72, 15),
    RGBColor(43, 138, 62),
    RGBColor(134, 46, 156),
    RGBColor(230, 119, 0),
    RGBColor(11, 114, 133),
    RGBColor(196, 30, 90),
    RGBColor(120, 120, 120),
    RGBColor(140, 86, 35),
    RGBColor(20, 20, 20),
];

const FONT_CANDIDATES: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
];

static FONT: OnceLock<Result<(), String>> = OnceLock::new();

fn register_font() -> Result<(), ReportError> {
    FONT.get_or_init(|| {
        let path = std::env::var_os("KILN_PLOT_FONT")
            .map(PathBuf::from)
            .or_else(|| FONT_CANDIDATES.iter().map(PathBuf::from).find(|p| p.exists()))
            .ok_or_else(|| "no TrueType font found for plot text: set KILN_PLOT_FONT to a .ttf file (Debian: apt-get install fonts-dejavu-core)".to_string())?;
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{}: not a usable TrueType font", path.display()))
    })
    .clone()
    .map_err(ReportError::Font)
}

/// A named line: `(label, [(x, y)])`.
pub type Series = (String, Vec<(f64, f64)>);

fn draw_lines<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    series: &[Series],
) -> Result<(), String> {
    let e = |err: &dyn std::fmt::Display| err.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .filter(|p| p.1.is_finite())
        .collect();
    let (mut x0, mut x1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if pts.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-12);
    (y0, y1) = (y0 - pad, y1 + pad);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|x| e(&x))?;
    for (k, (name, points)) in series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2)));
        if points.len() <= 40 {
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                .map_err(|x| e(&x))?;
        }
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))
}

fn draw_heatmap<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, title: &str, m: &[Vec<f64>]) -> Result<(), String> {
    let e = |err: &dyn std::fmt::Display| err.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    // Rows may differ in length (an analysis file edited by hand, say): the widest sets the
    // axis, missing cells stay blank.
    let (rows, cols) = (m.len(), m.iter().map(Vec::len).max().unwrap_or(0));
    let max = m.iter().flatten().fold(0f64, |a, &b| a.max(b.abs())).max(1e-30);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0..cols, 0..rows)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("head")
        .y_desc("layer")
        .x_labels(cols)
        .y_labels(rows)
        .draw()
        .map_err(|x| e(&x))?;
    chart
        .draw_series(m.iter().enumerate().flat_map(|(l, row)| {
            row.iter().enumerate().map(move |(h, v)| {
                let t = v.abs() / max;
                let c = RGBColor(
                    (240.0 - 200.0 * t) as u8,
                    (244.0 - 150.0 * t) as u8,
                    (250.0 - 60.0 * t) as u8,
                );
                Rectangle::new([(h, l), (h + 1, l + 1)], c.filled())
            })
        }))
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))
}

fn write_svg_png(
    dir: &Path,
    name: &str,
    draw_svg: impl Fn(DrawingArea<SVGBackend, Shift>) -> Result<(), String>,
    draw_png: impl Fn(DrawingArea<BitMapBackend, Shift>) -> Result<(), String>,
) -> Result<Vec<PathBuf>, ReportError> {
    let fail = |path: &Path, message: String| ReportError::Draw {
        path: path.to_path_buf(),
        message,
    };
    let io = |path: &Path, source: std::io::Error| ReportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let svg_path = dir.join(format!("{name}.svg"));
    let mut svg = String::new();
    draw_svg(SVGBackend::with_string(&mut svg, SIZE).into_drawing_area()).map_err(|m| fail(&svg_path, m))?;
    let tmp = dir.join(format!(".{name}.svg.tmp"));
    std::fs::write(&tmp, svg)
        .and_then(|_| std::fs::rename(&tmp, &svg_path))
        .map_err(|err| io(&svg_path, err))?;
    let png_path = dir.join(format!("{name}.png"));
    let tmp = dir.join(format!(".{name}.tmp.png"));
    draw_png(BitMapBackend::new(&tmp, SIZE).into_drawing_area()).map_err(|m| fail(&png_path, m))?;
    std::fs::rename(&tmp, &png_path).map_err(|err| io(&png_path, err))?;
    Ok(vec![svg_path, png_path])
}

/// Writes `dir/name.svg` and `dir/name.png`: one line per series (experiments outside a
/// run directory use this, e.g. the decoder perplexity and generation-speed charts).
///
/// # Errors
/// [`ReportError`] for a missing font or a failed write.
pub fn lines(
    dir: &Path,
    name: &str,
    title: &str,
    x_label: &str,
    series: &[Series],
) -> Result<Vec<PathBuf>, ReportError> {
    register_font()?;
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write_svg_png(
        dir,
        name,
        |a| draw_lines(a, title, x_label, series),
        |a| draw_lines(a, title, x_label, series),
    )
}

fn points(values: &[Value], x: &str, y: &str) -> Vec<(f64, f64)> {
    values
        .iter()
        .filter_map(|v| Some((v[x].as_f64()?, v[y].as_f64()?)))
        .collect()
}

/// Writes every plot the run's data allows into `RUN/plots/` and returns the files.
///
/// # Errors
/// [`ReportError`] for unreadable run files, a missing font, or a failed write.
pub fn write_plots(run: &Path) -> Result<Vec<PathBuf>, ReportError> {
    register_font()?;
    let data = crate::report_data(run, None)?;
    let dir = run.join("plots");
    std::fs::create_dir_all(&dir).map_err(|source| ReportError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut written = Vec::new();
    let train = data["train"].as_array().cloned().unwrap_or_default();
    if !train.is_empty() {
        written.extend(lines(
            &dir,
            "loss",
            "training loss",
            "step",
            &[("loss".into(), points(&train, "step", "loss"))],
        )?);
        written.extend(lines(
            &dir,
            "lr",
            "learning rate",
            "step",
            &[("lr".into(), points(&train, "step", "lr"))],
        )?);
    }
    let eval = data["eval"].as_array().cloned().unwrap_or_default();
    if let Some(first) = eval.first().and_then(|e| e["metrics"].as_object()) {
        let series: Vec<Series> = first
            .keys()
            .map(|k| {
                let pts = eval
                    .iter()
                    .filter_map(|e| Some((e["step"].as_f64()?, e["metrics"][k].as_f64()?)))
                    .collect();
                (k.clone(), pts)
            })
            .collect();
        written.extend(lines(&dir, "dev_metrics", "dev metrics", "step", &series)?);
    }
    // The analysis `report_data` already read and checked (not read from disk again).
    if !data["analysis"].is_null() {
        let analysis: Analysis =
            serde_json::from_value(data["analysis"].clone()).expect("report_data wrote a typed analysis");
        written.extend(analysis_plots(&dir, &analysis)?);
    }
    Ok(written)
}

/// One of the four mixing ratios of a layer.
type Ratio = fn(&Mixing) -> f64;

/// The head-pruning curve, the head-importance heatmap and the mean mixing ratio per layer.
fn analysis_plots(dir: &Path, analysis: &Analysis) -> Result<Vec<PathBuf>, ReportError> {
    let mut written = Vec::new();
    if let Some(heads) = &analysis.heads {
        let metric = &heads.metric;
        let pts = heads.pruning.iter().map(|p| (100.0 * p.share, p.metric)).collect();
        written.extend(lines(
            dir,
            "head_pruning",
            &format!("dev {metric} with the least important heads masked"),
            "heads masked (%)",
            &[(metric.clone(), pts)],
        )?);
        let title = "head importance (gate gradient)";
        written.extend(write_svg_png(
            dir,
            "head_importance",
            |a| draw_heatmap(a, title, &heads.gate),
            |a| draw_heatmap(a, title, &heads.gate),
        )?);
    }
    let instances = &analysis.instances;
    if !instances.is_empty() {
        let ratios: [(Ratio, &str); 4] = [
            (|m| m.attn_w, "Attn-W"),
            (|m| m.attn_n, "Attn-N"),
            (|m| m.attnres_n, "AttnRes-N"),
            (|m| m.attnresln_n, "AttnResLn-N"),
        ];
        let layers = instances[0].mixing.len();
        let series: Vec<Series> = ratios
            .iter()
            .map(|(ratio, label)| {
                let pts = (0..layers)
                    .map(|l| {
                        let mean = instances.iter().filter_map(|i| i.mixing.get(l).map(ratio)).sum::<f64>()
                            / instances.len() as f64;
                        (l as f64, mean)
                    })
                    .collect();
                (label.to_string(), pts)
            })
            .collect();
        written.extend(lines(
            dir,
            "mixing_ratio",
            "mean mixing ratio per layer",
            "layer",
            &series,
        )?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_analysis(dir: &Path, analysis: &Analysis) {
        std::fs::create_dir_all(dir.join("analysis")).unwrap();
        std::fs::write(
            dir.join("analysis/analysis.json"),
            serde_json::to_string(analysis).unwrap(),
        )
        .unwrap();
    }

    fn heads(gate: Vec<Vec<f64>>) -> kiln_format::analysis::Heads {
        use kiln_format::analysis::PruningPoint;
        let point = |share, metric| PruningPoint {
            pruned: 0,
            share,
            metric,
        };
        kiln_format::analysis::Heads {
            gate,
            metric: "f1".into(),
            pruning: vec![point(0.0, 0.8), point(0.5, 0.6)],
            ..Default::default()
        }
    }

    /// Found by `cargo xtask fuzz` (target `plots`): a head-importance matrix whose rows differ
    /// in length indexed past a short row.
    #[test]
    fn a_ragged_head_importance_matrix_is_drawn_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let analysis = Analysis {
            heads: Some(heads(vec![vec![0.1], vec![0.9, 0.3, 0.2], vec![]])),
            ..Default::default()
        };
        write_analysis(dir.path(), &analysis);
        let files = write_plots(dir.path()).unwrap();
        assert!(files.iter().any(|f| f.ends_with("head_importance.svg")), "{files:?}");
    }

    #[test]
    fn plots_of_a_run_are_svg_and_png_of_the_right_size() {
        let dir = tempfile::tempdir().unwrap();
        let metrics: String = (1..=10)
            .map(|s| {
                format!(
                    "{{\"kind\":\"train\",\"step\":{s},\"epoch\":0,\"loss\":{},\"lr\":{},\"grad_norm\":1.0,\"seq_per_s\":10.0}}\n",
                    1.0 / s as f64,
                    1e-5 * s as f64
                )
            })
            .chain([
                "{\"kind\":\"eval\",\"step\":5,\"epoch\":0,\"metrics\":{\"accuracy\":0.7,\"f1\":0.6}}\n".to_string(),
                "{\"kind\":\"eval\",\"step\":10,\"epoch\":0,\"metrics\":{\"accuracy\":0.8,\"f1\":0.75}}\n".to_string(),
            ])
            .collect();
        std::fs::write(dir.path().join("metrics.jsonl"), metrics).unwrap();
        let mixing = |attn_w, attn_n, attnres_n, attnresln_n| Mixing {
            attn_w,
            attn_n,
            attnres_n,
            attnresln_n,
        };
        let analysis = Analysis {
            heads: Some(heads(vec![vec![0.1, 0.5], vec![0.9, 0.3]])),
            instances: vec![kiln_format::analysis::Instance {
                mixing: vec![mixing(0.9, 0.8, 0.3, 0.2), mixing(0.95, 0.85, 0.35, 0.25)],
                ..Default::default()
            }],
            ..Default::default()
        };
        write_analysis(dir.path(), &analysis);
        let files = write_plots(dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for stem in [
            "loss",
            "lr",
            "dev_metrics",
            "head_pruning",
            "head_importance",
            "mixing_ratio",
        ] {
            assert!(
                names.contains(&format!("{stem}.svg")) && names.contains(&format!("{stem}.png")),
                "{stem}: {names:?}"
            );
        }
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            if f.extension().unwrap() == "png" {
                assert_eq!(&bytes[1..4], b"PNG");
                let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
                let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
                assert_eq!((w, h), SIZE);
            } else {
                let text = String::from_utf8(bytes).unwrap();
                assert!(text.starts_with("<svg"));
            }
        }
        let dev = std::fs::read_to_string(dir.path().join("plots/dev_metrics.svg")).unwrap();
        assert!(
            dev.contains("dev metrics") && dev.contains("accuracy") && dev.contains("f1"),
            "title and legend"
        );
        let loss = std::fs::read_to_string(dir.path().join("plots/loss.svg")).unwrap();
        assert_eq!(loss.matches("<circle").count(), 10, "one marker per logged step");
        assert!(!dir.path().join("plots/.loss.svg.tmp").exists());
    }
}
