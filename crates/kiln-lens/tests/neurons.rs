//! Knowledge-neuron attribution on the committed tiny BertForMaskedLM fixture (random
//! weights, logits checked against PyTorch in kiln-model's tests): IG completeness per layer,
//! one neuron's attribution against a central-difference integral computed through a
//! separately written forward, and the selection rule on hand-made scores.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::TensorData;
use kiln_attention::AttentionMask;
use kiln_lens::neurons::{knowledge_neurons, neuron_attribution, neuron_effect, ClozeBatch};
use kiln_model::{BertMlmHead, BertModel, Capture, Intervention};

type A = Autodiff<Flex>;

fn batch(device: &burn::tensor::Device<A>) -> ClozeBatch<A> {
    // [CLS]=2, [MASK]=4 at position 2 / 3, [SEP]=3, padding 0 in the first row.
    let ids = vec![2i64, 10, 4, 11, 3, 0, 2, 20, 21, 4, 22, 3];
    let mask = vec![1i64, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1];
    ClozeBatch {
        input_ids: Tensor::from_data(TensorData::new(ids, [2, 6]), device),
        attention_mask: Tensor::from_data(TensorData::new(mask, [2, 6]), device),
        mask_positions: vec![2, 3],
        targets: vec![17, 40],
    }
}

#[test]
fn attributions_are_complete_and_match_finite_differences() {
    let device = Default::default();
    let (model, config) = BertModel::<A>::from_pretrained(common::mlm_fixture(), false, &device).unwrap();
    let head =
        BertMlmHead::<A>::from_checkpoint(&config, common::mlm_fixture().join("model.safetensors"), &device).unwrap();
    let batch = batch(&device);
    let steps = 64;
    let mut per_prompt = vec![Vec::new(), Vec::new()];
    for layer in 0..2 {
        let attr = neuron_attribution(&model, &head, &batch, layer, steps, 24);
        for (b, prompt) in per_prompt.iter_mut().enumerate() {
            let sum: f32 = attr.scores[b].iter().sum();
            let gap = attr.p_full[b] - attr.p_zeroed[b];
            println!(
                "layer {layer} prompt {b}: Σ attr {sum:.6e}, P − P(0) {gap:.6e}, P {:.4}",
                attr.p_full[b]
            );
            assert!(gap.abs() > 1e-5, "degenerate fixture: the layer does not move P");
            assert!(
                (sum - gap).abs() <= 0.01 * gap.abs() + 1e-7,
                "layer {layer} prompt {b}: {sum} vs {gap}"
            );
            prompt.push(attr.scores[b].clone());
        }
        // Zeroing every neuron of the layer through `neuron_effect` reproduces the baseline.
        let all: Vec<(usize, usize)> = (0..config.intermediate_size).map(|i| (layer, i)).collect();
        let zeroed = neuron_effect(&model, &head, &batch, &all, 0.0);
        for (z, p0) in zeroed.iter().zip(&attr.p_zeroed) {
            assert!((z - p0).abs() < 1e-6);
        }
    }
    // One neuron, 8 midpoints, each derivative by central differences on a forward written
    // here from the layer API (not the attribution code).
    let (layer, neuron, b, m) = (1usize, 5usize, 1usize, 8usize);
    let coarse = neuron_attribution(&model, &head, &batch, layer, m, m);
    let ids = batch.input_ids.clone().slice([b..b + 1, 0..6]);
    let mask = batch.attention_mask.clone().slice([b..b + 1, 0..6]);
    let p = |alpha: f32, bump: f32| -> f64 {
        let mut scale = vec![1f32; 6 * config.intermediate_size];
        let pos = batch.mask_positions[b];
        for i in 0..config.intermediate_size {
            scale[pos * config.intermediate_size + i] = alpha + if i == neuron { bump } else { 0.0 };
        }
        let iv = Intervention {
            value_scale: None,
            ffn_scale: Some(Tensor::from_data(
                TensorData::new(scale, [1, 6, config.intermediate_size]),
                &device,
            )),
        };
        let am = AttentionMask::from_attention_mask(mask.clone());
        let mut h = model.embed(ids.clone(), None);
        for (l, block) in model.encoder.layer.iter().enumerate() {
            let none = Intervention::none();
            h = block
                .forward_intervened(h, &am, Capture::none(), None, if l == layer { &iv } else { &none })
                .0;
        }
        let logits: Vec<f32> = head.forward(&model, h).into_data().to_vec().unwrap();
        let row = &logits[pos * 64..(pos + 1) * 64];
        let max = row.iter().copied().fold(f32::MIN, f32::max) as f64;
        let z: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        (row[batch.targets[b]] as f64 - max).exp() / z
    };
    let h = 1e-2f32;
    let fd: f64 = (0..m)
        .map(|k| {
            let alpha = (k as f32 + 0.5) / m as f32;
            (p(alpha, h) - p(alpha, -h)) / (2.0 * h as f64)
        })
        .sum::<f64>()
        / m as f64;
    let got = coarse.scores[b][neuron] as f64;
    println!("neuron ({layer},{neuron}): IG {got:.6e}, finite differences {fd:.6e}");
    assert!((got - fd).abs() < 1e-3 * fd.abs().max(1e-4) + 1e-7, "{got} vs {fd}");

    let kn = knowledge_neurons(&per_prompt, 0.2, 0.5);
    assert!(!kn.is_empty(), "at share 0.5 the per-prompt top neurons must survive");
}

#[test]
fn selection_keeps_neurons_above_the_threshold_in_enough_prompts() {
    // Prompt maxima 10 and 4: thresholds 2 and 0.8.
    let p1 = vec![vec![10.0, 1.0, 3.0], vec![0.5, 2.5, -9.0]];
    let p2 = vec![vec![4.0, 0.9, 0.1], vec![0.0, 0.7, 1.0]];
    // Kept by p1: (0,0) (0,2) (1,1); by p2: (0,0) (0,1) (1,2).
    assert_eq!(knowledge_neurons(&[p1.clone(), p2.clone()], 0.2, 1.0), vec![(0, 0)]);
    assert_eq!(
        knowledge_neurons(&[p1, p2], 0.2, 0.5),
        vec![(0, 0), (0, 1), (0, 2), (1, 1), (1, 2)]
    );
}
