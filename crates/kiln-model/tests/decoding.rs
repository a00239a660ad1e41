//! Incremental decoding of the GPT-2 decoder: KV cache (softmax, sliding window) and RNN mode
//! (linear attention) give the logits of the parallel causal forward pass; conversion keeps
//! every other weight; greedy generation equals re-running the whole model per token.

use std::collections::HashMap;

use burn::backend::Flex;
use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::tensor::TensorData;
use kiln_attention::AttentionVariant;
use kiln_model::{Capture, DecodeState, Gpt2Model, GptConfig, Sampling};

type B = Flex;
const VOCAB: usize = 40;

/// Multiplies every parameter by a factor, so that a random model's logits are far from
/// uniform (GPT-2's 0.02 init makes every variant look alike).
struct Scale(f32);

impl ModuleMapper<B> for Scale {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.mul_scalar(self.0), mapper)
    }
}

fn model(variant: &AttentionVariant) -> Gpt2Model<B> {
    let config: GptConfig = serde_json::from_str(
        r#"{"vocab_size": 40, "n_positions": 48, "n_embd": 32, "n_layer": 2, "n_head": 4,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}"#,
    )
    .unwrap();
    let device = Default::default();
    B::seed(&device, 7);
    let mut m = Gpt2Model::new(&config, &device).map(&mut Scale(15.0));
    m.convert_attention(variant, None, 0.0);
    m
}

fn variants() -> Vec<AttentionVariant> {
    vec![
        AttentionVariant::Softmax,
        AttentionVariant::SlidingWindow { window: 5 },
        AttentionVariant::EluLinear,
        AttentionVariant::T2r {
            features: 16,
            eps: 1e-2,
        },
        AttentionVariant::Performer { features: 32, seed: 3 },
        AttentionVariant::Hedgehog { features: 8 },
        AttentionVariant::Hybrid { window: 5, features: 8 },
    ]
}

fn ids(tokens: &[i64]) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(tokens.to_vec(), [1, tokens.len()]), &Default::default())
}

fn tokens(n: usize, salt: i64) -> Vec<i64> {
    (0..n as i64)
        .map(|i| (i * 7 + salt * 3 + i * i) % VOCAB as i64)
        .collect()
}

fn rows(t: Tensor<B, 2>) -> Vec<Vec<f32>> {
    let [n, v] = t.dims();
    let flat = t.into_data().to_vec::<f32>().unwrap();
    (0..n).map(|i| flat[i * v..(i + 1) * v].to_vec()).collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

/// Logits of the parallel forward pass, one row per position.
fn parallel_logits(m: &Gpt2Model<B>, toks: &[i64]) -> Vec<Vec<f32>> {
    let out = m.forward(ids(toks), None, Capture::none());
    rows(m.lm_logits(out.last_hidden_state).reshape([toks.len(), VOCAB]))
}

#[test]
fn prefill_then_steps_equal_the_parallel_forward_for_every_variant() {
    let _rng = kiln_testkit::rng_lock();
    let toks = tokens(40, 1);
    for variant in variants() {
        let m = model(&variant);
        let reference = parallel_logits(&m, &toks);
        let scale = reference.iter().flatten().fold(0f32, |a, x| a.max(x.abs()));
        assert!(scale > 1.0, "{variant:?}: logits too flat to test ({scale})");
        // Prompt of 9 (crosses no chunk boundary), then 31 single steps (crosses the window).
        let (prefill, mut state) = m.prefill(ids(&toks[..9])).unwrap();
        let mut got = rows(prefill.reshape([9, VOCAB]));
        for &t in &toks[9..] {
            let (logits, next) = m.step(ids(&[t]), state).unwrap();
            got.extend(rows(logits));
            state = next;
        }
        let diff = max_diff(&got, &reference);
        eprintln!("{variant:?}: logit scale {scale:.2}, decode vs parallel {diff:.2e}");
        assert!(
            diff <= 1e-5 * scale.max(1.0),
            "{variant:?}: decode vs parallel {diff} (scale {scale})"
        );
        // From an empty state, step by step from the first token.
        let mut state = DecodeState::new(m.num_layers());
        let mut got = Vec::new();
        for &t in &toks {
            let (logits, next) = m.step(ids(&[t]), state).unwrap();
            got.extend(rows(logits));
            state = next;
        }
        let diff = max_diff(&got, &reference);
        assert!(
            diff <= 1e-5 * scale.max(1.0),
            "{variant:?}: steps from empty vs parallel {diff}"
        );
    }
}

#[test]
fn linear_state_is_constant_and_kv_cache_grows() {
    let _rng = kiln_testkit::rng_lock();
    for variant in variants() {
        let m = model(&variant);
        let mut state = DecodeState::new(m.num_layers());
        let mut sizes = Vec::new();
        for t in tokens(20, 2) {
            state = m.step(ids(&[t]), state).unwrap().1;
            sizes.push(state.state_bytes());
        }
        // Two layers, 4 heads, d_head 8, f32.
        let per_position = 2 * 2 * 32 * 4;
        match variant {
            AttentionVariant::Softmax => assert_eq!(sizes[19], 20 * per_position),
            AttentionVariant::Hybrid { window, features } => {
                // Window keys and values plus S [h, 2f, d] and z [h, 2f, 1] per layer.
                let linear = 2 * 4 * (2 * features) * (8 + 1) * 4;
                assert_eq!(sizes[19], window * per_position + linear);
                assert_eq!(sizes[19], sizes[10]);
            }
            AttentionVariant::SlidingWindow { window } => {
                assert_eq!(sizes[19], window * per_position);
                assert_eq!(sizes[2], 3 * per_position);
            }
            _ => assert!(sizes.iter().all(|&s| s == sizes[0]), "{variant:?}: {sizes:?}"),
        }
    }
}

#[test]
fn converted_decoder_never_looks_ahead() {
    let _rng = kiln_testkit::rng_lock();
    let toks = tokens(30, 3);
    for variant in variants() {
        let m = model(&variant);
        let base = parallel_logits(&m, &toks);
        let mut changed = toks.clone();
        changed[17] = (changed[17] + 11) % VOCAB as i64;
        let other = parallel_logits(&m, &changed);
        assert_eq!(
            max_diff(&base[..17], &other[..17]),
            0.0,
            "{variant:?}: a past logit moved"
        );
        assert!(
            max_diff(&base[17..], &other[17..]) > 1e-3,
            "{variant:?}: the change had no effect"
        );
    }
}

/// Every float parameter by id.
struct Collect(HashMap<ParamId, Vec<f32>>);

impl ModuleVisitor<B> for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0
            .insert(param.id, param.val().into_data().to_vec::<f32>().unwrap());
    }
}

#[test]
fn conversion_keeps_every_other_weight_bit_identical() {
    let _rng = kiln_testkit::rng_lock();
    let mut m = model(&AttentionVariant::Softmax);
    let mut before = Collect(HashMap::new());
    m.visit(&mut before);
    m.convert_attention(&AttentionVariant::T2r { features: 8, eps: 1e-2 }, Some(&[1]), 0.0);
    let mut after = Collect(HashMap::new());
    m.visit(&mut after);
    for (id, values) in &before.0 {
        assert_eq!(after.0.get(id), Some(values), "a weight changed or vanished");
    }
    // Only layer 1's feature map is new: W [4, 8, 8] and b [4, 8].
    let new: usize = after
        .0
        .iter()
        .filter(|(id, _)| !before.0.contains_key(id))
        .map(|(_, v)| v.len())
        .sum();
    assert_eq!(new, 4 * 8 * 8 + 4 * 8);
}

#[test]
fn greedy_generation_equals_rerunning_the_model() {
    let _rng = kiln_testkit::rng_lock();
    for variant in [
        AttentionVariant::Softmax,
        AttentionVariant::T2r {
            features: 16,
            eps: 1e-2,
        },
    ] {
        let m = model(&variant);
        let prompt: Vec<u32> = [5u32, 9, 2, 17].to_vec();
        let generated = m.generate(&prompt, 12, Sampling::Greedy, &Default::default()).unwrap();
        let mut seq: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
        for _ in 0..12 {
            let last = parallel_logits(&m, &seq).pop().unwrap();
            let best = (0..VOCAB).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap();
            seq.push(best as i64);
        }
        let naive: Vec<u32> = seq[4..].iter().map(|&t| t as u32).collect();
        assert_eq!(generated, naive, "{variant:?}");
    }
}

#[test]
fn sampling_is_seeded_and_positions_are_checked() {
    let _rng = kiln_testkit::rng_lock();
    let m = model(&AttentionVariant::EluLinear);
    let device = Default::default();
    let sample = |seed| {
        m.generate(
            &[1, 2, 3],
            20,
            Sampling::Temperature { temperature: 1.0, seed },
            &device,
        )
        .unwrap()
    };
    assert_eq!(sample(4), sample(4));
    assert_ne!(sample(4), sample(5));
    let err = m.generate(&[1, 2, 3], 46, Sampling::Greedy, &device).unwrap_err();
    assert!(err.to_string().contains("48 position embeddings"), "{err}");
    assert!(m.generate(&[], 3, Sampling::Greedy, &device).is_err());
}

#[test]
fn saved_gpt2_weights_load_back_with_hf_names() {
    let _rng = kiln_testkit::rng_lock();
    let m = model(&AttentionVariant::Softmax);
    let bytes = kiln_model::gpt2_weights_bytes(&m).unwrap();
    let names: Vec<String> = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_string)
        .collect();
    assert!(
        names.contains(&"transformer.h.1.attn.c_attn.weight".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"transformer.ln_f.bias".to_string()), "{names:?}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let config: GptConfig =
        serde_json::from_str(r#"{"vocab_size": 40, "n_positions": 48, "n_embd": 32, "n_layer": 2, "n_head": 4}"#)
            .unwrap();
    let mut loaded = Gpt2Model::<B>::new(&config, &Default::default());
    kiln_model::load_gpt2_weights(&mut loaded, &path).unwrap();
    let toks = tokens(12, 4);
    assert_eq!(parallel_logits(&loaded, &toks), parallel_logits(&m, &toks));
}
