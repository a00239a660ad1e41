//! Typed parameter roles: where each parameter of a model sits and what it is, read from the
//! model's own fields (not from dotted paths), so strategies choose what trains, what decays
//! and what is saved by type. Renaming a field changes no role: code that builds roles
//! accesses the field, so a rename is a compile error here, not a silent change of training.
//!
//! A model fills a [`Roles`] table (`ParamId → ParamRole`): [`crate::BertModel::param_roles`]
//! covers the encoder and everything inserted into it; a task model adds its head
//! ([`Site::Head`]) and any side network ([`Site::Side`]) with [`Roles::tag_module`].

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::nn::{LayerNorm, Linear};
use burn::prelude::*;

/// The six linears of a transformer layer (the ones LoRA, learned masks and conversion
/// address), in the order of [`crate::peft::LayerLora`]'s fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinearSlot {
    /// Attention query projection.
    Query,
    /// Attention key projection.
    Key,
    /// Attention value projection.
    Value,
    /// Attention output projection.
    AttentionOutput,
    /// FFN first projection.
    Intermediate,
    /// FFN second projection.
    Output,
}

impl LinearSlot {
    /// All six, in field order.
    pub const ALL: [LinearSlot; 6] = [
        Self::Query,
        Self::Key,
        Self::Value,
        Self::AttentionOutput,
        Self::Intermediate,
        Self::Output,
    ];

    /// Short name, as written in experiment files (`query`, `attention_output` …).
    pub fn name(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::Key => "key",
            Self::Value => "value",
            Self::AttentionOutput => "attention_output",
            Self::Intermediate => "intermediate",
            Self::Output => "output",
        }
    }

    /// Hugging Face module path inside `encoder.layer.{i}` (PEFT's `target_modules` names).
    pub fn hf_path(self) -> &'static str {
        match self {
            Self::Query => "attention.self.query",
            Self::Key => "attention.self.key",
            Self::Value => "attention.self.value",
            Self::AttentionOutput => "attention.output.dense",
            Self::Intermediate => "intermediate.dense",
            Self::Output => "output.dense",
        }
    }

    /// Whether the linear belongs to the attention block (Q, K, V, O).
    pub fn in_attention(self) -> bool {
        match self {
            Self::Query | Self::Key | Self::Value | Self::AttentionOutput => true,
            Self::Intermediate | Self::Output => false,
        }
    }

    /// The slot of `name` ([`LinearSlot::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Where a parameter sits in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Site {
    /// Word, position and token-type embeddings and their LayerNorm.
    Embeddings,
    /// Encoder (or decoder) layer `i`, bottom first.
    Layer(usize),
    /// Modules shared by every layer (Compacter's PHM rules).
    Shared,
    /// The pooler over `[CLS]`.
    Pooler,
    /// A soft prompt prepended to the input.
    Prompt,
    /// The final LayerNorm after the last layer (pre-LN decoders).
    Final,
    /// A task head.
    Head,
    /// A side network beside the backbone (ladder side-tuning).
    Side,
}

/// Modules a tuning strategy inserted into a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Insert {
    /// A LoRA delta on a linear.
    Lora(LinearSlot),
    /// A learned mask on a linear's weight.
    Mask(LinearSlot),
    /// (IA)³ scales.
    Ia3,
    /// Bottleneck adapter after the attention output.
    AttentionAdapter,
    /// Bottleneck adapter after the FFN output.
    FfnAdapter,
    /// Compacter adapter after the attention output.
    AttentionCompacter,
    /// Compacter adapter after the FFN output.
    FfnCompacter,
    /// Compacter's shared PHM rule matrices.
    PhmRules,
    /// Per-head gates (head importance).
    HeadGate,
}

/// What a parameter belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// An embedding table.
    Embedding,
    /// One of a layer's six pretrained linears.
    Linear(LinearSlot),
    /// A fused query/key/value projection (GPT-2's `c_attn`): the query, key and value
    /// [`LinearSlot`]s are its three column blocks.
    FusedQkv,
    /// A LayerNorm of the pretrained model (embeddings, after attention, after the FFN).
    Norm,
    /// The attention mechanism's own parameters (feature maps of converted attention);
    /// `fixed` ones never train (Performer's random projection).
    Mechanism {
        /// Never trains.
        fixed: bool,
    },
    /// A module inserted by a strategy.
    Insert(Insert),
    /// Any other part of a [`Site`] that has no finer structure (pooler, head, side network,
    /// soft prompt).
    Whole,
}

/// Which tensor of its module a parameter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorKind {
    /// A weight matrix (linear, embedding, adapter projection …).
    Weight,
    /// An additive bias.
    Bias,
    /// A LayerNorm scale (`γ`).
    NormScale,
    /// A LayerNorm shift (`β`).
    NormShift,
    /// Anything else (LoRA factors, scales, scores, gates, prompts).
    Other,
}

impl TensorKind {
    /// The kind of the parameter in field `field` of a module whose derived container type
    /// is `container` (burn's `"Struct:LayerNorm"` …): LayerNorm `γ`/`β`, a `Linear`'s
    /// weight, any field named `bias`, else [`TensorKind::Other`].
    pub fn of_field(field: &str, container: &str) -> Self {
        match (field, container) {
            ("gamma", "Struct:LayerNorm") => Self::NormScale,
            ("beta", "Struct:LayerNorm") => Self::NormShift,
            ("weight", "Struct:Linear") => Self::Weight,
            ("bias", _) => Self::Bias,
            _ => Self::Other,
        }
    }

    /// HF/PyTorch's decoupled weight decay convention: no decay on biases and LayerNorms.
    pub fn decays(self) -> bool {
        match self {
            Self::Bias | Self::NormScale | Self::NormShift => false,
            Self::Weight | Self::Other => true,
        }
    }
}

/// A parameter's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParamRole {
    /// Where it sits.
    pub site: Site,
    /// What it belongs to.
    pub part: Part,
    /// Which tensor it is.
    pub tensor: TensorKind,
}

impl ParamRole {
    /// A bias or LayerNorm shift (what BitFit trains).
    pub fn is_bias(&self) -> bool {
        matches!(self.tensor, TensorKind::Bias | TensorKind::NormShift)
    }

    /// A LayerNorm scale or shift, anywhere (pretrained, inserted or in a side network).
    pub fn is_norm(&self) -> bool {
        matches!(self.tensor, TensorKind::NormScale | TensorKind::NormShift)
    }

    /// HF/PyTorch's decoupled weight decay convention: no decay on biases and LayerNorms.
    pub fn decays(&self) -> bool {
        self.tensor.decays()
    }

    /// A parameter of a module some strategy inserted.
    pub fn insert(&self) -> Option<Insert> {
        match self.part {
            Part::Insert(i) => Some(i),
            Part::Embedding | Part::Linear(_) | Part::FusedQkv | Part::Norm | Part::Mechanism { .. } | Part::Whole => {
                None
            }
        }
    }

    /// The encoder layer it sits in, if any.
    pub fn layer(&self) -> Option<usize> {
        match self.site {
            Site::Layer(i) => Some(i),
            Site::Embeddings | Site::Shared | Site::Pooler | Site::Prompt | Site::Final | Site::Head | Site::Side => {
                None
            }
        }
    }
}

/// A model that knows the role of each of its parameters.
pub trait ModelRoles {
    /// The roles of every float parameter.
    fn param_roles(&self) -> Roles;
}

/// `ParamId → ParamRole` for every float parameter of a model.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    map: HashMap<ParamId, ParamRole>,
}

impl Roles {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The role of parameter `id` (`None` for a parameter no model part claimed).
    pub fn get(&self, id: ParamId) -> Option<&ParamRole> {
        self.map.get(&id)
    }

    /// Number of parameters with a role.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no parameter has a role.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Records `id`'s role.
    pub fn set(&mut self, id: ParamId, site: Site, part: Part, tensor: TensorKind) {
        self.map.insert(id, ParamRole { site, part, tensor });
    }

    /// Tags a linear's weight and bias.
    pub fn tag_linear<B: Backend>(&mut self, linear: &Linear<B>, site: Site, part: Part) {
        self.set(linear.weight.id, site, part, TensorKind::Weight);
        if let Some(b) = &linear.bias {
            self.set(b.id, site, part, TensorKind::Bias);
        }
    }

    /// Tags a LayerNorm's scale and shift.
    pub fn tag_norm<B: Backend>(&mut self, norm: &LayerNorm<B>, site: Site, part: Part) {
        self.set(norm.gamma.id, site, part, TensorKind::NormScale);
        if let Some(b) = &norm.beta {
            self.set(b.id, site, part, TensorKind::NormShift);
        }
    }

    /// Tags one parameter.
    pub fn tag_param<B: Backend, const D: usize>(
        &mut self,
        param: &Param<Tensor<B, D>>,
        site: Site,
        part: Part,
        tensor: TensorKind,
    ) {
        self.set(param.id, site, part, tensor);
    }

    /// Tags every float parameter of `module` with `site` and `part`; the tensor kind comes
    /// from the module type that holds it: burn's `LayerNorm` (`γ` → scale, `β` → shift),
    /// `Linear` (weight, bias), and otherwise a field named `bias` → [`TensorKind::Bias`],
    /// anything else [`TensorKind::Other`].
    pub fn tag_module<B: Backend, M: Module<B>>(&mut self, module: &M, site: Site, part: Part) {
        let mut visitor = Tagger {
            roles: self,
            site,
            part,
            stack: Vec::new(),
        };
        module.visit(&mut visitor);
    }
}

struct Tagger<'a> {
    roles: &'a mut Roles,
    site: Site,
    part: Part,
    /// `(field name, container type)` of each entered module.
    stack: Vec<(String, String)>,
}

impl<B: Backend> ModuleVisitor<B> for Tagger<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.push((name.to_string(), container_type.to_string()));
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        // The innermost entry is the parameter's own field and the struct that holds it.
        let tensor = self
            .stack
            .last()
            .map_or(TensorKind::Other, |(n, c)| TensorKind::of_field(n, c));
        self.roles.set(param.id, self.site, self.part, tensor);
    }
}

/// Slot-indexed access to a per-linear insert container (`LayerLora`, `LayerMasks`), whose
/// six optional fields follow [`LinearSlot::ALL`].
macro_rules! per_linear {
    ($container:ident, $item:ident, $what:literal) => {
        impl<B: Backend> crate::peft::$container<B> {
            #[doc = concat!("The ", $what, " on `slot`, if any.")]
            pub fn get(&self, slot: LinearSlot) -> Option<&crate::peft::$item<B>> {
                match slot {
                    LinearSlot::Query => self.query.as_ref(),
                    LinearSlot::Key => self.key.as_ref(),
                    LinearSlot::Value => self.value.as_ref(),
                    LinearSlot::AttentionOutput => self.attention_output.as_ref(),
                    LinearSlot::Intermediate => self.intermediate.as_ref(),
                    LinearSlot::Output => self.output.as_ref(),
                }
            }

            #[doc = concat!("The ", $what, " on `slot`, if any, mutably.")]
            pub fn get_mut(&mut self, slot: LinearSlot) -> Option<&mut crate::peft::$item<B>> {
                match slot {
                    LinearSlot::Query => self.query.as_mut(),
                    LinearSlot::Key => self.key.as_mut(),
                    LinearSlot::Value => self.value.as_mut(),
                    LinearSlot::AttentionOutput => self.attention_output.as_mut(),
                    LinearSlot::Intermediate => self.intermediate.as_mut(),
                    LinearSlot::Output => self.output.as_mut(),
                }
            }

            #[doc = concat!("One ", $what, " per slot where `make` gives one, built in slot order.")]
            pub fn from_slots(mut make: impl FnMut(LinearSlot) -> Option<crate::peft::$item<B>>) -> Self {
                let [query, key, value, attention_output, intermediate, output] = LinearSlot::ALL.map(&mut make);
                Self {
                    query,
                    key,
                    value,
                    attention_output,
                    intermediate,
                    output,
                }
            }
        }
    };
}

per_linear!(LayerLora, LoraDelta, "LoRA delta");
per_linear!(LayerMasks, WeightMask, "weight mask");

impl<B: Backend> crate::bert::BertLayer<B> {
    /// The pretrained linear in `slot`.
    pub fn linear(&self, slot: LinearSlot) -> &Linear<B> {
        match slot {
            LinearSlot::Query => &self.attention.self_attention.query,
            LinearSlot::Key => &self.attention.self_attention.key,
            LinearSlot::Value => &self.attention.self_attention.value,
            LinearSlot::AttentionOutput => &self.attention.output.dense,
            LinearSlot::Intermediate => &self.intermediate.dense,
            LinearSlot::Output => &self.output.dense,
        }
    }

    /// The pretrained linear in `slot`, mutably.
    pub fn linear_mut(&mut self, slot: LinearSlot) -> &mut Linear<B> {
        match slot {
            LinearSlot::Query => &mut self.attention.self_attention.query,
            LinearSlot::Key => &mut self.attention.self_attention.key,
            LinearSlot::Value => &mut self.attention.self_attention.value,
            LinearSlot::AttentionOutput => &mut self.attention.output.dense,
            LinearSlot::Intermediate => &mut self.intermediate.dense,
            LinearSlot::Output => &mut self.output.dense,
        }
    }

    /// Records the roles of this layer's parameters (layer `i`), inserts included.
    pub fn param_roles(&self, i: usize, roles: &mut Roles) {
        let site = Site::Layer(i);
        for slot in LinearSlot::ALL {
            roles.tag_linear(self.linear(slot), site, Part::Linear(slot));
        }
        roles.tag_norm(&self.attention.output.layer_norm, site, Part::Norm);
        roles.tag_norm(&self.output.layer_norm, site, Part::Norm);
        tag_mechanism(roles, &self.attention.self_attention.mechanism, site);
        self.inserts.param_roles(site, roles);
    }
}

fn tag_mechanism<B: Backend>(roles: &mut Roles, mechanism: &kiln_attention::AttentionKind<B>, site: Site) {
    roles.tag_module(mechanism, site, Part::Mechanism { fixed: false });
    for id in mechanism.fixed_param_ids() {
        roles.set(id, site, Part::Mechanism { fixed: true }, TensorKind::Other);
    }
}

impl<B: Backend> ModelRoles for crate::BertModel<B> {
    fn param_roles(&self) -> Roles {
        let mut roles = Roles::new();
        self.fill_roles(&mut roles);
        roles
    }
}

impl<B: Backend> ModelRoles for crate::Gpt2Model<B> {
    /// Token and position tables (embeddings), each block's LayerNorms, linears (the fused
    /// `c_attn` as [`Part::FusedQkv`], the others by slot), inserts and mechanism, and the
    /// final LayerNorm.
    fn param_roles(&self) -> Roles {
        let mut roles = Roles::new();
        roles.tag_param(&self.wte.weight, Site::Embeddings, Part::Embedding, TensorKind::Weight);
        roles.tag_param(&self.wpe.weight, Site::Embeddings, Part::Embedding, TensorKind::Weight);
        for (i, block) in self.h.iter().enumerate() {
            let site = Site::Layer(i);
            roles.tag_norm(&block.ln_1, site, Part::Norm);
            roles.tag_norm(&block.ln_2, site, Part::Norm);
            roles.tag_linear(&block.attn.c_attn, site, Part::FusedQkv);
            for slot in [
                LinearSlot::AttentionOutput,
                LinearSlot::Intermediate,
                LinearSlot::Output,
            ] {
                roles.tag_linear(block.linear(slot), site, Part::Linear(slot));
            }
            block.inserts.param_roles(site, &mut roles);
            tag_mechanism(&mut roles, &block.attn.mechanism, site);
        }
        roles.tag_norm(&self.ln_f, Site::Final, Part::Norm);
        roles
    }
}

impl<B: Backend> crate::BertModel<B> {
    /// Records the roles of every parameter of the encoder: embeddings, layers (with their
    /// inserts and attention mechanisms), shared inserts, pooler and soft prompt.
    pub fn fill_roles(&self, roles: &mut Roles) {
        let e = &self.embeddings;
        for table in [&e.word_embeddings, &e.position_embeddings, &e.token_type_embeddings] {
            roles.tag_param(&table.weight, Site::Embeddings, Part::Embedding, TensorKind::Weight);
        }
        roles.tag_norm(&e.layer_norm, Site::Embeddings, Part::Norm);
        for (i, layer) in self.encoder.layer.iter().enumerate() {
            layer.param_roles(i, roles);
        }
        if let Some(rules) = &self.encoder.shared.phm_rules {
            roles.tag_param(rules, Site::Shared, Part::Insert(Insert::PhmRules), TensorKind::Other);
        }
        if let Some(pooler) = &self.pooler {
            roles.tag_linear(&pooler.dense, Site::Pooler, Part::Whole);
        }
        if let Some(prompt) = &self.prompt {
            roles.tag_param(prompt, Site::Prompt, Part::Whole, TensorKind::Other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    /// Every parameter of an encoder with every kind of insert gets a role, and the roles
    /// agree with where the parameter is (checked against burn's dotted paths, which this
    /// crate owns).
    #[test]
    fn every_parameter_of_a_fully_inserted_encoder_has_the_right_role() {
        let device = Default::default();
        let config: crate::BertConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 16, "max_position_embeddings": 16
        }))
        .unwrap();
        let mut bert = crate::BertModel::<Flex>::new(&config, true, &device);
        let act = bert.encoder.layer[0].intermediate.activation;
        for layer in &mut bert.encoder.layer {
            let lora = || Some(crate::peft::LoraDelta::new(8, 8, 2, 4.0, 0.0, &device));
            layer.inserts.lora = Some(crate::peft::LayerLora {
                query: lora(),
                key: None,
                value: lora(),
                attention_output: None,
                intermediate: None,
                output: None,
            });
            layer.inserts.ia3 = Some(crate::peft::LayerIa3::new(8, 16, &device));
            layer.inserts.ffn_adapter = Some(crate::peft::Bottleneck::new(8, 4, act, &device));
            layer.inserts.head_gate = Some(Param::from_tensor(Tensor::ones([2], &device)));
        }
        bert.prompt = Some(Param::from_tensor(Tensor::zeros([3, 8], &device)));
        let roles = bert.param_roles();

        struct Paths(Vec<String>, Vec<(ParamId, String)>);
        impl<B: Backend> ModuleVisitor<B> for Paths {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.0.push(name.into());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.0.pop();
            }
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
                self.1.push((p.id, self.0.join(".")));
            }
        }
        let mut paths = Paths(Vec::new(), Vec::new());
        bert.visit(&mut paths);
        assert_eq!(roles.len(), paths.1.len(), "one role per parameter");
        for (id, path) in &paths.1 {
            let r = roles.get(*id).unwrap_or_else(|| panic!("{path} has no role"));
            let want_site = if path.starts_with("embeddings.") {
                Site::Embeddings
            } else if path.starts_with("pooler.") {
                Site::Pooler
            } else if path == "prompt" {
                Site::Prompt
            } else {
                let i: usize = path.split('.').nth(2).unwrap().parse().unwrap();
                Site::Layer(i)
            };
            assert_eq!(r.site, want_site, "{path}");
            let inserted = path.contains(".inserts.");
            assert_eq!(r.insert().is_some(), inserted, "{path}: {r:?}");
            assert_eq!(r.is_norm(), path.contains("layer_norm"), "{path}: {r:?}");
            let last = path.rsplit('.').next().unwrap();
            assert_eq!(r.is_bias(), last == "bias" || last == "beta", "{path}: {r:?}");
            if path.contains("self_attention.query.") {
                assert_eq!(r.part, Part::Linear(LinearSlot::Query));
            }
            if path.contains("inserts.lora.value.") {
                assert_eq!(r.part, Part::Insert(Insert::Lora(LinearSlot::Value)));
            }
        }
    }
}
