//! The report in a real browser (headless Chromium): every view renders without a script
//! error, the table and projection agree under filters and selections given in the URL, and a
//! hostile sentence is shown as text and never runs. Screenshots go to
//! `$CARGO_TARGET_TMPDIR/report-*.png` (kept as artifacts).
//!
//! Needs `chromium` on PATH (Debian: `apt-get install chromium`; `.ci/run` installs it) or
//! `KILN_CHROMIUM=/path/to/chrome`; without one the test fails saying so.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use kiln_viz::headless::{body_attr, tag_attr};
use serde_json::{json, Value};

const XSS: &str = "</script><script>document.body.dataset.pwned='1'</script><img src=x onerror=\"document.body.dataset.pwned='2'\"> &amp; \"quoted\"";

fn chromium() -> PathBuf {
    kiln_viz::headless::chromium().unwrap_or_else(|| {
        panic!("no headless browser: install Debian's chromium (`apt-get install chromium`, as .ci/run does) or set KILN_CHROMIUM")
    })
}

/// A headless browser with the flags of the issue, a fresh profile and a fixed time budget.
fn browser(profile: &Path) -> Command {
    let mut cmd = kiln_viz::headless::command(&chromium(), profile);
    cmd.arg("--virtual-time-budget=5000");
    cmd
}

/// The DOM after the scripts ran.
fn dump(page: &Path, fragment: &str, profile: &Path) -> String {
    let out = browser(profile)
        .arg("--dump-dom")
        .arg(format!("file://{}{fragment}", page.display()))
        .output()
        .expect("browser runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The page's scripts ran to the end without an error.
fn assert_rendered(dom: &str) {
    assert_eq!(
        body_attr(dom, "data-ready").as_deref(),
        Some("1"),
        "the scripts did not finish"
    );
    assert_eq!(body_attr(dom, "data-errors"), None, "script errors: {dom:.2000}");
}

/// Attribute `name` of the element with id `id`.
fn attr(dom: &str, id: &str, name: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let start = dom[..at].rfind('<')?;
    tag_attr(&dom[start..start + dom[start..].find('>')?], name)
}

/// A run directory with training logs and an analysis of 300 examples (2 classes, 3
/// layers × 4 heads, 2 instances), one of them the hostile sentence.
fn fixture_run(dir: &Path) -> Vec<Value> {
    // The run files through their kiln-format types, as training writes them.
    use kiln_format::run::{AttentionSummary, ModelRecord, Provenance, Results, RunConfig, TaskMetrics, Trainable};
    let model = ModelRecord {
        path: "/models/all-MiniLM-L6-v2".into(),
        id: Some("sentence-transformers/all-MiniLM-L6-v2".into()),
        weights: "model.safetensors".into(),
        sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db".into(),
    };
    RunConfig::new(
        "sst2",
        json!({"epochs": 1, "attention": {"kind": "t2r", "features": 32, "eps": 0.01}, "attention_layers": [0, 2]}),
        Some(Provenance::now(
            model,
            None,
            "flex",
            Some("0123456789abcdef0123456789abcdef01234567"),
        )),
    )
    .write(dir)
    .unwrap();
    let per_module: Vec<(String, usize, usize)> = (0..3)
        .flat_map(|l| {
            [
                (format!("layer.{l}.attention"), 604_800, 604_800),
                (format!("layer.{l}.output"), 0, 590_976),
            ]
        })
        .collect();
    Trainable {
        strategy: "full".into(),
        trainable: 1_814_400,
        total: 3_587_328,
        percent: 50.6,
        per_module,
    }
    .write(dir)
    .unwrap();
    Results {
        task: "sst2".into(),
        final_metrics: TaskMetrics {
            primary: "accuracy".into(),
            values: [("accuracy".to_string(), 0.8125)].into(),
        },
        best: Some((0.8125, 5)),
        steps: 5,
        wall_time_s: 12.5,
        train_seq_per_s: 10.0,
        peak_rss_mb: None,
        resumed: false,
        strategy: "full".into(),
        trainable_params: 1_814_400,
        total_params: 3_587_328,
        attention: Some(AttentionSummary {
            kind: "t2r".into(),
            settings: [("features".to_string(), json!(32)), ("eps".to_string(), json!(0.01))].into(),
            layers: Some(vec![0, 2]),
            transfer: false,
        }),
    }
    .write(dir)
    .unwrap();
    // Training dynamics of 50 training examples over 3 epochs (the data map).
    std::fs::write(
        dir.join("dynamics.jsonl"),
        (0..3)
            .map(|epoch| {
                let p: Vec<f64> = (0..50).map(|i| dynamics_p(i, epoch)).collect();
                format!(
                    "{}\n",
                    json!({"epoch": epoch, "step": 10 * (epoch + 1), "p_gold": p, "correct": p.iter().map(|&x| x > 0.5).collect::<Vec<_>>()})
                )
            })
            .collect::<String>(),
    )
    .unwrap();
    std::fs::write(
        dir.join("metrics.jsonl"),
        (1..=5)
            .map(|s| {
                format!(
                    "{{\"kind\":\"train\",\"step\":{s},\"epoch\":0,\"loss\":{},\"lr\":1e-5,\"grad_norm\":1.0,\"seq_per_s\":10.0}}\n",
                    1.0 / s as f64
                )
            })
            .collect::<String>(),
    )
    .unwrap();
    let n = 300;
    let examples: Vec<Value> = (0..n)
        .map(|i| {
            let label = i % 2;
            let prediction = if i % 7 == 0 { 1 - label } else { label };
            let text = if i == 3 {
                XSS.to_string()
            } else {
                format!("example sentence number {i}")
            };
            json!({"text": text, "label": label, "prediction": prediction,
                   "p_gold": if prediction == label { 0.9 } else { 0.2 },
                   "loss": if prediction == label { 0.1 } else { 1.6 }})
        })
        .collect();
    let coords = |shift: f64| -> Vec<f64> {
        (0..n)
            .flat_map(|i| {
                let a = i as f64 * 0.37;
                [
                    a.cos() * (1.0 + (i % 2) as f64) + shift,
                    a.sin() * (1.0 + (i % 2) as f64),
                ]
            })
            .collect()
    };
    let layers: Vec<Value> = (1..=3)
        .map(|l| {
            let scores = json!({"neighbourhood_preservation": 0.5, "trustworthiness": 0.9});
            json!({"layer": l,
                   "pca": {"coords": coords(0.0), "explained_variance_ratio": [0.4, 0.2], "scores": scores},
                   "tsne": {"coords": coords(5.0), "scores": scores},
                   "umap": {"coords": coords(-5.0), "scores": scores}})
        })
        .collect();
    let instance = |example: usize, s: usize| {
        let bytes: Vec<u8> = (0..3 * 4 * s * s).map(|k| (k % 256) as u8).collect();
        json!({
            "example": example,
            "tokens": (0..s).map(|t| if t == 1 { "<b>bold?</b>".to_string() } else { format!("tok{t}") }).collect::<Vec<_>>(),
            "attention": {"layers": 3, "heads": 4, "seq": s, "encoding": "u8 base64, value/255, [layer][head][query][key]", "data": base64::engine::general_purpose::STANDARD.encode(bytes)},
            "rollout": (0..s).map(|t| 1.0 / (t + 1) as f64).collect::<Vec<_>>(),
            "value_zeroing_rollout": (0..s).map(|_| 1.0 / s as f64).collect::<Vec<_>>(),
            "mixing_rollout": (0..s).map(|t| if t == 0 { 0.8 } else { 0.2 / (s - 1) as f64 }).collect::<Vec<_>>(),
            "mixing": (0..3).map(|_| json!({"attn_w": 0.9, "attn_n": 0.8, "attnres_n": 0.3, "attnresln_n": 0.25})).collect::<Vec<_>>(),
            "saliency": {"class": 1, "grad_x_input": (0..s).map(|t| t as f64 - 2.0).collect::<Vec<_>>(),
                         "grad_x_input_l2": (0..s).map(|t| t as f64).collect::<Vec<_>>(),
                         "integrated_gradients": (0..s).map(|t| 0.1 * t as f64).collect::<Vec<_>>(),
                         "integrated_gradients_l2": (0..s).map(|t| 0.1 * t as f64).collect::<Vec<_>>(),
                         "ig_completeness": {"sum": 1.0, "f_x": 1.5, "f_baseline": 0.49, "steps": 32},
                         "per_class": (0..2).map(|c| json!({"class": c,
                             "grad_x_input": (0..s).map(|t| t as f64 - c as f64).collect::<Vec<_>>(),
                             "grad_x_input_l2": (0..s).map(|t| t as f64).collect::<Vec<_>>(),
                             "integrated_gradients": (0..s).map(|t| 0.1 * (t + c) as f64).collect::<Vec<_>>(),
                             "integrated_gradients_l2": (0..s).map(|t| 0.1 * t as f64).collect::<Vec<_>>(),
                             "ig_completeness": {"sum": 1.0, "f_x": 1.5, "f_baseline": 0.49, "steps": 32}})).collect::<Vec<_>>()},
        })
    };
    let analysis = json!({
        "format": "kiln.analysis.v1", "task": "sst2", "strategy": "full", "checkpoint": "best",
        "split": "dev", "regression": false, "num_labels": 2,
        "examples": examples,
        "projection": {"of": "[CLS] hidden state", "k": 10, "layers": layers},
        "heads": {"gate": [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [0.9, 1.0, 0.1, 0.2]],
                  "taylor": [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 1.0, 1.0, 2.0]],
                  "examples": 64, "metric": "accuracy",
                  "masked_metric": [[0.9, 0.88, 0.91, 0.7], [0.9, 0.9, 0.85, 0.9], [0.89, 0.9, 0.9, 0.6]],
                  "pruning": (0..10).map(|k| json!({"pruned": k, "share": k as f64 / 10.0, "metric": 0.9 - 0.05 * k as f64})).collect::<Vec<_>>()},
        "instances": [instance(3, 6), instance(10, 9)],
    });
    std::fs::create_dir_all(dir.join("analysis")).unwrap();
    std::fs::write(dir.join("analysis/analysis.json"), analysis.to_string()).unwrap();
    // A second checkpoint's analysis of the same examples: other coordinates, other predictions.
    let mut last = analysis.clone();
    for (i, e) in last["examples"].as_array_mut().unwrap().iter_mut().enumerate() {
        e["prediction"] = json!(if i % 3 == 0 { 1 } else { 0 });
    }
    for layer in last["projection"]["layers"].as_array_mut().unwrap() {
        layer["pca"]["coords"] = json!(coords(-3.0));
    }
    std::fs::write(dir.join("analysis/analysis-last.json"), last.to_string()).unwrap();
    examples
}

/// Gold probability of training example `i` at `epoch` (the fixture's data map).
fn dynamics_p(i: usize, epoch: usize) -> f64 {
    ((i * 37 + epoch * 11) % 100) as f64 / 100.0
}

/// Confidence (mean) and variability (population std) of example `i` over the 3 epochs.
fn confidence_variability(i: usize) -> (f64, f64) {
    let p: Vec<f64> = (0..3).map(|e| dynamics_p(i, e)).collect();
    let m = p.iter().sum::<f64>() / 3.0;
    (m, (p.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 3.0).sqrt())
}

#[test]
fn report_views_render_and_stay_linked_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let examples = fixture_run(dir.path());
    let page = kiln_viz::write_report(dir.path(), None).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let count = |pred: &dyn Fn(&Value) -> bool| examples.iter().filter(|e| pred(e)).count().to_string();

    let dom = dump(&page, "", profile.path());
    assert_rendered(&dom);
    assert_eq!(body_attr(&dom, "data-pwned"), None, "the hostile sentence ran");
    assert_eq!(attr(&dom, "projection", "data-drawn").as_deref(), Some("300"));
    assert_eq!(attr(&dom, "examples", "data-rows").as_deref(), Some("300"));
    assert_eq!(attr(&dom, "head-grid", "data-cells").as_deref(), Some("12"));
    assert_eq!(attr(&dom, "inst-tokens", "data-tokens").as_deref(), Some("6"));
    // Every token of the instance labels its row and column of the attention map.
    assert_eq!(attr(&dom, "inst-attention", "data-labels").as_deref(), Some("6"));
    // The summary reads as a person writes: seconds with a unit, throughput to one decimal.
    assert!(dom.contains("<th>wall time</th><td>12.5 s</td>"), "{dom:.3000}");
    assert!(dom.contains("<th>train seq/s</th><td>10.0</td>"));
    assert!(
        dom.contains("<option value=\"1\">class 1</option>"),
        "an output selector per class"
    );
    // The hostile sentence is table text (escaped by the DOM serialiser), not markup.
    assert!(dom.contains("&lt;/script&gt;&lt;script&gt;document.body.dataset.pwned='1'&lt;/script&gt;"));
    assert!(
        dom.contains("&lt;b&gt;bold?&lt;/b&gt;"),
        "a token with markup is shown as text"
    );
    assert!(!dom.contains("<img src=\"x\""), "no element was created from data");

    // Filtering the table filters the projection: wrong predictions only.
    let wrong = count(&|e| e["prediction"] != e["label"]);
    let dom = dump(&page, "#filter=wrong", profile.path());
    assert_eq!(attr(&dom, "examples", "data-rows"), Some(wrong.clone()));
    assert_eq!(attr(&dom, "projection", "data-drawn"), Some(wrong));
    // A selection plus a loss threshold: both views show the intersection.
    let chosen = [0usize, 1, 2, 7, 14, 21, 100];
    let both = chosen
        .iter()
        .filter(|&&i| examples[i]["loss"].as_f64().unwrap() >= 1.0)
        .count()
        .to_string();
    let dom = dump(&page, "#select=0,1,2,7,14,21,100&minloss=1", profile.path());
    assert_eq!(attr(&dom, "examples", "data-rows"), Some(both.clone()));
    assert_eq!(attr(&dom, "projection", "data-drawn"), Some(both));

    // The head grid's "masked alone" view renders from the URL state.
    let dom = dump(&page, "#heads=masked", profile.path());
    assert_eq!(body_attr(&dom, "data-errors"), None);
    assert_eq!(attr(&dom, "head-grid", "data-cells").as_deref(), Some("12"));
    assert!(dom.contains("<option value=\"masked\">drop of dev accuracy when masked alone</option>"));

    // Attention patterns of the instance's example in every cell of the grid.
    let dom = dump(&page, "#heads=patterns", profile.path());
    assert_eq!(body_attr(&dom, "data-errors"), None, "script errors: {dom:.2000}");
    assert_eq!(attr(&dom, "head-grid", "data-cells").as_deref(), Some("12"));
    assert_eq!(attr(&dom, "head-grid", "data-mode").as_deref(), Some("patterns"));

    // UMAP coordinates draw like the others.
    let dom = dump(&page, "#method=umap", profile.path());
    assert_eq!(attr(&dom, "projection", "data-drawn").as_deref(), Some("300"));
    assert!(dom.contains("<option value=\"umap\">UMAP</option>"));

    // The category filter: one gold label, in both views.
    let ones = count(&|e| e["label"] == 1 && e["prediction"] != e["label"]);
    let dom = dump(&page, "#label=1&filter=wrong", profile.path());
    assert_eq!(attr(&dom, "examples", "data-rows"), Some(ones.clone()));
    assert_eq!(attr(&dom, "projection", "data-drawn"), Some(ones));

    // The attention-variant table: one row per layer (+ header), converted layers named.
    let dom = dump(&page, "", profile.path());
    assert_eq!(attr(&dom, "variants", "data-rows").as_deref(), Some("3"));
    assert!(dom.contains("<td class=\"num\">t2r</td>") && dom.contains("<td class=\"num\">softmax</td>"));
    // The summary names the model by its id and hash prefix, and the commit that trained it.
    assert!(
        dom.contains("sentence-transformers/all-MiniLM-L6-v2 (sha256 53aa51172d14…)"),
        "{dom:.3000}"
    );
    assert!(dom.contains(" @ 0123456789, flex"));
    assert!(dom.contains("Softmax attention of the pretrained model replaced by t2r in layers 0, 2; no attention transfer; dev accuracy 0.8125."));
    assert_eq!(
        attr(&dom, "proj-compare-box", "hidden").as_deref(),
        Some(""),
        "no comparison unless asked"
    );

    // Two checkpoints side by side: the second panel follows the first's filter.
    let dom = dump(&page, "#compare=last&filter=wrong", profile.path());
    assert_eq!(body_attr(&dom, "data-errors"), None, "script errors: {dom:.2000}");
    let wrong = count(&|e| e["prediction"] != e["label"]);
    assert_eq!(attr(&dom, "projection", "data-drawn"), Some(wrong.clone()));
    assert_eq!(attr(&dom, "projection-b", "data-drawn"), Some(wrong));
    assert_eq!(attr(&dom, "proj-compare-box", "hidden"), None);
    assert!(dom.contains("checkpoint \"last\""));

    // A box on the data map lists exactly the training examples inside it.
    let inside = (0..50)
        .filter(|&i| {
            let (c, v) = confidence_variability(i);
            (0.05..=0.3).contains(&v) && (0.4..=0.9).contains(&c)
        })
        .count();
    assert!(inside > 0 && inside < 50, "the box should cut the fixture: {inside}");
    let dom = dump(&page, "#dmbox=0.05,0.3,0.4,0.9", profile.path());
    assert_eq!(attr(&dom, "datamap-table", "data-rows"), Some(inside.to_string()));
    assert_eq!(attr(&dom, "datamap", "data-selected"), Some(inside.to_string()));

    // Screenshots as artifacts.
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    for (name, fragment) in [
        ("report-all.png", ""),
        ("report-wrong.png", "#filter=wrong"),
        ("report-compare.png", "#compare=last&dmbox=0.05,0.3,0.4,0.9"),
    ] {
        let out = browser(profile.path())
            .arg("--window-size=1400,3600")
            .arg(format!("--screenshot={}", shots.join(name).display()))
            .arg(format!("file://{}{fragment}", page.display()))
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(
            std::fs::metadata(shots.join(name)).unwrap().len() > 10_000,
            "{name} is empty"
        );
    }
    println!("screenshots in {}", shots.display());
}

/// A run with one evaluation and one epoch of training dynamics: the curves draw (one tick on
/// a one-point axis, no script error), and the data map says it needs two epochs instead of
/// drawing every point on the confidence axis.
#[test]
fn a_one_epoch_run_gets_a_data_map_note_and_one_point_curves() {
    use kiln_format::training::{DynamicsLine, MetricsLine};
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        serde_json::to_string(&MetricsLine::Train {
            step: 3,
            epoch: 0,
            loss: 0.6,
            lr: 1e-4,
            grad_norm: 1.0,
            seq_per_s: 20.0,
        })
        .unwrap(),
        serde_json::to_string(&MetricsLine::Eval {
            step: 3,
            epoch: 0,
            metrics: [("accuracy".to_string(), 0.75)].into(),
        })
        .unwrap(),
    ];
    std::fs::write(dir.path().join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
    let dynamics = DynamicsLine {
        epoch: 0,
        step: 3,
        p_gold: vec![0.2, 0.9, 0.6],
        correct: vec![false, true, true],
    };
    std::fs::write(
        dir.path().join("dynamics.jsonl"),
        serde_json::to_string(&dynamics).unwrap() + "\n",
    )
    .unwrap();
    let page = kiln_viz::write_report(dir.path(), None).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let dom = dump(&page, "", profile.path());
    assert_rendered(&dom);
    assert!(dom.contains("id=\"datamap-note\""), "{dom:.3000}");
    assert!(dom.contains("at least 2 epochs"));
    assert_eq!(attr(&dom, "datamap", "hidden").as_deref(), Some(""));
}
