//! The loop's guarantees: a run stopped and resumed ends with the same weights, bit for bit,
//! as an uninterrupted one; a non-finite loss stops the run and leaves the last checkpoint
//! as it was.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use kiln_data::{Example, GlueTask, Label, TextInput, TextTokenizer};
use kiln_model::hub::{locate_or_fetch, DEFAULT_MODEL_ID};
use kiln_model::{BertConfig, BertModel};
use kiln_tune::callbacks::{Control, TrainEvent};
use kiln_tune::checkpoint::model_bytes;
use kiln_tune::classifier::SequenceClassifier;
use kiln_tune::strategy::{Houlsby, Lora};
use kiln_tune::trainer::{train, EarlyStoppingConfig, RunDir, StopAt, TaskData, TrainConfig, TrainError, Trainer};

type A = Autodiff<Flex>;

fn tokenizer() -> TextTokenizer {
    let dir = locate_or_fetch(DEFAULT_MODEL_ID, None, true).unwrap_or_else(|e| panic!("{e}"));
    TextTokenizer::from_file(dir.join("tokenizer.json"), 32).unwrap()
}

fn tiny_model(seed: u64, num_labels: usize) -> SequenceClassifier<A> {
    let device = Default::default();
    A::seed(&device, seed);
    let config: BertConfig = serde_json::from_str(
        r#"{"vocab_size": 30522, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 32, "max_position_embeddings": 64}"#,
    )
    .unwrap();
    SequenceClassifier::new_head(BertModel::new(&config, true, &device), &config, num_labels, &device)
}

/// Every tensor equal bit for bit (by name: the serialised header order is not canonical).
fn assert_same_weights(a: &SequenceClassifier<A>, b: &SequenceClassifier<A>) {
    let (a, b) = (model_bytes(a).unwrap(), model_bytes(b).unwrap());
    let (sa, sb) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    assert_eq!(sa.len(), sb.len());
    let differing: Vec<String> = sa
        .tensors()
        .into_iter()
        .filter(|(n, v)| sb.tensor(n).map_or(true, |w| w.data() != v.data()))
        .map(|(n, _)| n)
        .collect();
    assert!(differing.is_empty(), "weights differ after resume: {differing:?}");
}

fn data(label: impl Fn(usize) -> Label) -> TaskData {
    let words = ["good", "bad", "fine", "awful", "great", "poor", "nice", "terrible"];
    let ex = |i: usize| Example {
        input: TextInput::Single(format!("a {} film number {}", words[i % 8], i)),
        label: label(i),
    };
    TaskData {
        task: GlueTask::Sst2,
        train: (0..40).map(ex).collect(),
        dev: (40..56).map(ex).collect(),
    }
}

fn config() -> TrainConfig {
    TrainConfig {
        epochs: 2,
        batch_size: 8,
        grad_accum: 2,
        lr: 1e-3,
        eval_every: Some(2),
        log_every: 1,
        ..TrainConfig::default()
    }
}

/// The reference of the resume tests: an uninterrupted run of [`config`] on a fresh directory.
fn uninterrupted(tok: &TextTokenizer, data: &TaskData) -> (SequenceClassifier<A>, kiln_tune::trainer::TrainResults) {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    train(
        tiny_model(7, 2),
        tok,
        data,
        &config(),
        &run,
        false,
        StopAt::default(),
        &Default::default(),
    )
    .unwrap()
}

#[test]
fn stopped_and_resumed_run_equals_uninterrupted_run_bit_for_bit() {
    let _rng = kiln_testkit::rng_lock();
    let tok = tokenizer();
    let data = data(|i| Label::Class((i % 8) % 2));
    let device = Default::default();
    let (full, res_a) = uninterrupted(&tok, &data);
    // 40 examples / 8 = 5 micro-batches per epoch, 2 per step → 3 steps per epoch.
    assert_eq!(res_a.steps, 6);

    let dir_b = tempfile::tempdir().unwrap();
    let run_b = RunDir::new(dir_b.path());
    let (_, stopped) = train(
        tiny_model(7, 2),
        &tok,
        &data,
        &config(),
        &run_b,
        false,
        StopAt { step: Some(4) },
        &device,
    )
    .unwrap();
    assert_eq!(stopped.steps, 4);
    // A fresh process would build the model anew (with a different head seed, even): the
    // checkpoint must override all of it.
    let (resumed, res_b) = train(
        tiny_model(999, 2),
        &tok,
        &data,
        &config(),
        &run_b,
        true,
        StopAt::default(),
        &device,
    )
    .unwrap();
    assert!(res_b.resumed);
    assert_eq!(res_b.steps, 6);
    assert_same_weights(&full, &resumed);
    assert_eq!(res_a.final_metrics, res_b.final_metrics);
    // metrics.jsonl of the resumed run has each step once.
    let text = std::fs::read_to_string(run_b.metrics()).unwrap();
    let train_steps: Vec<u64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(train_steps, vec![1, 2, 3, 4, 5, 6]);
    assert_tensorboard_mirrors_metrics(dir_b.path());
}

/// The run's one TensorBoard event file holds exactly the scalars of `metrics.jsonl`: each
/// training line's loss, lr, gradient norm and throughput, each evaluation's metrics, at their
/// steps, once each (a resume replays the kept lines into a new file).
fn assert_tensorboard_mirrors_metrics(dir: &std::path::Path) {
    use kiln_format::tensorboard::{event_files, read_scalars, scalars_of};
    use kiln_format::training::{read_lines, MetricsLine};
    let files = event_files(dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let got: Vec<(String, i64, f32)> = read_scalars(&files[0])
        .unwrap()
        .into_iter()
        .map(|s| (s.tag, s.step, s.value))
        .collect();
    let lines: Vec<MetricsLine> = read_lines(&dir.join("metrics.jsonl")).unwrap();
    let want: Vec<(String, i64, f32)> = lines
        .iter()
        .flat_map(|l| {
            let (step, scalars) = scalars_of(l);
            scalars.into_iter().map(move |(tag, v)| (tag, step as i64, v))
        })
        .collect();
    assert_eq!(got, want);
    let tags: std::collections::BTreeSet<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert!(
        tags.contains("train/loss") && tags.contains("train/lr") && tags.contains("eval/accuracy"),
        "{tags:?}"
    );
    assert_eq!(got.iter().filter(|g| g.0 == "train/loss").count(), 6);
}

#[test]
fn non_finite_loss_stops_with_a_clear_error_and_keeps_the_checkpoint() {
    let _rng = kiln_testkit::rng_lock();
    let tok = tokenizer();
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let mut good = data(|i| Label::Score((i % 5) as f32));
    good.task = GlueTask::Stsb;
    let (_, res) = train(
        tiny_model(3, 1),
        &tok,
        &good,
        &{
            let mut c = config();
            c.epochs = 1;
            c
        },
        &run,
        false,
        StopAt { step: Some(2) },
        &device,
    )
    .unwrap();
    assert_eq!(res.steps, 2);
    let before = std::fs::read(run.last().join("model.safetensors")).unwrap();
    let state_before = std::fs::read_to_string(run.last().join("state.json")).unwrap();

    let mut bad = good.clone();
    for e in &mut bad.train {
        e.label = Label::Score(f32::NAN);
    }
    // (epochs 1 → 2: a deliberate configuration change, so it must be allowed explicitly.)
    let err = train(
        tiny_model(3, 1),
        &tok,
        &bad,
        &config(),
        &run,
        kiln_tune::run_dir::OnExisting::ResumeAllowingConfigChange,
        StopAt::default(),
        &device,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::NonFinite {
                what: "loss",
                step: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("step 3") && err.to_string().contains("checkpoints/last"),
        "{err}"
    );
    assert_eq!(std::fs::read(run.last().join("model.safetensors")).unwrap(), before);
    assert_eq!(
        std::fs::read_to_string(run.last().join("state.json")).unwrap(),
        state_before
    );
}

fn short() -> TrainConfig {
    TrainConfig { epochs: 1, ..config() }
}

#[test]
fn a_run_directory_holding_a_run_is_refused_resumed_or_overwritten_never_mixed() {
    let _rng = kiln_testkit::rng_lock();
    use kiln_tune::run_dir::{OnExisting, RunDirError};
    let tok = tokenizer();
    let data = data(|i| Label::Class(i % 2));
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let go = |cfg: &TrainConfig, on: OnExisting| {
        train(tiny_model(1, 2), &tok, &data, cfg, &run, on, StopAt::default(), &device)
    };

    // Resume where nothing was run: an error, not a silent fresh start.
    let err = go(&short(), OnExisting::Resume).unwrap_err();
    assert!(
        matches!(err, TrainError::RunDir(RunDirError::NothingToResume { .. })),
        "{err}"
    );
    let (_, first) = go(&short(), OnExisting::Refuse).unwrap();
    assert_eq!(first.steps, 3);
    // Starting again on a finished run: refused, naming both ways out.
    let err = go(&short(), OnExisting::Refuse).unwrap_err();
    assert!(matches!(err, TrainError::RunDir(RunDirError::Exists { .. })), "{err}");
    assert!(
        err.to_string().contains("--resume") && err.to_string().contains("--overwrite"),
        "{err}"
    );
    // Resuming with another learning rate: refused, naming the change.
    let changed = TrainConfig { lr: 5e-4, ..short() };
    let err = go(&changed, OnExisting::Resume).unwrap_err();
    assert!(err.to_string().contains("train.lr: 0.001 → 0.0005"), "{err}");
    // ...unless allowed (the run is complete, so nothing is left to train).
    let (_, again) = go(&changed, OnExisting::ResumeAllowingConfigChange).unwrap();
    assert!(again.resumed);
    // Overwrite: the old run and what was derived from it go; other files stay.
    std::fs::create_dir_all(dir.path().join("analysis")).unwrap();
    std::fs::write(dir.path().join("analysis/analysis.json"), "{}").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let (_, fresh) = go(&short(), OnExisting::Overwrite).unwrap();
    assert!(!fresh.resumed && fresh.steps == 3);
    assert!(!dir.path().join("analysis").exists());
    assert_eq!(std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(), "mine");
    let steps: Vec<u64> = std::fs::read_to_string(run.metrics())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2, 3], "metrics.jsonl holds the new run only");
    // Resume-if-present on an empty directory starts a run.
    let empty = tempfile::tempdir().unwrap();
    let (_, r) = train(
        tiny_model(1, 2),
        &tok,
        &data,
        &short(),
        &RunDir::new(empty.path()),
        OnExisting::ResumeIfPresent,
        StopAt::default(),
        &device,
    )
    .unwrap();
    assert!(!r.resumed && r.steps == 3);
}

#[test]
fn a_second_writer_is_refused_while_the_first_holds_the_lock() {
    let _rng = kiln_testkit::rng_lock();
    use kiln_tune::run_dir::RunDirError;
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let held = run.lock().unwrap();
    let err = train(
        tiny_model(1, 2),
        &tokenizer(),
        &data(|i| Label::Class(i % 2)),
        &short(),
        &run,
        false,
        StopAt::default(),
        &Default::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, TrainError::RunDir(RunDirError::Locked { pid, .. }) if *pid == std::process::id().to_string()),
        "{err}"
    );
    assert!(
        !dir.path().join("config.json").exists(),
        "nothing written by the refused run"
    );
    drop(held);
}

/// A crash between the checkpoint swap's two renames leaves the previous checkpoint in
/// `.last.old` and the new, complete one in `.last.staging`, and no `last`: resume must pick
/// the newest complete one up (it used to start over from step 1 and delete it at the next save).
#[test]
fn a_crash_inside_the_checkpoint_swap_is_recovered_on_resume() {
    let _rng = kiln_testkit::rng_lock();
    let tok = tokenizer();
    let data = data(|i| Label::Class((i % 8) % 2));
    let device = Default::default();
    let (full, _) = uninterrupted(&tok, &data);
    for leftover in [".last.staging", ".last.old"] {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        train(
            tiny_model(7, 2),
            &tok,
            &data,
            &config(),
            &run,
            false,
            StopAt { step: Some(4) },
            &device,
        )
        .unwrap();
        std::fs::rename(run.last(), dir.path().join("checkpoints").join(leftover)).unwrap();
        let (resumed, res) = train(
            tiny_model(999, 2),
            &tok,
            &data,
            &config(),
            &run,
            true,
            StopAt::default(),
            &device,
        )
        .unwrap();
        assert!(res.resumed && res.steps == 6, "{leftover}");
        assert_same_weights(&full, &resumed);
        assert!(!dir.path().join("checkpoints").join(leftover).exists());
    }
}

#[test]
fn out_of_range_settings_are_errors_before_anything_is_written() {
    let _rng = kiln_testkit::rng_lock();
    use kiln_tune::strategy::StrategyConfig;
    let data = data(|i| Label::Class(i % 2));
    let device = Default::default();
    let lora = |r, alpha, dropout| {
        StrategyConfig::Lora(Lora {
            r,
            alpha,
            dropout,
            targets: vec!["query".into(), "value".into()],
        })
    };
    let cases: Vec<(TrainConfig, usize, &str)> = vec![
        (
            TrainConfig {
                dropout: Some(1.5),
                ..short()
            },
            32,
            "train.dropout = 1.5: must be in [0, 1)",
        ),
        (
            TrainConfig {
                batch_size: 0,
                ..short()
            },
            32,
            "train.batch_size = 0: must be at least 1",
        ),
        (
            TrainConfig {
                tuning: vec![lora(4, 16.0, 2.0)],
                ..short()
            },
            32,
            "lora: dropout = 2: must be in [0, 1)",
        ),
        (
            TrainConfig {
                tuning: vec![lora(4, -1.0, 0.0)],
                ..short()
            },
            32,
            "lora: alpha = -1",
        ),
        (
            TrainConfig {
                tuning: vec![lora(17, 16.0, 0.0)],
                ..short()
            },
            32,
            "lora: r = 17 exceeds the rank of query (16 → 16)",
        ),
        (
            TrainConfig {
                tuning: vec![StrategyConfig::Houlsby(Houlsby { reduction: 32 })],
                ..short()
            },
            32,
            "houlsby: reduction = 32 leaves a zero-width bottleneck",
        ),
        // The tokenizer truncates at 100 tokens; the model has 64 positions.
        (short(), 100, "train.max_length = 100: the model has 64 positions"),
    ];
    for (cfg, max_length, message) in cases {
        let dir = tempfile::tempdir().unwrap();
        let model_dir = locate_or_fetch(DEFAULT_MODEL_ID, None, true).unwrap_or_else(|e| panic!("{e}"));
        let tok = TextTokenizer::from_file(model_dir.join("tokenizer.json"), max_length).unwrap();
        let err = train(
            tiny_model(1, 2),
            &tok,
            &data,
            &cfg,
            &RunDir::new(dir.path()),
            false,
            StopAt::default(),
            &device,
        )
        .unwrap_err();
        assert!(err.to_string().starts_with(message), "{message}: {err}");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "{message}: nothing written"
        );
    }
}

/// A library caller's callbacks see every step, evaluation and checkpoint in order; the
/// configuration's early stopping (patience 1 on a metric that cannot move at lr 1e-12) ends
/// the 6-epoch run at the second evaluation with `checkpoints/last` and `results.json`
/// written; a `best_metric` the task does not have is an error naming the ones it has.
#[test]
fn callbacks_see_every_event_and_early_stopping_ends_the_run_cleanly() {
    let _rng = kiln_testkit::rng_lock();
    let tok = tokenizer();
    let data = data(|i| Label::Class((i % 8) % 2));
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let cfg = TrainConfig {
        epochs: 6,
        lr: 1e-12,
        eval_every: None,
        early_stopping: Some(EarlyStoppingConfig {
            patience: 1,
            min_delta: 0.0,
            metric: None,
        }),
        ..config()
    };
    let mut events = Vec::new();
    let (_, results) = Trainer::new(&cfg, &run)
        .callback(|e: &TrainEvent<'_>| {
            events.push(match e {
                TrainEvent::Step { step, .. } => format!("step {step}"),
                TrainEvent::Eval { step, .. } => format!("eval {step}"),
                TrainEvent::Checkpoint { step, best, path } => {
                    assert!(path.is_dir(), "{}", path.display());
                    format!("{} {step}", if *best { "best" } else { "last" })
                }
            });
            Control::Continue
        })
        .train(tiny_model(7, 2), &tok, &data, &Default::default())
        .unwrap();
    assert_eq!(
        events,
        [
            "step 1", "step 2", "step 3", "eval 3", "best 3", "last 3", "step 4", "step 5", "step 6", "eval 6",
            "last 6"
        ]
    );
    assert_eq!((results.steps, results.best.map(|b| b.1)), (6, Some(3)));
    let on_disk = kiln_format::run::Results::read(dir.path()).unwrap().unwrap();
    assert_eq!(on_disk.steps, 6);
    assert!(run.last().join("state.json").exists());

    let bad = TrainConfig {
        epochs: 1,
        best_metric: Some("f1".into()),
        ..config()
    };
    let other = tempfile::tempdir().unwrap();
    let err = train(
        tiny_model(7, 2),
        &tok,
        &data,
        &bad,
        &RunDir::new(other.path()),
        false,
        StopAt::default(),
        &Default::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("best_metric `f1`") && err.contains("accuracy"), "{err}");
}
