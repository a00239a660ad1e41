//! Tuning strategies on the GPT-2 decoder through the one training loop: a byte-level model
//! pretrained on one text and fine-tuned on another with LoRA, BitFit, adapters or (IA)³
//! lowers the new text's held-out perplexity while every pretrained weight stays
//! bit-identical; the tuned part saves and loads back to the same perplexity; strategies the
//! decoder has no place for are refused with a typed error.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::prelude::*;
use kiln_model::roles::{Insert, ModelRoles, ParamRole, Part, TensorKind};
use kiln_model::Gpt2Model;
use kiln_tune::lm::{perplexity, train_lm, LmError, LmTrainConfig};
use kiln_tune::params::param_infos;
use kiln_tune::strategy::{load_tuned, save_tuned, StrategyConfig, StrategyError, Tuning};

type B = Autodiff<Flex>;

fn lm_config(steps: usize, lr: f64) -> LmTrainConfig {
    LmTrainConfig {
        steps,
        batch_size: 8,
        block_len: 32,
        lr,
        warmup_steps: 5,
        eval_every: 0,
        seed: 3,
        ..LmTrainConfig::default()
    }
}

/// A decoder pretrained (full fine-tuning) on one kind of text.
fn pretrained() -> Gpt2Model<B> {
    let device = Default::default();
    B::seed(&device, 11);
    let model = Gpt2Model::<B>::new(&common::tiny_gpt_config(), &device);
    let corpus = common::word_text(&["the", "cat", "sat", "on", "mat", "and", "hat"], 3000, 1);
    let (train, held_out) = corpus.split_at(corpus.len() - 2000);
    let (model, _) = train_lm(
        model,
        train,
        held_out,
        &lm_config(120, 3e-3),
        &Tuning::new(&[]).unwrap(),
        |_| {},
        &device,
    )
    .unwrap();
    model
}

/// The new text the decoder is fine-tuned on: other words, other letters.
fn new_text() -> (Vec<u32>, Vec<u32>) {
    let corpus = common::word_text(&["rivers", "flow", "quickly", "past", "old", "bridges"], 3000, 2);
    let (train, held_out) = corpus.split_at(corpus.len() - 2000);
    (train.to_vec(), held_out.to_vec())
}

fn tuning(json: &str) -> Tuning {
    let parts: Vec<StrategyConfig> = serde_json::from_str(json).unwrap();
    Tuning::new(&parts).unwrap()
}

#[test]
fn strategies_fine_tune_the_decoder_and_touch_only_what_they_train() {
    let _rng = kiln_testkit::rng_lock();
    let device = Default::default();
    let base = pretrained();
    let (train, held_out) = new_text();
    let before = perplexity(&base.valid(), &held_out, 32, 8, &device).perplexity;
    let base_values = common::snapshot(&base);
    // Each must bring the held-out perplexity below 70% of the pretrained model's.
    let cases = [
        (json_of_lora(), "LoRA"),
        (r#"[{"kind": "bit_fit"}]"#, "BitFit"),
        (r#"[{"kind": "houlsby", "reduction": 4}]"#, "Houlsby adapters"),
        (r#"[{"kind": "ia3"}]"#, "(IA)³"),
    ];
    for (json, name) in cases {
        let t = tuning(json);
        let (tuned, history) = train_lm(
            base.clone(),
            &train,
            &held_out,
            &lm_config(80, 1e-2),
            &t,
            |_| {},
            &device,
        )
        .unwrap();
        let after = history.evals.last().unwrap().1.perplexity;
        eprintln!("{name}: held-out perplexity {before:.2} → {after:.2}");
        assert!(
            after < 0.7 * before,
            "{name}: held-out perplexity {before:.2} → {after:.2}"
        );
        // Every pretrained tensor is bit-identical unless the strategy trains it.
        let roles = tuned.param_roles();
        let trained: Vec<String> = param_infos(&tuned)
            .into_iter()
            .filter(|i| roles.get(i.id).is_some_and(|r| t.trains(r)))
            .map(|i| i.path)
            .collect();
        let tuned_values = common::snapshot(&tuned);
        for (path, v) in &base_values {
            assert_eq!(trained.contains(path), &tuned_values[path] != v, "{name}: {path}");
        }
        let expected: usize = param_infos(&tuned)
            .iter()
            .filter(|i| roles.get(i.id).is_some_and(|r| t.trains(r)))
            .map(|i| i.numel())
            .sum();
        assert_eq!(history.trainable, expected, "{name}");
        // What trained, by role: exactly the strategy's kind of parameter.
        let trained_roles: Vec<ParamRole> = param_infos(&tuned)
            .iter()
            .filter_map(|i| roles.get(i.id).copied().filter(|r| t.trains(r)))
            .collect();
        let fits = |r: &ParamRole| match name {
            "BitFit" => matches!(r.tensor, TensorKind::Bias | TensorKind::NormShift),
            "LoRA" => matches!(r.part, Part::Insert(Insert::Lora(_))),
            "Houlsby adapters" => {
                r.is_norm() || matches!(r.part, Part::Insert(Insert::AttentionAdapter | Insert::FfnAdapter))
            }
            _ => r.part == Part::Insert(Insert::Ia3),
        };
        assert!(trained_roles.iter().all(fits), "{name}: {trained:?}");
    }
    // LoRA on five slots of two layers: ten deltas of two factors.
    let lora = tuning(json_of_lora());
    let inserted = lora.insert(base, &device).unwrap();
    let roles = inserted.param_roles();
    let factors = param_infos(&inserted)
        .iter()
        .filter(|i| {
            roles
                .get(i.id)
                .is_some_and(|r| matches!(r.part, Part::Insert(Insert::Lora(_))))
        })
        .count();
    assert_eq!(factors, 2 * 5 * 2);
}

fn json_of_lora() -> &'static str {
    r#"[{"kind": "lora", "r": 4, "targets": ["query", "value", "attention_output", "intermediate", "output"]}]"#
}

#[test]
fn a_tuned_decoder_part_saves_and_loads_back() {
    let _rng = kiln_testkit::rng_lock();
    let device = Default::default();
    let base = pretrained();
    let (train, held_out) = new_text();
    let t = tuning(r#"[{"kind": "lora", "r": 4}]"#);
    let (tuned, _) = train_lm(
        base.clone(),
        &train,
        &held_out,
        &lm_config(30, 1e-2),
        &t,
        |_| {},
        &device,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tuned.safetensors");
    save_tuned(&tuned, &t, &file).unwrap();
    let fresh = t.insert(base, &device).unwrap();
    let loaded = load_tuned(fresh, &t, &file).unwrap();
    let ppl = |m: &Gpt2Model<B>| perplexity(&m.valid(), &held_out, 32, 8, &device).perplexity;
    assert_eq!(ppl(&loaded), ppl(&tuned));
    // Only the LoRA factors were saved: 2 layers × query and value × A and B.
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(safetensors::SafeTensors::deserialize(&bytes).unwrap().len(), 8);
}

#[test]
fn strategies_the_decoder_has_no_place_for_are_refused() {
    let _rng = kiln_testkit::rng_lock();
    let device = Default::default();
    B::seed(&device, 1);
    let model = Gpt2Model::<B>::new(&common::tiny_gpt_config(), &device);
    let stream: Vec<u32> = (0..400).map(|i| i % 200).collect();
    for (json, place) in [
        (r#"[{"kind": "prompt_tuning", "n_virtual": 4}]"#, "the soft prompt"),
        (r#"[{"kind": "ladder", "reduction": 4}]"#, "the side network"),
        (
            r#"[{"kind": "compacter", "reduction": 4, "n": 4}]"#,
            "the Compacter adapters",
        ),
    ] {
        let e = train_lm(
            model.clone(),
            &stream,
            &stream,
            &lm_config(2, 1e-3),
            &tuning(json),
            |_| {},
            &device,
        )
        .unwrap_err();
        match e {
            LmError::Strategy(StrategyError::Unsupported {
                place: p,
                model: "GPT-2",
            }) => assert_eq!(p, place),
            other => panic!("{json}: {other}"),
        }
    }
}
