//! Knowledge neurons (Dai et al. 2022, "Knowledge Neurons in Pretrained Transformers").
//!
//! For a cloze prompt with a `[MASK]` at position `m` and a target token `y*`, the attribution
//! of FFN neuron `i` of layer `l` is integrated gradients over that layer's intermediate
//! activations at `m`, scaled together from 0 to their value `w̄`:
//! `Attr_i = w̄_i · ∫₀¹ ∂P(y* | α·w̄)/∂w_i dα`, with the midpoint rule over `steps` points (as the
//! paper's code, which scales the whole activation vector of the layer). Completeness holds per
//! layer: `Σ_i Attr_i ≈ P(y* | w̄) − P(y* | 0)`, reported as [`NeuronAttribution::p_zeroed`].
//!
//! Implementation: the activations are never read out. The layer runs with a multiplier `s`
//! on its activations ([`kiln_model::Intervention::ffn_scale`]) equal to `α` at the mask
//! position and 1 elsewhere; since `∂P/∂s_i = w̄_i ∂P/∂w_i` at `w = α w̄`, the attribution is the
//! mean over the `α` points of `∂P/∂s_i`. All `α` points of all prompts run as one batch
//! (`steps_per_batch` at a time), and layers below `l` run once.
//!
//! [`knowledge_neurons`] applies the paper's selection (per prompt, attribution above
//! `t · max`; across prompts, neurons found in at least a share `p` of them) and
//! [`neuron_effect`] measures the change of `P(y*)` when the selected neurons are suppressed
//! (×0) or amplified (×2).
//!
//! Needs a checkpoint with an MLM head ([`kiln_model::BertMlmHead`]); all-MiniLM-L6-v2 has none.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorData;
use kiln_attention::AttentionMask;
use kiln_model::{BertMlmHead, BertModel, Capture, Intervention};

/// Cloze prompts: one `[MASK]` position and one target token id per sequence.
#[derive(Debug, Clone)]
pub struct ClozeBatch<B: Backend> {
    /// `[N, S]` token ids.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[N, S]`, 1 at real tokens.
    pub attention_mask: Tensor<B, 2, Int>,
    /// The `[MASK]` position of each sequence.
    pub mask_positions: Vec<usize>,
    /// The target token of each sequence.
    pub targets: Vec<usize>,
}

/// Attributions of one layer's FFN neurons.
#[derive(Debug, Clone)]
pub struct NeuronAttribution {
    /// `[N][intermediate]` integrated-gradients attribution.
    pub scores: Vec<Vec<f32>>,
    /// `P(y*)` of each prompt with the layer intact.
    pub p_full: Vec<f32>,
    /// `P(y*)` with the layer's activations at the mask position zeroed (the IG baseline):
    /// `Σ scores[n] ≈ p_full[n] − p_zeroed[n]`.
    pub p_zeroed: Vec<f32>,
}

/// Runs layers `from..` on `x` — layer `from + k` with `interventions[k]`, none past the end
/// of the slice — then the MLM head, and returns `P(target)` at each sequence's mask position,
/// `[batch]`.
#[allow(clippy::too_many_arguments)] // private helper; the arguments are one call site's state
fn target_probability<B: Backend>(
    model: &BertModel<B>,
    head: &BertMlmHead<B>,
    x: Tensor<B, 3>,
    attention_mask: Tensor<B, 2, Int>,
    from: usize,
    interventions: &[Intervention<B>],
    mask_positions: &[usize],
    targets: &[usize],
) -> Tensor<B, 1> {
    let [batch, s, _] = x.dims();
    let device = x.device();
    let mask = AttentionMask::from_attention_mask(attention_mask);
    let rules = model.encoder.shared.phm_rules.as_ref().map(|p| p.val());
    let none = Intervention::none();
    let mut h = x;
    for (k, layer) in model.encoder.layer.iter().skip(from).enumerate() {
        let iv = interventions.get(k).unwrap_or(&none);
        h = layer.forward_intervened(h, &mask, Capture::none(), rules.clone(), iv).0;
    }
    let logits = head.forward(model, h);
    let vocab = logits.dims()[2];
    let probs = burn::tensor::activation::softmax(logits, 2);
    // Select [b, mask_b, target_b] with one flat gather.
    let flat: Vec<i64> = (0..batch)
        .map(|b| ((b * s + mask_positions[b]) * vocab + targets[b]) as i64)
        .collect();
    let index = Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [batch]), &device);
    probs.reshape([batch * s * vocab]).select(0, index)
}

/// One-hot `[batch, seq, 1]` of the mask positions.
fn position_one_hot<B: Backend>(batch: usize, s: usize, positions: &[usize], device: &B::Device) -> Tensor<B, 3> {
    let mut v = vec![0f32; batch * s];
    for (b, &m) in positions.iter().enumerate() {
        v[b * s + m] = 1.0;
    }
    Tensor::from_data(TensorData::new(v, [batch, s, 1]), device)
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32 data")
}

/// Integrated-gradients attribution of layer `layer`'s FFN neurons for each prompt.
///
/// # Panics
/// If `mask_positions`/`targets` do not have one entry per sequence, or `layer` is out of
/// range.
pub fn neuron_attribution<B: AutodiffBackend>(
    model: &BertModel<B>,
    head: &BertMlmHead<B>,
    batch: &ClozeBatch<B>,
    layer: usize,
    steps: usize,
    steps_per_batch: usize,
) -> NeuronAttribution {
    let [n, s] = batch.input_ids.dims();
    assert!(
        batch.mask_positions.len() == n && batch.targets.len() == n,
        "one mask position and target per sequence"
    );
    assert!(layer < model.num_layers(), "layer {layer} out of range");
    let device = batch.input_ids.device();
    let intermediate = model.encoder.layer[layer].intermediate.dense.weight.dims()[1];
    let capture = Capture {
        hidden_states: true,
        ..Capture::none()
    };
    let x = model
        .forward(
            batch.input_ids.clone(),
            None,
            Some(batch.attention_mask.clone()),
            capture,
        )
        .hidden_states[layer]
        .clone()
        .detach();
    let d = x.dims()[2];
    let steps = steps.max(1);
    let chunk = steps_per_batch.clamp(1, steps);
    let mut scores = vec![vec![0f32; intermediate]; n];
    let mut k0 = 0;
    while k0 < steps {
        let c = chunk.min(steps - k0);
        // Batch row r = k·n + b: step k0 + k of prompt b.
        let rows = c * n;
        let alphas: Vec<f32> = (0..rows).map(|r| ((k0 + r / n) as f32 + 0.5) / steps as f32).collect();
        let leaf = Tensor::<B, 1>::from_data(TensorData::new(alphas, [rows]), &device)
            .reshape([rows, 1, 1])
            .expand([rows, 1, intermediate])
            .detach()
            .require_grad();
        let positions: Vec<usize> = (0..rows).map(|r| batch.mask_positions[r % n]).collect();
        let targets: Vec<usize> = (0..rows).map(|r| batch.targets[r % n]).collect();
        let at = position_one_hot::<B>(rows, s, &positions, &device);
        let scale = at.clone().neg().add_scalar(1.0).expand([rows, s, intermediate]) + at * leaf.clone();
        let xs = x
            .clone()
            .unsqueeze_dim::<4>(0)
            .expand([c, n, s, d])
            .reshape([rows, s, d]);
        let ms = batch
            .attention_mask
            .clone()
            .unsqueeze_dim::<3>(0)
            .expand([c, n, s])
            .reshape([rows, s]);
        let iv = Intervention {
            value_scale: None,
            ffn_scale: Some(scale),
        };
        let p = target_probability(model, head, xs, ms, layer, &[iv], &positions, &targets);
        let grads = p.sum().backward();
        let g = to_vec(leaf.grad(&grads).expect("the scale is a leaf"));
        for r in 0..rows {
            let row = &mut scores[r % n];
            for (acc, v) in row.iter_mut().zip(&g[r * intermediate..(r + 1) * intermediate]) {
                *acc += v / steps as f32;
            }
        }
        k0 += c;
    }
    let probability = |factor: f32| {
        let at = position_one_hot::<B>(n, s, &batch.mask_positions, &device);
        let scale = at.mul_scalar(factor - 1.0).add_scalar(1.0).expand([n, s, intermediate]);
        let iv = Intervention {
            value_scale: None,
            ffn_scale: Some(scale),
        };
        to_vec(target_probability(
            model,
            head,
            x.clone(),
            batch.attention_mask.clone(),
            layer,
            &[iv],
            &batch.mask_positions,
            &batch.targets,
        ))
    };
    NeuronAttribution {
        scores,
        p_full: probability(1.0),
        p_zeroed: probability(0.0),
    }
}

/// A selected neuron: `(layer, index)`.
pub type Neuron = (usize, usize);

/// The paper's selection. `per_prompt[p][l][i]` is prompt `p`'s attribution of neuron `i` of
/// layer `l` (from [`neuron_attribution`] per layer). A prompt keeps the neurons above
/// `threshold · max` of its attributions over all layers; the result is the neurons kept by at
/// least `share` of the prompts, sorted.
pub fn knowledge_neurons(per_prompt: &[Vec<Vec<f32>>], threshold: f32, share: f32) -> Vec<Neuron> {
    let mut counts = std::collections::BTreeMap::<Neuron, usize>::new();
    for prompt in per_prompt {
        let max = prompt.iter().flatten().copied().fold(f32::MIN, f32::max);
        if max <= 0.0 {
            continue;
        }
        for (l, layer) in prompt.iter().enumerate() {
            for (i, &a) in layer.iter().enumerate() {
                if a > threshold * max {
                    *counts.entry((l, i)).or_default() += 1;
                }
            }
        }
    }
    let need = (share * per_prompt.len() as f32).ceil().max(1.0) as usize;
    counts.into_iter().filter(|&(_, c)| c >= need).map(|(k, _)| k).collect()
}

/// `P(y*)` of each prompt with `neurons` multiplied by `factor` at the mask position
/// (0 suppresses, 2 amplifies); compare with `factor = 1`.
pub fn neuron_effect<B: Backend>(
    model: &BertModel<B>,
    head: &BertMlmHead<B>,
    batch: &ClozeBatch<B>,
    neurons: &[Neuron],
    factor: f32,
) -> Vec<f32> {
    let [n, s] = batch.input_ids.dims();
    let device = batch.input_ids.device();
    let interventions: Vec<Intervention<B>> = model
        .encoder
        .layer
        .iter()
        .enumerate()
        .map(|(l, layer)| {
            let intermediate = layer.intermediate.dense.weight.dims()[1];
            let mut scale = vec![1f32; n * s * intermediate];
            for &(_, i) in neurons.iter().filter(|(nl, _)| *nl == l) {
                for (b, &m) in batch.mask_positions.iter().enumerate() {
                    scale[(b * s + m) * intermediate + i] = factor;
                }
            }
            Intervention {
                value_scale: None,
                ffn_scale: Some(Tensor::from_data(TensorData::new(scale, [n, s, intermediate]), &device)),
            }
        })
        .collect();
    to_vec(target_probability(
        model,
        head,
        model.embed(batch.input_ids.clone(), None),
        batch.attention_mask.clone(),
        0,
        &interventions,
        &batch.mask_positions,
        &batch.targets,
    ))
}
