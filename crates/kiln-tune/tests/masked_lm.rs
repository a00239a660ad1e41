//! Masked language modelling through the one training loop: the loss is a host-side
//! cross-entropy over exactly the selected positions, masking follows BERT's 15% / 80-10-10
//! recipe, training lowers held-out masked-token perplexity, and LoRA on the encoder trains
//! only its deltas and the MLM head.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::TensorData;
use kiln_model::roles::{ModelRoles, Part, Site};
use kiln_model::{BertConfig, BertMlmHead, BertModel};
use kiln_tune::lm::{train_mlm, LmTrainConfig};
use kiln_tune::objective::masked_lm::{MaskedLm, MaskedLmModel, Masking};
use kiln_tune::objective::Objective;
use kiln_tune::params::param_infos;
use kiln_tune::strategy::{StrategyConfig, Tuning};

type B = Autodiff<Flex>;
type I = Flex;
const VOCAB: usize = 24;
const MASK: u32 = 23;

fn config() -> BertConfig {
    serde_json::from_value(serde_json::json!({
        "vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 32, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0
    }))
    .unwrap()
}

fn model(seed: u64) -> MaskedLmModel<B> {
    let device = Default::default();
    B::seed(&device, seed);
    let config = config();
    MaskedLmModel {
        bert: BertModel::new(&config, false, &device),
        head: BertMlmHead::new(&config, &device),
    }
}

fn masking() -> Masking {
    Masking {
        prob: 0.15,
        mask_token: MASK,
        vocab: VOCAB as u32,
    }
}

fn stream(n: usize) -> Vec<u32> {
    // Period 5 over 5 symbols: every masked token follows from either neighbour.
    (0..n).map(|i| [3, 1, 4, 5, 9][i % 5]).collect()
}

fn cfg(steps: usize) -> LmTrainConfig {
    LmTrainConfig {
        steps,
        batch_size: 32,
        block_len: 16,
        lr: 5e-3,
        warmup_steps: 5,
        eval_every: 0,
        seed: 5,
        ..LmTrainConfig::default()
    }
}

#[test]
fn masking_follows_berts_recipe() {
    let _rng = kiln_testkit::rng_lock();
    let m = masking();
    let window: Vec<u32> = (0..20_000).map(|i| (i % 20) as u32).collect();
    let (inputs, labels) = m.apply(&window, 9);
    let selected: Vec<usize> = (0..window.len()).filter(|&i| labels[i].is_some()).collect();
    let frac = selected.len() as f64 / window.len() as f64;
    assert!((frac - 0.15).abs() < 0.01, "selected {frac}");
    let masked = selected.iter().filter(|&&i| inputs[i] == MASK).count() as f64 / selected.len() as f64;
    let kept = selected.iter().filter(|&&i| inputs[i] == window[i]).count() as f64 / selected.len() as f64;
    assert!((masked - 0.8).abs() < 0.03, "[MASK] {masked}");
    // Unchanged: 10%, plus random replacements that drew the same token (1/24 of 10%).
    assert!((kept - (0.1 + 0.1 / VOCAB as f64)).abs() < 0.03, "kept {kept}");
    // Unselected positions are untouched; a selected one's label is the original token.
    for i in 0..window.len() {
        match labels[i] {
            None => assert_eq!(inputs[i], window[i]),
            Some(l) => assert_eq!(l, window[i]),
        }
    }
    // Deterministic, and never an empty selection.
    assert_eq!(m.apply(&window, 9), (inputs, labels));
    for seed in 0..50 {
        let (_, short) = m.apply(&[1, 2], seed);
        assert!(short.iter().any(Option::is_some), "seed {seed}: nothing selected");
    }
}

#[test]
fn the_loss_is_a_host_cross_entropy_over_the_selected_positions() {
    let _rng = kiln_testkit::rng_lock();
    let device = Default::default();
    let m = model(1);
    let data = stream(400);
    let c = cfg(1);
    let objective = MaskedLm {
        train: &data,
        held_out: &data,
        cfg: &c,
        masking: masking(),
    };
    let batch = objective.offsets(0);
    let loss = objective.loss(&m, &batch, &device).unwrap().into_scalar().elem::<f64>();
    // Host: the masks the objective drew are a function of (seed, offset), so rebuild them by
    // asking the objective for the same windows one by one and averaging with their counts.
    let (mut total, mut count) = (0.0, 0usize);
    for &o in &batch {
        let window = &data[o..o + c.block_len];
        let per = objective.loss(&m, &[o], &device).unwrap().into_scalar().elem::<f64>();
        let n = masked_count(&objective, window, o);
        total += per * n as f64;
        count += n;
        // The single-window loss itself against a host cross-entropy of the logits.
        let host = host_loss(&m.valid(), &objective, window, o);
        assert!((per - host).abs() < 1e-5, "window {o}: {per} vs {host}");
    }
    assert!(
        (loss - total / count as f64).abs() < 1e-5,
        "{loss} vs {}",
        total / count as f64
    );
}

/// The selected positions of the window at offset `o` (the objective's training mask seed).
fn masked_count(objective: &MaskedLm<'_>, window: &[u32], o: usize) -> usize {
    objective
        .masking
        .apply(window, train_seed(objective, o))
        .1
        .iter()
        .flatten()
        .count()
}

fn train_seed(objective: &MaskedLm<'_>, offset: usize) -> u64 {
    objective.cfg.seed ^ (offset as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

fn host_loss(m: &MaskedLmModel<I>, objective: &MaskedLm<'_>, window: &[u32], o: usize) -> f64 {
    let (inputs, labels) = objective.masking.apply(window, train_seed(objective, o));
    let ids: Vec<i64> = inputs.iter().map(|&t| i64::from(t)).collect();
    let n = ids.len();
    let logits = m.logits(Tensor::from_data(TensorData::new(ids, [1, n]), &Default::default()));
    let logits = logits.into_data().to_vec::<f32>().unwrap();
    let (mut total, mut count) = (0.0, 0);
    for (t, label) in labels.iter().enumerate() {
        let Some(gold) = label else { continue };
        let row: Vec<f64> = logits[t * VOCAB..(t + 1) * VOCAB]
            .iter()
            .map(|&x| f64::from(x))
            .collect();
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
        total += lse - row[*gold as usize];
        count += 1;
    }
    total / f64::from(count)
}

#[test]
fn training_lowers_masked_perplexity_and_lora_trains_only_its_deltas_and_the_head() {
    let _rng = kiln_testkit::rng_lock();
    let device = Default::default();
    let data = stream(3000);
    let (train, held_out) = data.split_at(2000);
    let full = Tuning::new(&[]).unwrap();
    let (_, history) = train_mlm(model(2), train, held_out, &cfg(300), masking(), &full, |_| {}, &device).unwrap();
    let first = history.steps[0].loss;
    let last = history.evals.last().unwrap().1;
    eprintln!(
        "full: first loss {first:.3}, held-out masked perplexity {:.3}",
        last.perplexity
    );
    assert!(first > 2.5, "first loss {first}");
    assert!(last.perplexity < 1.5, "{last:?}");

    let parts: Vec<StrategyConfig> =
        serde_json::from_str(r#"[{"kind": "lora", "r": 4, "targets": ["query", "value", "intermediate", "output"]}]"#)
            .unwrap();
    let lora = Tuning::new(&parts).unwrap();
    let base = model(2);
    let before = common::snapshot(&base);
    let c = cfg(300);
    let objective = MaskedLm {
        train,
        held_out,
        cfg: &c,
        masking: masking(),
    };
    let start = Objective::<B>::evaluate(&objective, &base.valid(), true, &device).unwrap();
    let start = start.primary_value();
    let (tuned, history) = train_mlm(base, train, held_out, &cfg(150), masking(), &lora, |_| {}, &device).unwrap();
    let last = history.evals.last().unwrap().1;
    eprintln!("LoRA: held-out masked perplexity {start:.3} → {:.3}", last.perplexity);
    assert!(last.perplexity < 0.5 * start, "{start} → {last:?}");
    let roles = tuned.param_roles();
    let after = common::snapshot(&tuned);
    for info in param_infos(&tuned) {
        let role = roles.get(info.id).unwrap();
        let trains = matches!(role.part, Part::Insert(_)) || role.site == Site::Head;
        assert_eq!(lora.trains(role), trains, "{}", info.path);
        if let Some(v) = before.get(&info.path) {
            assert_eq!(&after[&info.path] != v, trains, "{}", info.path);
        }
    }
}

/// A masked-LM run with a run directory, through the same run-dir policy as causal-LM and
/// classification runs: stopped half-way and resumed, it ends bit-identical to the
/// uninterrupted run (weights, held-out masked perplexity, results) and to the same training
/// in memory; `config.json` records the task and the masking; a resume with another masking is
/// refused naming the key.
#[test]
fn an_interrupted_masked_lm_run_resumes_bit_identical() {
    use kiln_format::run::Results;
    use kiln_tune::lm::{train_mlm_run, LmError, LmRun, LmRunFile, MASKED_LM_TASK};
    use kiln_tune::run_dir::OnExisting;
    use kiln_tune::trainer::{RunDir, StopAt};

    let _rng = kiln_testkit::rng_lock();
    let device = Default::default();
    let data = stream(1500);
    let (train, held_out) = data.split_at(1000);
    let parts: Vec<StrategyConfig> =
        serde_json::from_str(r#"[{"kind": "lora", "r": 4, "targets": ["query", "value"]}, {"kind": "bit_fit"}]"#)
            .unwrap();
    let tuning = Tuning::new(&parts).unwrap();
    let c = LmTrainConfig {
        batch_size: 8,
        eval_every: 4,
        ..cfg(12)
    };
    let go = |dir: &RunDir, masking: Masking, on_existing: OnExisting, stop: Option<usize>| {
        let run = LmRun {
            dir,
            on_existing,
            stop: StopAt { step: stop },
        };
        train_mlm_run(model(3), train, held_out, &c, masking, &tuning, &run, |_| {}, &device)
    };

    let whole_dir = tempfile::tempdir().unwrap();
    let whole = RunDir::new(whole_dir.path());
    let (whole_model, whole_history) = go(&whole, masking(), OnExisting::Refuse, None).unwrap();
    let (_, memory) = train_mlm(model(3), train, held_out, &c, masking(), &tuning, |_| {}, &device).unwrap();
    assert_eq!(memory.steps, whole_history.steps);
    assert_eq!(memory.evals, whole_history.evals);
    assert_eq!(whole_history.evals.len(), 3, "evaluations at steps 4, 8, 12");

    let split_dir = tempfile::tempdir().unwrap();
    let split = RunDir::new(split_dir.path());
    let (_, first_part) = go(&split, masking(), OnExisting::Refuse, Some(6)).unwrap();
    assert_eq!(first_part.steps.len(), 6);
    let other = Masking { prob: 0.3, ..masking() };
    let err = go(&split, other, OnExisting::Resume, None).unwrap_err();
    assert!(
        matches!(err, LmError::Train(_)) && err.to_string().contains("masking"),
        "{err}"
    );
    let (resumed_model, second_part) = go(&split, masking(), OnExisting::Resume, None).unwrap();
    assert_eq!(second_part.steps, whole_history.steps[6..].to_vec());
    assert_eq!(second_part.evals.last(), whole_history.evals.last());
    assert_eq!(common::snapshot(&resumed_model), common::snapshot(&whole_model));

    let config = LmRunFile::read(whole_dir.path()).unwrap();
    assert_eq!(config.task, MASKED_LM_TASK);
    assert_eq!(config.train.masking, Some(masking()));
    assert_eq!(config.train.tuning, tuning.components);
    let (a, b) = (
        Results::read(whole_dir.path()).unwrap().unwrap(),
        Results::read(split_dir.path()).unwrap().unwrap(),
    );
    assert_eq!(
        (a.task.as_str(), a.steps, b.steps, b.resumed),
        (MASKED_LM_TASK, 12, 12, true)
    );
    assert_eq!(a.final_metrics, b.final_metrics);
    assert_eq!(
        a.final_metrics.primary_value(),
        whole_history.evals.last().unwrap().1.perplexity
    );
}
