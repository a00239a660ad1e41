//! The analysis pipeline on a small random classifier: every number it reports is checked
//! against an independent computation — probabilities against the model's own forward pass
//! example by example, the unpruned point of the pruning curve against the accuracy of the
//! reported predictions, integrated gradients against their completeness axiom, rollout rows
//! against row-stochasticity, attention bytes against softmax rows — and the typed result
//! reads back from its file unchanged.

use std::cell::RefCell;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::prelude::*;
use kiln_data::{Example, GlueTask, Label, TextInput, TextTokenizer};
use kiln_format::analysis::{Analysis, Target};
use kiln_lens::pipeline::{analyse, AnalysisError, AnalysisInput, AnalysisSettings, Phase};
use kiln_model::hub::{locate_or_fetch, DEFAULT_MODEL_ID};
use kiln_model::{BertConfig, BertModel};
use kiln_tune::classifier::SequenceClassifier;
use kiln_tune::trainer::tensors;

type A = Autodiff<Flex>;

const CONFIG: &str = r#"{"vocab_size": 30522, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 32, "max_position_embeddings": 64, "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0}"#;

fn classifier() -> SequenceClassifier<A> {
    let device = Default::default();
    A::seed(&device, 5);
    let config: BertConfig = serde_json::from_str(CONFIG).unwrap();
    SequenceClassifier::new_head(BertModel::new(&config, true, &device), &config, 2, &device)
}

fn dev(n: usize) -> Vec<Example> {
    let words = [
        "the film",
        "a good story",
        "bad acting",
        "it was fine",
        "never again",
        "a delight",
    ];
    (0..n)
        .map(|i| Example {
            input: if i % 3 == 0 {
                TextInput::Pair(words[i % 6].into(), words[(i + 2) % 6].into())
            } else {
                TextInput::Single(format!("{} and {}", words[i % 6], words[(i * 5 + 1) % 6]))
            },
            label: Label::Class((i * 7 % 5) % 2),
        })
        .collect()
}

fn settings() -> AnalysisSettings {
    AnalysisSettings {
        max_examples: 24,
        importance_examples: 16,
        instances: 2,
        ig_steps: 64,
        tsne_epochs: 60,
        mean_pool: false,
        head_effects: true,
    }
}

#[test]
fn every_reported_number_agrees_with_an_independent_computation() {
    let _rng = kiln_testkit::rng_lock();
    let device = Default::default();
    let model = classifier();
    let dir = locate_or_fetch(DEFAULT_MODEL_ID, None, true).unwrap_or_else(|e| panic!("{e}"));
    let tok = TextTokenizer::from_file(dir.join("tokenizer.json"), 32).unwrap();
    let examples = dev(30);
    let input = AnalysisInput {
        model: &model,
        tokenizer: &tok,
        dev: &examples,
        task: GlueTask::Sst2,
        strategy: "full",
        checkpoint: "best",
        layer_norm_eps: 1e-12,
    };
    let seen = RefCell::new(Vec::new());
    let analysis = analyse(
        &input,
        &settings(),
        &|p, done, total| seen.borrow_mut().push((p, done, total)),
        &device,
    )
    .unwrap();

    // Every phase reported its start and its end.
    let seen = seen.into_inner();
    for phase in [
        Phase::Forward,
        Phase::Projections,
        Phase::Importance,
        Phase::HeadMasking,
        Phase::Instances,
    ] {
        let reports: Vec<_> = seen.iter().filter(|r| r.0 == phase).collect();
        assert!(reports.first().is_some_and(|r| r.1 == 0), "{phase:?}: {reports:?}");
        assert!(
            reports.last().is_some_and(|r| r.1 == r.2 && r.2 > 0),
            "{phase:?}: {reports:?}"
        );
    }

    // Rows: the prefix of max_examples, probabilities from the model's own forward pass.
    assert_eq!(analysis.examples.len(), 24);
    let inner = model.valid();
    for (e, row) in examples.iter().zip(&analysis.examples) {
        let enc = tok.encode_batch(std::slice::from_ref(&e.input)).unwrap();
        let [ids, types, mask] = tensors::<Flex>(&enc, &device);
        let logits: Vec<f32> = inner.forward(ids, types, mask).into_data().to_vec().unwrap();
        let z: f64 = logits.iter().map(|&v| f64::from(v).exp()).sum();
        let Label::Class(gold) = e.label else { unreachable!() };
        let p = f64::from(logits[gold]).exp() / z;
        assert!((row.p_gold.unwrap() - p).abs() < 2e-4, "{row:?} vs {p}");
        assert!((row.loss + p.ln()).abs() < 2e-3, "{row:?} vs {}", -p.ln());
        let pred = usize::from(logits[1] > logits[0]);
        assert_eq!(row.prediction, Target::Class(pred));
    }

    // Heads: the unpruned point is the accuracy of the reported predictions on the subset.
    let heads = analysis.heads.as_ref().expect("a plain backbone has head analyses");
    let correct = analysis.examples[..16]
        .iter()
        .filter(|r| r.prediction == r.label)
        .count();
    assert_eq!(heads.pruning[0].pruned, 0);
    assert!(
        (heads.pruning[0].metric - correct as f64 / 16.0).abs() < 1e-4,
        "{:?}",
        heads.pruning
    );
    assert_eq!(heads.metric, "accuracy");
    assert_eq!(heads.examples, 16);
    assert_eq!(heads.pruning.last().unwrap().pruned, 4, "90 % of 4 heads, rounded");
    for m in [&heads.gate, &heads.taylor, heads.masked_metric.as_ref().unwrap()] {
        assert_eq!(m.len(), 2);
        assert!(m.iter().all(|r| r.len() == 2 && r.iter().all(|v| v.is_finite())));
    }

    // Projections: layers 1..=2 ([CLS] of the embeddings is one point), n points each.
    let layers: Vec<usize> = analysis.projection.layers.iter().map(|l| l.layer).collect();
    assert_eq!(layers, [1, 2]);
    for l in &analysis.projection.layers {
        let ratio = &l.pca.explained_variance_ratio;
        assert!(
            ratio[0] >= ratio[1] && ratio.iter().sum::<f64>() <= 1.0 + 1e-4,
            "{ratio:?}"
        );
        for coords in [&l.pca.coords, &l.tsne.coords, &l.umap.coords] {
            let kiln_format::analysis::Coords::Points(p) = coords else {
                panic!("written unpacked")
            };
            assert_eq!(p.len(), 2 * 24);
        }
        for s in [l.pca.scores, l.tsne.scores, l.umap.scores] {
            assert!((0.0..=1.0).contains(&s.neighbourhood_preservation) && (0.0..=1.0).contains(&s.trustworthiness));
        }
    }

    // Instances: rollouts are distributions over the tokens, attention bytes are softmax rows,
    // and integrated gradients are complete.
    assert_eq!(analysis.instances.len(), 2);
    for inst in &analysis.instances {
        let s = inst.tokens.len();
        assert_eq!(inst.tokens[0], "[CLS]");
        for r in [&inst.rollout, &inst.value_zeroing_rollout, &inst.mixing_rollout] {
            assert_eq!(r.len(), s);
            assert!((r.iter().sum::<f64>() - 1.0).abs() < 1e-3, "{r:?}");
        }
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&inst.attention.data)
            .unwrap();
        assert_eq!(bytes.len(), 2 * 2 * s * s);
        for row in bytes.chunks(s) {
            let sum: u32 = row.iter().map(|&b| u32::from(b)).sum();
            assert!(sum.abs_diff(255) <= s as u32 / 2 + 1, "{row:?}");
        }
        assert_eq!(inst.mixing.len(), 2);
        let saliency = inst.saliency.as_ref().unwrap();
        assert_eq!(saliency.per_class.len(), 2);
        for c in &saliency.per_class {
            let k = c.ig_completeness;
            let delta = k.f_x - k.f_baseline;
            assert!((k.sum - delta).abs() <= 0.05 * delta.abs() + 1e-3, "{k:?}");
            assert_eq!(c.integrated_gradients.len(), s);
        }
    }

    // The file reads back to the same analysis.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("analysis.json");
    std::fs::write(&path, serde_json::to_string(&analysis).unwrap()).unwrap();
    assert_eq!(Analysis::read(&path).unwrap(), analysis);

    // Too few examples for the distortion scores is a typed error.
    let few = dev(10);
    let input = AnalysisInput { dev: &few, ..input };
    match analyse(&input, &settings(), &|_, _, _| {}, &device) {
        Err(AnalysisError::TooFewExamples { needed: 22, found: 10 }) => {}
        other => panic!("{:?}", other.map(|a| a.examples.len())),
    }
}
