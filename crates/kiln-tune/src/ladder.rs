//! Ladder side-tuning (LST, Sung et al. 2022): a small transformer beside the frozen backbone.
//!
//! Side layer `i` reads `μᵢ · s_{i−1} + (1 − μᵢ) · Dᵢ(hᵢ)`, where `hᵢ` is the backbone's hidden
//! state after layer `i`, `Dᵢ` a linear down-projection to the side width `d / reduction`,
//! `s_{i−1}` the previous side layer's output (`s₀ = D₀(h₀)`, the embeddings), and
//! `μᵢ = σ(αᵢ / T)` a learned gate (`αᵢ = 0`, `T = 0.1`). The last side state is projected back
//! to `d` and goes to the pooler and head.
//!
//! The backbone's parameters are frozen and its input is not differentiable, so burn's
//! autodiff records none of its operations: no activations of the backbone are kept for the
//! backward pass — the memory saving that motivates LST. Deviation from the paper: the side
//! layers are initialised randomly (LST initialises them from a structurally pruned copy of
//! the backbone).

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use kiln_attention::AttentionMask;
use kiln_model::bert::BertLayer;
use kiln_model::layers::linear;
use kiln_model::BertConfig;

/// Gate temperature `T`.
pub const GATE_TEMPERATURE: f64 = 0.1;

/// The side network.
#[derive(Module, Debug)]
pub struct LadderSide<B: Backend> {
    /// `Dᵢ`, one per backbone hidden state (embeddings + each layer), `d → d/r`.
    pub down: Vec<Linear<B>>,
    /// Side layers, one per backbone layer.
    pub layers: Vec<BertLayer<B>>,
    /// Gate logits `αᵢ`, `[num_layers]`.
    pub gates: Param<Tensor<B, 1>>,
    /// `d/r → d`.
    pub up: Linear<B>,
}

impl<B: Backend> LadderSide<B> {
    /// A side network for a backbone of `num_layers` layers of width `d`, `reduction` times
    /// narrower, with `activation` in its FFNs.
    ///
    /// # Errors
    /// A message when the side width is zero.
    pub fn new(
        d: usize,
        num_layers: usize,
        reduction: usize,
        activation: kiln_model::activation::Activation,
        device: &B::Device,
    ) -> Result<Self, String> {
        let w = d / reduction.max(1);
        if w == 0 {
            return Err(format!("reduction {reduction} leaves no side width (hidden {d})"));
        }
        // Heads of at least 8 dimensions, as many as divide the width (up to 12).
        let heads = (1..=12).rev().find(|h| w.is_multiple_of(*h) && w / h >= 8).unwrap_or(1);
        let mut side_config: BertConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 1, "hidden_size": w, "num_hidden_layers": num_layers,
            "num_attention_heads": heads, "intermediate_size": 4 * w, "max_position_embeddings": 1,
        }))
        .map_err(|e| e.to_string())?;
        side_config.hidden_act = activation;
        Ok(Self {
            down: (0..=num_layers).map(|_| linear(d, w, 0.02, device)).collect(),
            layers: (0..num_layers).map(|_| BertLayer::new(&side_config, device)).collect(),
            gates: Param::from_tensor(Tensor::zeros([num_layers], device)),
            up: linear(w, d, 0.02, device),
        })
    }

    /// Side output `[batch, seq, d]` from the backbone's `hidden_states` (embeddings first).
    pub fn forward(&self, hidden_states: &[Tensor<B, 3>], mask: &AttentionMask<B>) -> Tensor<B, 3> {
        let project = |lin: &Linear<B>, h: Tensor<B, 3>| {
            let [b, s, d] = h.dims();
            let y = lin.forward(h.reshape([b * s, d]));
            let w = y.dims()[1];
            y.reshape([b, s, w])
        };
        let mu = sigmoid(self.gates.val().div_scalar(GATE_TEMPERATURE));
        let mut side = project(&self.down[0], hidden_states[0].clone().detach());
        for (i, layer) in self.layers.iter().enumerate() {
            let m = mu.clone().slice(i..i + 1).reshape([1, 1, 1]);
            let backbone = project(&self.down[i + 1], hidden_states[i + 1].clone().detach());
            let input = side * m.clone() + backbone * m.neg().add_scalar(1.0);
            side = layer.forward(input, mask, kiln_model::Capture::none()).0;
        }
        project(&self.up, side)
    }
}
