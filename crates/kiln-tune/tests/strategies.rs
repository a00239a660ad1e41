//! Tuning strategies: what trains (and nothing else moves), closed-form parameter counts,
//! tuned-part save/load, LoRA identities, Child-Tuning mask statistics, composition rules.

mod common;

use kiln_tune::strategy::{
    BitFit, ChildTuningD, ChildTuningF, Compacter, Full, Houlsby, Ia3, Ladder, LearnedMask, Lna, Lora, Pfeiffer,
    PromptTuning, Ulmfit,
};

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorData;
use kiln_data::{Example, GlueTask, Label, TextInput, TextTokenizer};
use kiln_model::hub::{locate_or_fetch, DEFAULT_MODEL_ID};
use kiln_model::peft::set_merged;
use kiln_model::roles::{ModelRoles, ParamRole, Site};
use kiln_model::{BertConfig, BertModel};
use kiln_tune::classifier::{SequenceClassifier, Targets};
use kiln_tune::optim::GradientTransform;
use kiln_tune::optim::{AdamW, AdamWConfig, ParamGroup};
use kiln_tune::params::param_infos;
use kiln_tune::strategy::{
    child_d_eligible, child_tuning_d_mask, load_tuned, percentile, save_tuned, trainable_report, ChildMask,
    GradientMask, StrategyConfig, StrategyError, Tuning,
};
use kiln_tune::trainer::{train, RunDir, StopAt, TaskData, TrainConfig};

type A = Autodiff<Flex>;
type I = Flex;

const H: usize = 16;
const F: usize = 32;
const L: usize = 2;
const VOCAB: usize = 30522;

fn config() -> BertConfig {
    serde_json::from_str(&format!(
        r#"{{"vocab_size": {VOCAB}, "hidden_size": {H}, "num_hidden_layers": {L}, "num_attention_heads": 2,
            "intermediate_size": {F}, "max_position_embeddings": 64, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0}}"#
    ))
    .unwrap()
}

fn tiny(seed: u64) -> SequenceClassifier<A> {
    let device = Default::default();
    A::seed(&device, seed);
    let config = config();
    let mut m = SequenceClassifier::new_head(BertModel::new(&config, true, &device), &config, 2, &device);
    m.set_dropout(0.0);
    m
}

fn batch(device: &burn::tensor::Device<A>) -> (Tensor<A, 2, Int>, Targets<A>) {
    let ids: Vec<i64> = (0..4 * 6).map(|i| (i * 7919 % 2000 + 1000) as i64).collect();
    (
        Tensor::from_data(TensorData::new(ids, [4, 6]), device),
        Targets::Classes(Tensor::from_data(TensorData::new(vec![0i64, 1, 1, 0], [4]), device)),
    )
}

/// Forward with segment 0 and no padding.
fn fwd<B: Backend>(m: &SequenceClassifier<B>, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
    let device = ids.device();
    let dims = ids.dims();
    m.forward(ids, Tensor::zeros(dims, &device), Tensor::ones(dims, &device))
}

fn logits(m: &SequenceClassifier<A>) -> Vec<f32> {
    let device = Default::default();
    let (ids, _) = batch(&device);
    let m = m.valid();
    let ids = Tensor::<I, 2, Int>::from_data(ids.into_data(), &device);
    fwd(&m, ids).into_data().to_vec().unwrap()
}

/// Paths of the parameters of `model` that `tuning` trains (decided by role).
fn trained_paths<BB: Backend>(tuning: &Tuning, model: &SequenceClassifier<BB>) -> std::collections::HashSet<String> {
    let roles = model.param_roles();
    param_infos(model)
        .into_iter()
        .filter(|p| roles.get(p.id).is_some_and(|r| tuning.trains(r)))
        .map(|p| p.path)
        .collect()
}

/// The role of the parameter at `path` of `model`.
fn role_at<BB: Backend>(model: &SequenceClassifier<BB>, path: &str) -> ParamRole {
    let roles = model.param_roles();
    let info = param_infos(model).into_iter().find(|p| p.path == path).expect(path);
    *roles.get(info.id).expect("every parameter has a role")
}

/// Inserts, freezes and takes `steps` AdamW steps (no weight decay on frozen: they get no
/// update at all) with `tuning`'s gradient mask.
fn run_steps(tuning: &Tuning, model: SequenceClassifier<A>, steps: usize, wd: f64) -> SequenceClassifier<A> {
    let device = Default::default();
    let model = tuning.insert(model, &device).unwrap();
    let mut model = tuning.freeze(model);
    let cfg = AdamWConfig {
        weight_decay: wd,
        max_grad_norm: None,
        ..Default::default()
    };
    let roles = model.param_roles();
    let mut opt = AdamW::<I>::new(cfg, &param_infos(&model), |info| ParamGroup {
        trainable: roles.get(info.id).is_some_and(|r| tuning.trains(r)),
        ..ParamGroup::hf_default(info)
    });
    let mask = match tuning.gradient_mask() {
        Some(GradientMask::Bernoulli { keep }) => Some(ChildMask::<I>::Bernoulli(keep)),
        Some(GradientMask::Fisher { .. }) | None => None,
    };
    for _ in 0..steps {
        let (ids, targets) = batch(&device);
        let loss = model.loss(fwd(&model, ids), &targets);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let mask = mask.as_ref().map(|m| m as &dyn GradientTransform<I>);
        model = opt.step_masked(model, grads, 1e-2, mask).0;
    }
    model
}

/// Closed-form trainable counts for the tiny config (L layers, width H, FFN F, 2 labels).
fn expected_trainable(kind: &str) -> usize {
    let head = H * 2 + 2;
    let layer_norms = L * 2 * 2 * H + 2 * H;
    match kind {
        "bit_fit" => L * (4 * H + F + H + 2 * H) + H + H + head,
        "lna" => L * 4 * (H * H + H) + layer_norms + head,
        "lora_qv_r4" => L * 2 * (H * 4 + 4 * H) + head,
        "houlsby_r4" => L * 2 * (H * (H / 4) + H / 4 + (H / 4) * H + H) + layer_norms + head,
        "pfeiffer_r4" => L * (H * (H / 4) + H / 4 + (H / 4) * H + H) + layer_norms + head,
        "ia3" => L * (2 * H + F) + head,
        "prompt_5" => 5 * H + head,
        "ladder_r4" => {
            let w = H / 4;
            let side_layer = 4 * (w * w + w) + 2 * 2 * w + (w * 4 * w + 4 * w) + (4 * w * w + w);
            (L + 1) * (H * w + w) + L * side_layer + L + (w * H + H) + (H * H + H) + head
        }
        // Per layer two adapters, each PHM down (H → H/4) and up (H/4 → H): s, t and bias
        // are d_in + d_out + d_out each; plus the shared 2×2×2 rules.
        "compacter_r4_n2" => L * 2 * ((H + H / 4 + H / 4) + (H / 4 + H + H)) + 8 + layer_norms + head,
        "learned_mask" => L * (4 * H * H + 2 * H * F) + head,
        _ => unreachable!(),
    }
}

#[test]
fn each_strategy_trains_exactly_its_parameters_and_counts_match_closed_form() {
    let _rng = kiln_testkit::rng_lock();
    let cases: Vec<(&str, Vec<StrategyConfig>)> = vec![
        ("bit_fit", vec![StrategyConfig::BitFit(BitFit {})]),
        ("lna", vec![StrategyConfig::Lna(Lna {})]),
        (
            "lora_qv_r4",
            vec![StrategyConfig::Lora(Lora {
                r: 4,
                alpha: 8.0,
                dropout: 0.0,
                targets: vec!["query".into(), "re:.*value".into()],
            })],
        ),
        ("houlsby_r4", vec![StrategyConfig::Houlsby(Houlsby { reduction: 4 })]),
        ("pfeiffer_r4", vec![StrategyConfig::Pfeiffer(Pfeiffer { reduction: 4 })]),
        ("ia3", vec![StrategyConfig::Ia3(Ia3 {})]),
        (
            "prompt_5",
            vec![StrategyConfig::PromptTuning(PromptTuning { n_virtual: 5 })],
        ),
        ("ladder_r4", vec![StrategyConfig::Ladder(Ladder { reduction: 4 })]),
        (
            "compacter_r4_n2",
            vec![StrategyConfig::Compacter(Compacter { reduction: 4, n: 2 })],
        ),
        (
            "learned_mask",
            vec![StrategyConfig::LearnedMask(LearnedMask {
                targets: vec!["re:.*".into()],
                init: 0.01,
                threshold: 0.005,
            })],
        ),
    ];
    for (name, components) in cases {
        let tuning = Tuning::new(&components).unwrap();
        let device = Default::default();
        let base = tiny(3);
        let before = common::snapshot(&tuning.insert(base.clone(), &device).unwrap());
        let after_model = run_steps(&tuning, base, 2, 0.01);
        let after = common::snapshot(&after_model);
        let report = trainable_report(&tuning, &param_infos(&after_model), &after_model.param_roles());
        assert_eq!(report.trainable, expected_trainable(name), "{name}: {report:?}");
        let trained = trained_paths(&tuning, &after_model);
        for (path, b) in &before {
            let a = &after[path];
            if trained.contains(path) {
                assert!(a != b, "{name}: trained {path} did not change");
            } else {
                assert!(a == b, "{name}: frozen {path} changed");
            }
        }
    }
}

#[test]
fn tuned_part_alone_reproduces_the_logits() {
    let _rng = kiln_testkit::rng_lock();
    let device = Default::default();
    for components in [
        vec![StrategyConfig::Lora(Lora {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: vec!["query".into(), "value".into(), "output".into()],
        })],
        vec![StrategyConfig::Houlsby(Houlsby { reduction: 4 })],
        vec![
            StrategyConfig::BitFit(BitFit {}),
            StrategyConfig::ChildTuningF(ChildTuningF { reserve_p: 0.5 }),
        ],
    ] {
        let tuning = Tuning::new(&components).unwrap();
        let trained = run_steps(&tuning, tiny(5), 3, 0.01);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tuned.safetensors");
        save_tuned(&trained, &tuning, &file).unwrap();
        let stored = kiln_tune::strategy::read_tuning(&file).unwrap();
        assert_eq!(stored.components, components);
        // The same base; inserted modules drawn with a different seed, then overwritten.
        A::seed(&device, 12345);
        let fresh = stored.insert(tiny(5), &device).unwrap();
        assert_ne!(logits(&fresh), logits(&trained));
        let loaded = load_tuned(fresh, &stored, &file).unwrap();
        assert_eq!(logits(&loaded), logits(&trained), "{}", tuning.name());
        let bytes = std::fs::metadata(&file).unwrap().len() as usize;
        let all = kiln_tune::strategy::tuned_bytes(&trained, &Tuning::new(&[]).unwrap()).len();
        assert!(
            bytes * 4 < all,
            "{}: tuned part {bytes} B vs whole model {all} B",
            tuning.name()
        );
    }
}

#[test]
fn lora_starts_as_the_base_model_and_merging_is_exact() {
    let _rng = kiln_testkit::rng_lock();
    let device = Default::default();
    let lora = StrategyConfig::Lora(Lora {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec!["re:.*".into()],
    });
    let tuning = Tuning::new(&[lora]).unwrap();
    let base = tiny(9);
    assert_eq!(logits(&tuning.insert(base.clone(), &device).unwrap()), logits(&base));
    let trained = run_steps(&tuning, base.clone(), 3, 0.0);
    let unmerged = logits(&trained);
    assert_ne!(unmerged, logits(&base));
    let mut merged_model = trained.clone();
    let w0 = merged_model.bert.encoder.layer[0].output.dense.weight.val();
    for layer in &mut merged_model.bert.encoder.layer {
        let lora = layer.inserts.lora.as_mut().unwrap();
        let sa = &mut layer.attention.self_attention;
        set_merged(&mut sa.query, lora.query.as_mut().unwrap(), true);
        set_merged(&mut sa.key, lora.key.as_mut().unwrap(), true);
        set_merged(&mut sa.value, lora.value.as_mut().unwrap(), true);
        set_merged(
            &mut layer.attention.output.dense,
            lora.attention_output.as_mut().unwrap(),
            true,
        );
        set_merged(&mut layer.intermediate.dense, lora.intermediate.as_mut().unwrap(), true);
        set_merged(&mut layer.output.dense, lora.output.as_mut().unwrap(), true);
    }
    let merged = logits(&merged_model);
    let worst = unmerged
        .iter()
        .zip(&merged)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-5, "merged vs unmerged logits differ by {worst}");
    let layer = &mut merged_model.bert.encoder.layer[0];
    set_merged(
        &mut layer.output.dense,
        layer.inserts.lora.as_mut().unwrap().output.as_mut().unwrap(),
        false,
    );
    let restored = layer.output.dense.weight.val();
    let diff = (restored - w0).abs().max().into_scalar();
    assert!(diff < 1e-6, "unmerge left {diff}");
}

#[test]
fn child_tuning_f_keeps_a_binomial_fraction_scaled_by_inverse_p() {
    let _rng = kiln_testkit::rng_lock();
    let device = Default::default();
    I::seed(&device, 1);
    let n = 200_000usize;
    for p in [0.1, 0.3, 0.9] {
        let masked = GradientTransform::apply(&ChildMask::<I>::Bernoulli(p), "x", Tensor::ones([n], &device));
        let v: Vec<f32> = masked.into_data().to_vec().unwrap();
        let kept = v.iter().filter(|&&x| x != 0.0).count() as f64;
        let (mean, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
        assert!(
            (kept - mean).abs() < 5.0 * sd,
            "p={p}: kept {kept}, expected {mean} ± {sd}"
        );
        assert!(v.iter().all(|&x| x == 0.0 || (x as f64 - 1.0 / p).abs() < 1e-5));
    }
}

#[test]
fn child_tuning_d_keeps_reserve_p_of_encoder_elements_and_masked_ones_do_not_move() {
    let _rng = kiln_testkit::rng_lock();
    let device = Default::default();
    let model = tiny(11);
    let reserve_p = 0.3;
    let mask = child_tuning_d_mask(&model, 3, reserve_p, |m, i| {
        let (ids, targets) = batch(&device);
        let ids = ids.add_scalar(i as i64);
        Ok::<_, ()>(m.loss(fwd(m, ids), &targets))
    })
    .unwrap();
    let ChildMask::Fixed(masks) = &mask else {
        panic!("fixed mask expected")
    };
    let roles = model.param_roles();
    let eligible: Vec<_> = param_infos(&model)
        .into_iter()
        .filter(|p| child_d_eligible(roles.get(p.id).unwrap()))
        .collect();
    assert_eq!(masks.len(), eligible.len());
    assert!(masks.keys().all(|k| k.starts_with("bert.encoder.layer.")));
    let total: usize = eligible.iter().map(|p| p.numel()).sum();
    let kept: f64 = masks.values().map(|m| m.clone().sum().into_scalar() as f64).sum();
    let want = reserve_p * total as f64;
    assert!((kept - want).abs() <= 2.0, "kept {kept} of {total}, want ≈ {want}");

    // One step without weight decay from zero momentum: masked-out elements stay put.
    let tuning = Tuning::new(&[StrategyConfig::ChildTuningD(ChildTuningD { reserve_p })]).unwrap();
    let mut model = tuning.freeze(model);
    let before = common::snapshot(&model);
    let cfg = AdamWConfig {
        weight_decay: 0.0,
        max_grad_norm: None,
        ..Default::default()
    };
    let mut opt = AdamW::<I>::new(cfg, &param_infos(&model), ParamGroup::hf_default);
    let (ids, targets) = batch(&device);
    let loss = model.loss(fwd(&model, ids), &targets);
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    model = opt.step_masked(model, grads, 1e-2, Some(&mask)).0;
    let after = common::snapshot(&model);
    for (path, m) in masks {
        let m: Vec<f32> = m.clone().into_data().to_vec().unwrap();
        for (i, keep) in m.iter().enumerate() {
            if *keep == 0.0 {
                assert_eq!(before[path][i], after[path][i], "{path}[{i}] moved although masked");
            }
        }
    }
    assert_ne!(before["classifier.weight"], after["classifier.weight"]);
}

#[test]
fn percentile_matches_numpy_linear_interpolation() {
    let _rng = kiln_testkit::rng_lock();
    // numpy.percentile([4, 1, 3, 2], q) for q = 0, 30, 50, 100.
    for (q, want) in [(0.0, 1.0), (30.0, 1.9), (50.0, 2.5), (100.0, 4.0)] {
        let mut v = vec![4.0f32, 1.0, 3.0, 2.0];
        assert!((percentile(&mut v, q) - want).abs() < 1e-6, "q={q}");
    }
    let mut big: Vec<f32> = (0..1001).rev().map(|x| x as f32).collect();
    assert_eq!(percentile(&mut big, 70.0), 700.0);
}

#[test]
fn nonsensical_compositions_are_clear_errors() {
    let _rng = kiln_testkit::rng_lock();
    let err = |c: &[StrategyConfig]| Tuning::new(c).unwrap_err();
    assert!(matches!(
        err(&[StrategyConfig::Full(Full {}), StrategyConfig::BitFit(BitFit {})]),
        StrategyError::Incompatible("full", "bit_fit", _)
    ));
    assert!(matches!(
        err(&[
            StrategyConfig::ChildTuningF(ChildTuningF { reserve_p: 0.3 }),
            StrategyConfig::ChildTuningD(ChildTuningD { reserve_p: 0.3 })
        ]),
        StrategyError::Incompatible(..)
    ));
    assert!(matches!(
        err(&[
            StrategyConfig::Houlsby(Houlsby { reduction: 16 }),
            StrategyConfig::Pfeiffer(Pfeiffer { reduction: 16 })
        ]),
        StrategyError::Incompatible(..)
    ));
    let e = err(&[StrategyConfig::Lora(Lora {
        r: 8,
        alpha: 16.0,
        dropout: 0.0,
        targets: vec!["qeury".into()],
    })]);
    assert!(
        e.to_string().contains("qeury") && e.to_string().contains("query"),
        "{e}"
    );
    assert!(matches!(
        err(&[StrategyConfig::ChildTuningF(ChildTuningF { reserve_p: 0.0 })]),
        StrategyError::Invalid { .. }
    ));
    // Sensible compositions are accepted.
    for ok in [
        vec![
            StrategyConfig::BitFit(BitFit {}),
            StrategyConfig::ChildTuningF(ChildTuningF { reserve_p: 0.3 }),
        ],
        vec![
            StrategyConfig::Lora(Lora {
                r: 8,
                alpha: 16.0,
                dropout: 0.1,
                targets: vec!["query".into(), "value".into()],
            }),
            StrategyConfig::ChildTuningD(ChildTuningD { reserve_p: 0.3 }),
        ],
    ] {
        Tuning::new(&ok).unwrap();
    }
}

/// 40 training sentences and `dev` evaluation sentences, alternating labels.
fn toy_data(dev: usize) -> TaskData {
    let words = ["good", "bad", "fine", "awful", "great", "poor", "nice", "terrible"];
    let ex = |i: usize| Example {
        input: TextInput::Single(format!("a {} film number {}", words[i % 8], i)),
        label: Label::Class(i % 2),
    };
    TaskData {
        task: GlueTask::Sst2,
        train: (0..40).map(ex).collect(),
        dev: (40..40 + dev).map(ex).collect(),
    }
}

fn tokenizer() -> TextTokenizer {
    let dir = locate_or_fetch(DEFAULT_MODEL_ID, None, true).unwrap_or_else(|e| panic!("{e}"));
    TextTokenizer::from_file(dir.join("tokenizer.json"), 32).unwrap()
}

#[test]
fn lora_run_checkpoints_only_its_tuned_part_and_resumes_exactly() {
    let _rng = kiln_testkit::rng_lock();
    let tok = tokenizer();
    let data = toy_data(16);
    let cfg = TrainConfig {
        epochs: 2,
        batch_size: 8,
        lr: 1e-2,
        eval_every: Some(2),
        data_map: true,
        tuning: vec![
            StrategyConfig::Lora(Lora {
                r: 4,
                alpha: 8.0,
                dropout: 0.1,
                targets: vec!["query".into(), "value".into()],
            }),
            StrategyConfig::ChildTuningF(ChildTuningF { reserve_p: 0.5 }),
        ],
        ..TrainConfig::default()
    };
    let device = Default::default();
    let dir_a = tempfile::tempdir().unwrap();
    let (full, res_a) = train(
        tiny(7),
        &tok,
        &data,
        &cfg,
        &RunDir::new(dir_a.path()),
        false,
        StopAt::default(),
        &device,
    )
    .unwrap();
    assert_eq!(res_a.strategy, "lora+child_tuning_f");
    assert_eq!(res_a.trainable_params, expected_trainable("lora_qv_r4"));
    let last = dir_a.path().join("checkpoints/last");
    assert!(last.join("tuned.safetensors").exists() && !last.join("model.safetensors").exists());
    let dir_b = tempfile::tempdir().unwrap();
    let run_b = RunDir::new(dir_b.path());
    train(
        tiny(7),
        &tok,
        &data,
        &cfg,
        &run_b,
        false,
        StopAt { step: Some(4) },
        &device,
    )
    .unwrap();
    let (resumed, res_b) = train(tiny(7), &tok, &data, &cfg, &run_b, true, StopAt::default(), &device).unwrap();
    assert!(res_b.resumed);
    // Training dynamics: one line per epoch with every training example, also after resume.
    for dir in [dir_a.path(), dir_b.path()] {
        let text = std::fs::read_to_string(dir.join("dynamics.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{}", dir.display());
        for (e, l) in lines.iter().enumerate() {
            assert_eq!(l["epoch"], e);
            let p = l["p_gold"].as_array().unwrap();
            assert_eq!(p.len(), 40);
            assert!(p.iter().all(|v| (0.0..=1.0).contains(&v.as_f64().unwrap())));
        }
    }
    let (a, b) = (common::snapshot(&full), common::snapshot(&resumed));
    let differing: Vec<&String> = a.keys().filter(|k| a[*k] != b[*k]).collect();
    assert!(differing.is_empty(), "differ after resume: {differing:?}");
}

#[test]
fn ia3_and_learned_masks_start_as_the_base_model() {
    let _rng = kiln_testkit::rng_lock();
    let device = Default::default();
    let base = tiny(21);
    for c in [
        StrategyConfig::Ia3(Ia3 {}),
        StrategyConfig::LearnedMask(LearnedMask {
            targets: vec!["query".into(), "intermediate".into()],
            init: 0.01,
            threshold: 0.005,
        }),
    ] {
        let tuning = Tuning::new(&[c]).unwrap();
        assert_eq!(
            logits(&tuning.insert(base.clone(), &device).unwrap()),
            logits(&base),
            "{}",
            tuning.name()
        );
    }
}

#[test]
fn learned_mask_scores_get_the_straight_through_gradient() {
    let _rng = kiln_testkit::rng_lock();
    let device = Default::default();
    let base = tiny(22);
    let (ids, targets) = batch(&device);
    // ∂L/∂W of the unmasked model ...
    let loss = base.loss(fwd(&base, ids.clone()), &targets);
    let grads = loss.backward();
    let w = base.bert.encoder.layer[1].attention.self_attention.query.weight.val();
    let g_w = w.grad(&grads).unwrap();
    // ... times W is ∂L/∂s of the masked one (at init the mask is all ones, W ⊙ m = W).
    let tuning = Tuning::new(&[StrategyConfig::LearnedMask(LearnedMask {
        targets: vec!["query".into()],
        init: 0.01,
        threshold: 0.005,
    })])
    .unwrap();
    let masked = tuning.freeze(tuning.insert(base.clone(), &device).unwrap());
    let loss = masked.loss(fwd(&masked, ids), &targets);
    let grads = loss.backward();
    let s = masked.bert.encoder.layer[1]
        .inserts
        .masks
        .as_ref()
        .unwrap()
        .query
        .as_ref()
        .unwrap()
        .scores
        .val();
    let g_s = s.grad(&grads).unwrap();
    let want = g_w * w.inner();
    let diff = (g_s - want.clone()).abs().max().into_scalar();
    let scale = want.abs().max().into_scalar();
    assert!(scale > 0.0 && diff <= 1e-5 * scale, "diff {diff} vs scale {scale}");
}

#[test]
fn slanted_triangular_rate_follows_the_paper() {
    let _rng = kiln_testkit::rng_lock();
    use kiln_tune::strategy::slanted_triangular;
    // Howard & Ruder (2018), eq. 3, with T = 1000, cut_frac = 0.1, ratio = 32.
    let lr = |t| slanted_triangular(1.0, t, 1000, 0.1, 32.0);
    assert!((lr(0) - 1.0 / 32.0).abs() < 1e-12);
    assert!((lr(50) - (1.0 + 0.5 * 31.0) / 32.0).abs() < 1e-12);
    assert!((lr(100) - 1.0).abs() < 1e-12);
    assert!((lr(550) - 16.5 / 32.0).abs() < 1e-12);
    assert!((lr(1000) - 1.0 / 32.0).abs() < 1e-12);
    let t = Tuning::new(&[StrategyConfig::Ulmfit(Ulmfit {
        cut_frac: 0.1,
        ratio: 32.0,
        decay: 2.6,
        gradual_unfreezing: true,
    })])
    .unwrap();
    assert_eq!(t.learning_rate(1.0, 550, 0, 1000), lr(550));
    // Discriminative rates: head 1, top layer (of 2) 1/2.6, bottom 1/2.6², embeddings 1/2.6³.
    let m = tiny(2);
    let scale = |path: &str| t.lr_scale(&role_at(&m, path), 2);
    assert_eq!(scale("classifier.weight"), 1.0);
    assert_eq!(role_at(&m, "classifier.weight").site, Site::Head);
    assert!((scale("bert.encoder.layer.1.output.dense.weight") - 1.0 / 2.6).abs() < 1e-12);
    assert!((scale("bert.encoder.layer.0.output.dense.weight") - 1.0 / 2.6f64.powi(2)).abs() < 1e-12);
    assert!((scale("bert.embeddings.word_embeddings.weight") - 1.0 / 2.6f64.powi(3)).abs() < 1e-12);
}

#[test]
fn gradual_unfreezing_opens_one_layer_per_epoch_from_the_top() {
    let _rng = kiln_testkit::rng_lock();
    let tok = tokenizer();
    let data = toy_data(8);
    let cfg = TrainConfig {
        epochs: 4,
        batch_size: 8,
        lr: 1e-2,
        tuning: vec![StrategyConfig::Ulmfit(Ulmfit {
            cut_frac: 0.1,
            ratio: 32.0,
            decay: 2.6,
            gradual_unfreezing: true,
        })],
        ..TrainConfig::default()
    };
    let device = Default::default();
    let initial = common::snapshot(&tiny(8));
    let moved = |stop: usize| {
        let dir = tempfile::tempdir().unwrap();
        let (m, _) = train(
            tiny(8),
            &tok,
            &data,
            &cfg,
            &RunDir::new(dir.path()),
            false,
            StopAt { step: Some(stop) },
            &device,
        )
        .unwrap();
        let after = common::snapshot(&m);
        let mut groups: Vec<&str> = initial
            .keys()
            .filter(|k| initial[*k] != after[*k])
            .map(|k| {
                if k.starts_with("classifier.") || k.starts_with("bert.pooler.") {
                    "head"
                } else if k.starts_with("bert.encoder.layer.1.") {
                    "layer1"
                } else if k.starts_with("bert.encoder.layer.0.") {
                    "layer0"
                } else {
                    "embeddings"
                }
            })
            .collect();
        groups.sort();
        groups.dedup();
        groups
    };
    // 40 examples / 8 = 5 steps per epoch.
    assert_eq!(moved(5), ["head"]);
    assert_eq!(moved(10), ["head", "layer1"]);
    assert_eq!(moved(15), ["head", "layer0", "layer1"]);
    assert_eq!(moved(20), ["embeddings", "head", "layer0", "layer1"]);
}

#[test]
fn soft_prompt_is_prepended_as_vocabulary_rows() {
    let _rng = kiln_testkit::rng_lock();
    let device = Default::default();
    let base = tiny(31);
    let tuning = Tuning::new(&[StrategyConfig::PromptTuning(PromptTuning { n_virtual: 3 })]).unwrap();
    let prompted = tuning.insert(base.clone(), &device).unwrap();
    let prompt = prompted.bert.prompt.as_ref().unwrap().val();
    assert_eq!(prompt.dims(), [3, H]);
    // Each prompt row is a row of the word-embedding table with id ≥ 1000.
    let table: Vec<f32> = base
        .bert
        .embeddings
        .word_embeddings
        .weight
        .val()
        .into_data()
        .to_vec()
        .unwrap();
    let rows: Vec<f32> = prompt.into_data().to_vec().unwrap();
    for r in rows.chunks(H) {
        let id = table.chunks(H).position(|t| t == r).expect("a vocabulary row");
        assert!(id >= 1000, "id {id}");
    }
    // Outputs gain 3 leading positions; the real tokens see the prompt (their states change).
    let ids = Tensor::<A, 2, Int>::from_data(TensorData::new(vec![1001i64, 1002, 1003], [1, 3]), &device);
    let plain = base
        .bert
        .forward(ids.clone(), None, None, kiln_model::Capture::none())
        .last_hidden_state;
    let with = prompted
        .bert
        .forward(ids, None, None, kiln_model::Capture::none())
        .last_hidden_state;
    assert_eq!(with.dims(), [1, 6, H]);
    assert!(
        plain
            .clone()
            .sub(with.slice([0..1, 3..6, 0..H]))
            .abs()
            .max()
            .into_scalar()
            > 1e-4
    );
    // A too-long prompt is a clear error.
    assert!(
        Tuning::new(&[StrategyConfig::PromptTuning(PromptTuning { n_virtual: 40 })])
            .unwrap()
            .insert(base, &device)
            .is_err()
    );
}

#[test]
fn phm_weight_is_the_sum_of_kronecker_products() {
    let _rng = kiln_testkit::rng_lock();
    let device = Default::default();
    I::seed(&device, 5);
    let (n, d_in, d_out) = (2, 4, 6);
    let phm = kiln_model::peft::PhmLinear::<I>::new(n, d_in, d_out, 1.0, false, &device);
    let rules = Tensor::<I, 3>::random([n, n, n], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let w: Vec<f32> = phm.weight(rules.clone()).into_data().to_vec().unwrap();
    let a: Vec<f32> = rules.into_data().to_vec().unwrap();
    let s: Vec<f32> = phm.s.val().into_data().to_vec().unwrap();
    let t: Vec<f32> = phm.t.val().into_data().to_vec().unwrap();
    let (p, q) = (d_in / n, d_out / n);
    // W[r·p + i, c·q + j] = Σ_k A_k[r, c] · s_k[i] · t_k[j]  (kron(A_k, s_k t_kᵀ)).
    for r in 0..n {
        for i in 0..p {
            for c in 0..n {
                for j in 0..q {
                    let want: f32 = (0..n)
                        .map(|k| a[k * n * n + r * n + c] * s[k * p + i] * t[k * q + j])
                        .sum();
                    let got = w[(r * p + i) * d_out + c * q + j];
                    assert!(
                        (got - want).abs() < 1e-5,
                        "W[{}, {}] {got} vs {want}",
                        r * p + i,
                        c * q + j
                    );
                }
            }
        }
    }
    assert!(
        Tuning::new(&[StrategyConfig::Compacter(Compacter { reduction: 4, n: 3 })])
            .unwrap()
            .insert(tiny(1), &device)
            .is_err()
    );
}
