//! The loop's guarantees: a run stopped and resumed ends with the same weights, bit for bit,
//! as an uninterrupted one; a non-finite loss stops the run and leaves the last checkpoint
//! as it was.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use kiln_data::{Example, GlueTask, Label, TextInput, TextTokenizer};
use kiln_model::hub::{locate_model, DEFAULT_MODEL_ID};
use kiln_model::{BertConfig, BertModel};
use kiln_tune::checkpoint::model_bytes;
use kiln_tune::classifier::SequenceClassifier;
use kiln_tune::trainer::{train, RunDir, StopAt, TaskData, TrainConfig, TrainError};

type A = Autodiff<Flex>;

/// burn's backend RNG is process-global: two trainings running at once in one process would
/// interleave their seeded draws (dropout), so the tests of this binary take turns.
static BACKEND_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn tokenizer() -> TextTokenizer {
    let (dir, _) = locate_model(DEFAULT_MODEL_ID, None).unwrap_or_else(|e| panic!("{e}"));
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

#[test]
fn stopped_and_resumed_run_equals_uninterrupted_run_bit_for_bit() {
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let tok = tokenizer();
    let data = data(|i| Label::Class((i % 8) % 2));
    let device = Default::default();
    let dir_a = tempfile::tempdir().unwrap();
    let (full, res_a) = train(
        tiny_model(7, 2),
        &tok,
        &data,
        &config(),
        &RunDir(dir_a.path().into()),
        false,
        StopAt::default(),
        &device,
    )
    .unwrap();
    // 40 examples / 8 = 5 micro-batches per epoch, 2 per step → 3 steps per epoch.
    assert_eq!(res_a.steps, 6);

    let dir_b = tempfile::tempdir().unwrap();
    let run_b = RunDir(dir_b.path().into());
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
}

#[test]
fn non_finite_loss_stops_with_a_clear_error_and_keeps_the_checkpoint() {
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let tok = tokenizer();
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir(dir.path().into());
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
    let err = train(
        tiny_model(3, 1),
        &tok,
        &bad,
        &config(),
        &run,
        true,
        StopAt::default(),
        &device,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::NonFinite {
                what: "loss",
                step: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("step 2") && err.to_string().contains("checkpoints/last"),
        "{err}"
    );
    assert_eq!(std::fs::read(run.last().join("model.safetensors")).unwrap(), before);
    assert_eq!(
        std::fs::read_to_string(run.last().join("state.json")).unwrap(),
        state_before
    );
}
