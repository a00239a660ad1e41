//! The models strategies tune ([`TunableModel`]): what a host exposes so that strategies can
//! insert modules, select parameters and save what they train without knowing its type.
//!
//! Every host has per-layer insert slots (`kiln_model::peft::LayerInserts`: LoRA, masks,
//! (IA)³, adapters, head gates) and typed parameter roles. The slots some hosts lack —
//! Compacter's shared PHM rules, a soft prompt, a ladder side network — are `None` by
//! default; a strategy that needs one on a host without it is refused with
//! [`StrategyError::Unsupported`] before anything is built.

use burn::module::Param;
use burn::prelude::*;
use kiln_model::activation::Activation;
use kiln_model::peft::LayerInserts;
use kiln_model::roles::ModelRoles;

use super::{ModelShape, StrategyError};

/// The soft-prompt slot of a host and the token-embedding table prompts are drawn from.
pub struct PromptSlot<'a, B: Backend> {
    /// Where the prompt goes.
    pub prompt: &'a mut Option<Param<Tensor<B, 2>>>,
    /// The token embeddings `[vocab, hidden]`.
    pub vocabulary: Tensor<B, 2>,
}

/// A model tuning strategies can be applied to.
pub trait TunableModel<B: Backend>: Module<B> + ModelRoles + Sized {
    /// What the model is, for error messages (`"BERT classifier"`, `"GPT-2"`).
    fn family(&self) -> &'static str;

    /// The sizes strategies check themselves against.
    fn shape(&self) -> ModelShape;

    /// The FFN activation (inserted adapters use it).
    fn activation(&self) -> Activation;

    /// Each layer's insert slots, bottom first.
    fn layer_inserts_mut(&mut self) -> Vec<&mut LayerInserts<B>>;

    /// The shared PHM rules of Compacter, where the host has them.
    fn phm_rules_mut(&mut self) -> Option<&mut Option<Param<Tensor<B, 3>>>> {
        None
    }

    /// The soft-prompt slot, where the host has one.
    fn prompt_mut(&mut self) -> Option<PromptSlot<'_, B>> {
        None
    }

    /// The ladder side-network slot, where the host has one.
    fn side_mut(&mut self) -> Option<&mut Option<crate::ladder::LadderSide<B>>> {
        None
    }
}

/// [`StrategyError::Unsupported`] for `place` on `model`.
pub(crate) fn unsupported(model: &'static str, place: &'static str) -> StrategyError {
    StrategyError::Unsupported { place, model }
}

impl<B: Backend> TunableModel<B> for crate::classifier::SequenceClassifier<B> {
    fn family(&self) -> &'static str {
        "BERT classifier"
    }

    fn shape(&self) -> ModelShape {
        ModelShape::of(&self.bert)
    }

    fn activation(&self) -> Activation {
        self.bert.encoder.layer[0].intermediate.activation
    }

    fn layer_inserts_mut(&mut self) -> Vec<&mut LayerInserts<B>> {
        self.bert.encoder.layer.iter_mut().map(|l| &mut l.inserts).collect()
    }

    fn phm_rules_mut(&mut self) -> Option<&mut Option<Param<Tensor<B, 3>>>> {
        Some(&mut self.bert.encoder.shared.phm_rules)
    }

    fn prompt_mut(&mut self) -> Option<PromptSlot<'_, B>> {
        let vocabulary = self.bert.embeddings.word_embeddings.weight.val();
        Some(PromptSlot {
            prompt: &mut self.bert.prompt,
            vocabulary,
        })
    }

    fn side_mut(&mut self) -> Option<&mut Option<crate::ladder::LadderSide<B>>> {
        Some(&mut self.side)
    }
}

impl<B: Backend> TunableModel<B> for kiln_model::Gpt2Model<B> {
    fn family(&self) -> &'static str {
        "GPT-2"
    }

    fn shape(&self) -> ModelShape {
        let [_, hidden] = self.wte.weight.dims();
        ModelShape {
            hidden,
            intermediate: self.h.first().map_or(hidden * 4, |b| b.mlp.c_fc.weight.dims()[1]),
            layers: self.num_layers(),
            max_positions: self.max_positions(),
        }
    }

    fn activation(&self) -> Activation {
        self.h[0].mlp.activation
    }

    fn layer_inserts_mut(&mut self) -> Vec<&mut LayerInserts<B>> {
        self.h.iter_mut().map(|b| &mut b.inserts).collect()
    }
}
