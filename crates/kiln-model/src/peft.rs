//! Modules that parameter-efficient tuning strategies insert into a pretrained encoder:
//! low-rank deltas on linear layers (LoRA, Hu et al. 2021), bottleneck adapters (Houlsby
//! et al. 2019; Pfeiffer et al. 2021), (IA)³ scales (Liu et al. 2022) and learned weight
//! masks (Zhao et al. 2020).
//!
//! They live in one optional [`LayerInserts`] per encoder layer (`encoder.layer.{i}.inserts`),
//! beside — not inside — the Hugging Face-shaped blocks, so pretrained checkpoints load with
//! no inserts and every original parameter keeps its path. *Which* inserts exist and what
//! trains is decided by `kiln-tune`; this module only defines the computation.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use burn::tensor::Distribution;

use crate::activation::Activation;
use crate::layers::{linear, linear_2d};
use crate::roles::{Insert, LinearSlot, Part, Roles, Site, TensorKind};

/// `Δ(x) = scale · Dropout(x) A B` with `A: [d_in, r]`, `B: [r, d_out]` (burn layout; PEFT's
/// `lora_A.weight` is `Aᵀ`, `lora_B.weight` is `Bᵀ`). `B` starts at zero, so the model is
/// unchanged at initialisation.
#[derive(Module, Debug)]
pub struct LoraDelta<B: Backend> {
    /// Down-projection `[d_in, r]`.
    pub a: Param<Tensor<B, 2>>,
    /// Up-projection `[r, d_out]`.
    pub b: Param<Tensor<B, 2>>,
    /// Dropout on the LoRA path's input.
    pub dropout: Dropout,
    /// `alpha / r`.
    pub scale: f64,
    /// When merged, the delta is already inside the base weight and [`LoraDelta::forward`]
    /// adds nothing.
    pub merged: bool,
}

impl<B: Backend> LoraDelta<B> {
    /// A new delta for a `d_in → d_out` linear: `A` Kaiming-uniform as PEFT (`a = √5`, i.e.
    /// `U(±1/√d_in)`), `B = 0`.
    pub fn new(d_in: usize, d_out: usize, r: usize, alpha: f64, dropout: f64, device: &B::Device) -> Self {
        let bound = 1.0 / (d_in as f64).sqrt();
        Self {
            a: Param::from_tensor(Tensor::random([d_in, r], Distribution::Uniform(-bound, bound), device)),
            b: Param::from_tensor(Tensor::zeros([r, d_out], device)),
            dropout: DropoutConfig::new(dropout).init(),
            scale: alpha / r as f64,
            merged: false,
        }
    }

    /// `scale · A B`, `[d_in, d_out]` (the change to the base weight).
    pub fn weight_delta(&self) -> Tensor<B, 2> {
        self.a.val().matmul(self.b.val()).mul_scalar(self.scale)
    }

    /// The delta's contribution for `x: [n, d_in]` (zero-cost `None` when merged).
    pub fn forward(&self, x: Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        (!self.merged).then(|| {
            self.dropout
                .forward(x)
                .matmul(self.a.val())
                .matmul(self.b.val())
                .mul_scalar(self.scale)
        })
    }
}

/// Adds `lora` to `base`'s weight (`merge = true`) or takes it out again (`false`); no-op when
/// the delta is already in that state.
pub fn set_merged<B: Backend>(base: &mut Linear<B>, lora: &mut LoraDelta<B>, merge: bool) {
    if lora.merged == merge {
        return;
    }
    let delta = lora.weight_delta();
    let weight = base.weight.val();
    let weight = if merge { weight + delta } else { weight - delta };
    base.weight = Param::initialized(
        base.weight.id,
        weight.detach().set_require_grad(base.weight.is_require_grad()),
    );
    lora.merged = merge;
}

/// `h + W_up act(W_down h)`: a bottleneck with an inner skip connection. `W_up` starts at
/// zero (near-identity initialisation), `W_down` at `N(0, 0.02²)` like the rest of BERT.
#[derive(Module, Debug)]
pub struct Bottleneck<B: Backend> {
    /// `d → d / reduction`.
    pub down: Linear<B>,
    /// `d / reduction → d`.
    pub up: Linear<B>,
    /// Non-linearity between them.
    #[module(skip)]
    pub activation: Activation,
}

impl<B: Backend> Bottleneck<B> {
    /// A bottleneck of width `d / reduction` (at least 1).
    pub fn new(d: usize, reduction: usize, activation: Activation, device: &B::Device) -> Self {
        let inner = (d / reduction.max(1)).max(1);
        let up = Linear {
            weight: Param::from_tensor(Tensor::zeros([inner, d], device)),
            bias: Some(Param::from_tensor(Tensor::zeros([d], device))),
        };
        Self {
            down: linear(d, inner, 0.02, device),
            up,
            activation,
        }
    }

    /// `[n, d]` → `[n, d]`.
    pub fn forward(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        h.clone() + self.up.forward(self.activation.forward(self.down.forward(h)))
    }
}

/// A parameterised-hypercomplex-multiplication (PHM) linear with rank-one factors, as in
/// Compacter (Karimi Mahabadi et al. 2021): `W = Σᵢ Aᵢ ⊗ (sᵢ tᵢᵀ)`, `Aᵢ ∈ ℝⁿˣⁿ` shared by
/// every Compacter layer of the model ([`SharedInserts::phm_rules`]), `sᵢ ∈ ℝ^{d_in/n}`,
/// `tᵢ ∈ ℝ^{d_out/n}` per layer.
#[derive(Module, Debug)]
pub struct PhmLinear<B: Backend> {
    /// `s`, `[n, d_in/n, 1]`.
    pub s: Param<Tensor<B, 3>>,
    /// `t`, `[n, 1, d_out/n]`.
    pub t: Param<Tensor<B, 3>>,
    /// Bias `[d_out]`.
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> PhmLinear<B> {
    /// `s ~ N(0, std²)`; `t ~ N(0, std²)`, or zero with `zero_t` (a zero weight at start).
    pub fn new(n: usize, d_in: usize, d_out: usize, std: f64, zero_t: bool, device: &B::Device) -> Self {
        let t = if zero_t {
            Tensor::zeros([n, 1, d_out / n], device)
        } else {
            Tensor::random([n, 1, d_out / n], Distribution::Normal(0.0, std), device)
        };
        Self {
            s: Param::from_tensor(Tensor::random([n, d_in / n, 1], Distribution::Normal(0.0, std), device)),
            t: Param::from_tensor(t),
            bias: Param::from_tensor(Tensor::zeros([d_out], device)),
        }
    }

    /// The full weight `[d_in, d_out]` = `Σᵢ Aᵢ ⊗ (sᵢ tᵢᵀ)` for rules `A: [n, n, n]`.
    pub fn weight(&self, rules: Tensor<B, 3>) -> Tensor<B, 2> {
        let [n, a, _] = self.s.dims();
        let b = self.t.dims()[2];
        let low_rank = self.s.val().matmul(self.t.val()); // [n, a, b]
        let kron = rules.reshape([n, n, 1, n, 1]) * low_rank.reshape([n, 1, a, 1, b]);
        kron.sum_dim(0).reshape([n * a, n * b])
    }

    /// `x W + bias` for `x: [N, d_in]`.
    pub fn forward(&self, x: Tensor<B, 2>, rules: Tensor<B, 3>) -> Tensor<B, 2> {
        x.matmul(self.weight(rules)) + self.bias.val().unsqueeze()
    }
}

/// A Compacter adapter: a bottleneck whose projections are [`PhmLinear`]s, with an inner skip
/// connection; the up-projection starts at zero.
#[derive(Module, Debug)]
pub struct CompacterAdapter<B: Backend> {
    /// `d → d / reduction`.
    pub down: PhmLinear<B>,
    /// `d / reduction → d`.
    pub up: PhmLinear<B>,
    /// Non-linearity.
    #[module(skip)]
    pub activation: Activation,
}

impl<B: Backend> CompacterAdapter<B> {
    /// `n` must divide `d` and `d / reduction`.
    pub fn new(d: usize, reduction: usize, n: usize, activation: Activation, device: &B::Device) -> Self {
        let inner = d / reduction.max(1);
        Self {
            down: PhmLinear::new(n, d, inner, 0.02, false, device),
            up: PhmLinear::new(n, inner, d, 0.02, true, device),
            activation,
        }
    }

    /// `[N, d]` → `[N, d]`.
    pub fn forward(&self, h: Tensor<B, 2>, rules: Tensor<B, 3>) -> Tensor<B, 2> {
        let inner = self.activation.forward(self.down.forward(h.clone(), rules.clone()));
        h + self.up.forward(inner, rules)
    }
}

/// Parameters shared by the inserts of every layer (`encoder.shared`).
#[derive(Module, Debug)]
pub struct SharedInserts<B: Backend> {
    /// Compacter's PHM rule matrices `A: [n, n, n]`.
    pub phm_rules: Option<Param<Tensor<B, 3>>>,
}

/// LoRA deltas of one layer's linears (any subset).
#[derive(Module, Debug)]
pub struct LayerLora<B: Backend> {
    /// On `attention.self.query`.
    pub query: Option<LoraDelta<B>>,
    /// On `attention.self.key`.
    pub key: Option<LoraDelta<B>>,
    /// On `attention.self.value`.
    pub value: Option<LoraDelta<B>>,
    /// On `attention.output.dense`.
    pub attention_output: Option<LoraDelta<B>>,
    /// On `intermediate.dense`.
    pub intermediate: Option<LoraDelta<B>>,
    /// On `output.dense`.
    pub output: Option<LoraDelta<B>>,
}

/// (IA)³ (Liu et al. 2022): learned element-wise rescaling of keys, values and the FFN's
/// inner activation, initialised to one.
#[derive(Module, Debug)]
pub struct LayerIa3<B: Backend> {
    /// `l_k`, `[hidden]`.
    pub key: Param<Tensor<B, 1>>,
    /// `l_v`, `[hidden]`.
    pub value: Param<Tensor<B, 1>>,
    /// `l_ff`, `[intermediate]`.
    pub ffn: Param<Tensor<B, 1>>,
}

impl<B: Backend> LayerIa3<B> {
    /// All scales one (the model is unchanged).
    pub fn new(hidden: usize, intermediate: usize, device: &B::Device) -> Self {
        Self {
            key: Param::from_tensor(Tensor::ones([hidden], device)),
            value: Param::from_tensor(Tensor::ones([hidden], device)),
            ffn: Param::from_tensor(Tensor::ones([intermediate], device)),
        }
    }
}

/// Learned binary masks over pretrained weights (Zhao et al. 2020): a real score per weight,
/// mask `= 1[score > threshold]`, gradients reach the scores by the straight-through estimator
/// (`∂L/∂s = ∂L/∂(W ⊙ m) ⊙ W`). Scores start at `init` (above the threshold: every weight kept).
#[derive(Module, Debug)]
pub struct WeightMask<B: Backend> {
    /// Scores, the weight's shape `[d_in, d_out]`.
    pub scores: Param<Tensor<B, 2>>,
    /// Threshold.
    pub threshold: f64,
}

impl<B: Backend> WeightMask<B> {
    /// Scores `init` everywhere for a `d_in × d_out` weight.
    pub fn new(d_in: usize, d_out: usize, init: f64, threshold: f64, device: &B::Device) -> Self {
        Self {
            scores: Param::from_tensor(Tensor::full([d_in, d_out], init, device)),
            threshold,
        }
    }

    /// The binary mask with a straight-through gradient to the scores.
    pub fn mask(&self) -> Tensor<B, 2> {
        let s = self.scores.val();
        let hard = s.clone().greater_elem(self.threshold).float().detach();
        // `s − s` is exactly zero, so the forward value is exactly the hard mask.
        hard + (s.clone() - s.detach())
    }

    /// Fraction of weights kept.
    pub fn density(&self) -> f64 {
        let s = self.scores.val();
        let n = s.shape().num_elements() as f64;
        s.greater_elem(self.threshold).float().sum().into_scalar().elem::<f64>() / n
    }
}

/// Learned masks of one layer's linears (any subset), named as [`LayerLora`]'s fields.
#[derive(Module, Debug)]
pub struct LayerMasks<B: Backend> {
    /// On `attention.self.query`.
    pub query: Option<WeightMask<B>>,
    /// On `attention.self.key`.
    pub key: Option<WeightMask<B>>,
    /// On `attention.self.value`.
    pub value: Option<WeightMask<B>>,
    /// On `attention.output.dense`.
    pub attention_output: Option<WeightMask<B>>,
    /// On `intermediate.dense`.
    pub intermediate: Option<WeightMask<B>>,
    /// On `output.dense`.
    pub output: Option<WeightMask<B>>,
}

/// Everything inserted into one encoder layer.
#[derive(Module, Debug)]
pub struct LayerInserts<B: Backend> {
    /// LoRA deltas.
    pub lora: Option<LayerLora<B>>,
    /// (IA)³ scales.
    pub ia3: Option<LayerIa3<B>>,
    /// Learned weight masks.
    pub masks: Option<LayerMasks<B>>,
    /// Adapter after the attention output projection, before its residual + LayerNorm
    /// (Houlsby).
    pub attention_adapter: Option<Bottleneck<B>>,
    /// Adapter after the FFN output projection, before its residual + LayerNorm (Houlsby and
    /// Pfeiffer).
    pub ffn_adapter: Option<Bottleneck<B>>,
    /// Compacter adapter after the attention output projection.
    pub attention_compacter: Option<CompacterAdapter<B>>,
    /// Compacter adapter after the FFN output projection.
    pub ffn_compacter: Option<CompacterAdapter<B>>,
    /// Per-head gates `ξ_h` `[heads]` multiplying each head's context (Michel et al. 2019):
    /// all ones leaves the model unchanged, a zero removes the head; `∂L/∂ξ_h` is the head's
    /// importance.
    pub head_gate: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> LayerInserts<B> {
    /// Nothing inserted.
    pub fn empty() -> Self {
        Self {
            lora: None,
            ia3: None,
            masks: None,
            attention_adapter: None,
            ffn_adapter: None,
            attention_compacter: None,
            ffn_compacter: None,
            head_gate: None,
        }
    }

    /// Sets the dropout of what is inserted here (the LoRA deltas' input dropout; nothing else
    /// inserted has one), as the hosts' `set_dropout` does for their own.
    pub fn set_dropout(&mut self, p: f64) {
        if let Some(lora) = &mut self.lora {
            for slot in LinearSlot::ALL {
                if let Some(delta) = lora.get_mut(slot) {
                    delta.dropout = DropoutConfig::new(p).init();
                }
            }
        }
    }

    /// Whether anything is inserted on the linear in `slot` (a LoRA delta, a mask or, on the
    /// key and value, an (IA)³ scale): a host with a fused projection splits it only then.
    pub fn touches(&self, slot: LinearSlot) -> bool {
        self.lora.as_ref().is_some_and(|l| l.get(slot).is_some())
            || self.masks.as_ref().is_some_and(|m| m.get(slot).is_some())
            || (self.ia3.is_some() && matches!(slot, LinearSlot::Key | LinearSlot::Value))
    }

    /// The linear in `slot` on `x: [batch, seq, d_in]` with what this layer inserts there:
    /// its weight mask, its LoRA delta (unless merged) and, on the key and value, the (IA)³
    /// scale. The host calls this for each of its linears and so names no strategy.
    pub fn project(&self, slot: LinearSlot, linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let weights = LinearWeights {
            weight: linear.weight.val(),
            bias: linear.bias.as_ref().map(|b| b.val()),
        };
        self.project_weights(slot, Some(linear), weights, x)
    }

    /// [`LayerInserts::project`] for a linear given as tensors (a slice of a fused
    /// projection, as GPT-2's `c_attn`).
    pub fn project_parts(&self, slot: LinearSlot, weights: LinearWeights<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.project_weights(slot, None, weights, x)
    }

    fn project_weights(
        &self,
        slot: LinearSlot,
        linear: Option<&Linear<B>>,
        weights: LinearWeights<B>,
        x: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let [batch, seq, d_in] = x.dims();
        let x = x.reshape([batch * seq, d_in]);
        let base = match (self.masks.as_ref().and_then(|m| m.get(slot)), linear) {
            (None, Some(linear)) => linear_2d(linear, x.clone()),
            (mask, _) => {
                let w = match mask {
                    Some(mask) => weights.weight * mask.mask(),
                    None => weights.weight,
                };
                let y = x.clone().matmul(w);
                match weights.bias {
                    Some(b) => y + b.unsqueeze(),
                    None => y,
                }
            }
        };
        let y = match self.lora.as_ref().and_then(|l| l.get(slot)).and_then(|l| l.forward(x)) {
            Some(delta) => base + delta,
            None => base,
        };
        let d_out = y.dims()[1];
        let y = y.reshape([batch, seq, d_out]);
        let scale = self.ia3.as_ref().and_then(|s| match slot {
            LinearSlot::Key => Some(s.key.val()),
            LinearSlot::Value => Some(s.value.val()),
            LinearSlot::Query | LinearSlot::AttentionOutput | LinearSlot::Intermediate | LinearSlot::Output => None,
        });
        match scale {
            Some(s) => y * s.unsqueeze(),
            None => y,
        }
    }

    /// The FFN's activations `[batch, seq, intermediate]` times the (IA)³ FFN scale, if any.
    pub fn scale_ffn(&self, inner: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.ia3 {
            Some(s) => inner * s.ffn.val().unsqueeze(),
            None => inner,
        }
    }

    /// Per-head contexts `[batch, heads, seq, d_head]` times the head gates, if any.
    pub fn gate_heads(&self, context: Tensor<B, 4>) -> Tensor<B, 4> {
        match &self.head_gate {
            Some(gate) => {
                let heads = context.dims()[1];
                context * gate.val().reshape([1, heads, 1, 1])
            }
            None => context,
        }
    }

    /// A sublayer's output `[batch, seq, d]` (before its residual) through what is inserted
    /// after it: a bottleneck adapter, then a Compacter adapter (with the model's shared PHM
    /// rules).
    pub fn after(&self, sublayer: Sublayer, h: Tensor<B, 3>, phm_rules: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        let (adapter, compacter) = match sublayer {
            Sublayer::Attention => (&self.attention_adapter, &self.attention_compacter),
            Sublayer::Ffn => (&self.ffn_adapter, &self.ffn_compacter),
        };
        let [batch, seq, d] = h.dims();
        let h = match adapter {
            Some(adapter) => adapter.forward(h.reshape([batch * seq, d])).reshape([batch, seq, d]),
            None => h,
        };
        match (compacter, phm_rules) {
            (Some(adapter), Some(rules)) => adapter
                .forward(h.reshape([batch * seq, d]), rules)
                .reshape([batch, seq, d]),
            _ => h,
        }
    }

    /// Records the roles of what is inserted here, at `site`.
    pub fn param_roles(&self, site: Site, roles: &mut Roles) {
        for slot in LinearSlot::ALL {
            if let Some(d) = self.lora.as_ref().and_then(|l| l.get(slot)) {
                roles.tag_module(d, site, Part::Insert(Insert::Lora(slot)));
            }
            if let Some(m) = self.masks.as_ref().and_then(|l| l.get(slot)) {
                roles.tag_module(m, site, Part::Insert(Insert::Mask(slot)));
            }
        }
        if let Some(m) = &self.ia3 {
            roles.tag_module(m, site, Part::Insert(Insert::Ia3));
        }
        if let Some(m) = &self.attention_adapter {
            roles.tag_module(m, site, Part::Insert(Insert::AttentionAdapter));
        }
        if let Some(m) = &self.ffn_adapter {
            roles.tag_module(m, site, Part::Insert(Insert::FfnAdapter));
        }
        if let Some(m) = &self.attention_compacter {
            roles.tag_module(m, site, Part::Insert(Insert::AttentionCompacter));
        }
        if let Some(m) = &self.ffn_compacter {
            roles.tag_module(m, site, Part::Insert(Insert::FfnCompacter));
        }
        if let Some(g) = &self.head_gate {
            roles.tag_param(g, site, Part::Insert(Insert::HeadGate), TensorKind::Other);
        }
    }
}

/// A linear's weight `[d_in, d_out]` and bias as tensors.
#[derive(Debug, Clone)]
pub struct LinearWeights<B: Backend> {
    /// `[d_in, d_out]`.
    pub weight: Tensor<B, 2>,
    /// `[d_out]`.
    pub bias: Option<Tensor<B, 1>>,
}

/// The two sublayers of a transformer block, after each of which adapters can sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sublayer {
    /// Self-attention (after its output projection).
    Attention,
    /// The feed-forward network (after its down projection).
    Ffn,
}
