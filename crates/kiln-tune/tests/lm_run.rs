//! A causal-LM run with a run directory, through the same loop, checkpoints and run files as
//! classification: GPT-2 with LoRA, stopped half-way and resumed, ends bit-identical to the
//! uninterrupted run (weights and held-out perplexity); the run's files read back through
//! their types; a resume with another configuration and a second run into the same directory
//! are refused.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use kiln_format::run::{Results, Trainable};
use kiln_format::training::{read_lines, MetricsLine};
use kiln_model::Gpt2Model;
use kiln_tune::lm::{train_lm, train_lm_run, LmError, LmRun, LmRunFile, LmTrainConfig, CAUSAL_LM_TASK};
use kiln_tune::run_dir::OnExisting;
use kiln_tune::strategy::{StrategyConfig, Tuning};
use kiln_tune::trainer::{RunDir, StopAt};

type B = Autodiff<Flex>;

fn cfg() -> LmTrainConfig {
    LmTrainConfig {
        steps: 12,
        batch_size: 4,
        block_len: 32,
        lr: 1e-2,
        warmup_steps: 2,
        eval_every: 4,
        eval_tokens: 0,
        seed: 5,
        ..LmTrainConfig::default()
    }
}

fn lora() -> Tuning {
    let parts: Vec<StrategyConfig> =
        serde_json::from_str(r#"[{"kind": "lora", "r": 4, "targets": ["query", "value", "intermediate"]}]"#).unwrap();
    Tuning::new(&parts).unwrap()
}

/// The same starting decoder every time (weights and LoRA factors drawn after seeding).
fn fresh(device: &<B as burn::tensor::backend::BackendTypes>::Device) -> Gpt2Model<B> {
    B::seed(device, 21);
    Gpt2Model::<B>::new(&common::tiny_gpt_config(), device)
}

fn streams() -> (Vec<u32>, Vec<u32>) {
    let corpus = common::word_text(&["rivers", "flow", "quickly", "past", "old", "bridges"], 1200, 4);
    let (train, held_out) = corpus.split_at(corpus.len() - 600);
    (train.to_vec(), held_out.to_vec())
}

fn run<'a>(dir: &'a RunDir, on_existing: OnExisting, stop: Option<usize>) -> LmRun<'a> {
    LmRun {
        dir,
        on_existing,
        stop: StopAt { step: stop },
    }
}

#[test]
fn an_interrupted_lm_run_resumes_bit_identical_and_writes_typed_run_files() {
    let _rng = kiln_testkit::rng_lock();
    let device = Default::default();
    let (train, held_out) = streams();
    let (cfg, tuning) = (cfg(), lora());
    // A run of `cfg` (or another configuration) from the same starting decoder.
    let go = |cfg: &LmTrainConfig, dir: &RunDir, on_existing: OnExisting, stop: Option<usize>| {
        train_lm_run(
            fresh(&device),
            &train,
            &held_out,
            cfg,
            &tuning,
            &run(dir, on_existing, stop),
            |_| {},
            &device,
        )
    };

    let whole_dir = tempfile::tempdir().unwrap();
    let whole = RunDir::new(whole_dir.path());
    let (whole_model, whole_history) = go(&cfg, &whole, OnExisting::Refuse, None).unwrap();

    // The same run in memory: the run directory changes nothing about the training.
    B::seed(&device, 21);
    let model = Gpt2Model::<B>::new(&common::tiny_gpt_config(), &device);
    let (_, memory) = train_lm(model, &train, &held_out, &cfg, &tuning, |_| {}, &device).unwrap();
    assert_eq!(memory.steps, whole_history.steps);
    assert_eq!(memory.evals, whole_history.evals);
    let (first, last) = (
        whole_history.steps[0].loss,
        whole_history.evals.last().unwrap().1.perplexity,
    );
    assert!(
        last < first.exp(),
        "held-out perplexity {last} vs first-step {:.2}",
        first.exp()
    );

    // Stopped after step 6 (between evaluations 4 and 8), then resumed.
    let split_dir = tempfile::tempdir().unwrap();
    let split = RunDir::new(split_dir.path());
    let (_, first_part) = go(&cfg, &split, OnExisting::Refuse, Some(6)).unwrap();
    assert_eq!(first_part.steps.len(), 6);
    let (resumed_model, second_part) = go(&cfg, &split, OnExisting::Resume, None).unwrap();
    assert_eq!(second_part.steps, whole_history.steps[6..].to_vec());
    assert_eq!(second_part.evals.last(), whole_history.evals.last());
    assert_eq!(common::snapshot(&resumed_model), common::snapshot(&whole_model));

    // The files, through their types.
    let config = LmRunFile::read(whole_dir.path()).unwrap();
    assert_eq!(config.task, CAUSAL_LM_TASK);
    assert_eq!((&config.train.train, &config.train.tuning), (&cfg, &tuning.components));
    let results = Results::read(whole_dir.path()).unwrap().unwrap();
    let resumed_results = Results::read(split_dir.path()).unwrap().unwrap();
    assert_eq!(
        (results.task.as_str(), results.steps, results.resumed),
        (CAUSAL_LM_TASK, 12, false)
    );
    assert_eq!((resumed_results.steps, resumed_results.resumed), (12, true));
    assert_eq!(results.final_metrics, resumed_results.final_metrics);
    assert_eq!(results.final_metrics.primary_value(), last);
    let best = whole_history
        .evals
        .iter()
        .map(|(step, p)| (p.perplexity, *step))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap();
    assert_eq!(results.best, Some(best));
    let trainable = Trainable::read(whole_dir.path()).unwrap().unwrap();
    assert_eq!(
        (trainable.trainable, trainable.total, trainable.strategy.as_str()),
        (whole_history.trainable, whole_history.total, "lora")
    );
    let lines = read_lines::<MetricsLine>(&split_dir.path().join("metrics.jsonl")).unwrap();
    let train_steps: Vec<usize> = lines
        .iter()
        .filter_map(|l| match l {
            MetricsLine::Train { step, .. } => Some(*step),
            MetricsLine::Eval { .. } => None,
        })
        .collect();
    assert_eq!(
        train_steps,
        (1..=12).collect::<Vec<_>>(),
        "one line per step, none twice"
    );
    assert!(split_dir.path().join("checkpoints/best/tuned.safetensors").is_file());

    // A resume with another learning rate, and a new run into a finished run's directory.
    let e = go(
        &LmTrainConfig {
            lr: 2e-2,
            ..cfg.clone()
        },
        &split,
        OnExisting::Resume,
        None,
    )
    .unwrap_err();
    assert!(matches!(e, LmError::Train(_)), "{e:?}");
    assert!(e.to_string().contains("train.train.lr: 0.01 → 0.02"), "{e}");
    let e = go(&cfg, &whole, OnExisting::Refuse, None).unwrap_err().to_string();
    assert!(e.contains("already holds a run"), "{e}");
}
