//! What strategies insert into a model, as data ([`InsertSpec`]), and the one function that
//! builds the modules ([`InsertSpec::apply`]). The kinds mirror the insert slots the host
//! model provides (`kiln_model::peft::LayerInserts`, the soft prompt, the side network); a
//! new strategy that reuses them needs no change here.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;
use kiln_model::peft::{Bottleneck, CompacterAdapter, LayerIa3, LayerLora, LayerMasks, LoraDelta, WeightMask};
use kiln_model::roles::LinearSlot;

use super::host::{unsupported, TunableModel};
use super::StrategyError;

/// The sizes strategies check themselves against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    /// Hidden width.
    pub hidden: usize,
    /// FFN inner width.
    pub intermediate: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Position embeddings.
    pub max_positions: usize,
}

impl ModelShape {
    /// The sizes of `bert`.
    pub fn of<B: Backend>(bert: &kiln_model::BertModel<B>) -> Self {
        let [_, hidden] = bert.embeddings.word_embeddings.weight.dims();
        Self {
            hidden,
            intermediate: bert
                .encoder
                .layer
                .first()
                .map_or(hidden * 4, |l| l.intermediate.dense.weight.dims()[1]),
            layers: bert.num_layers(),
            max_positions: bert.embeddings.position_embeddings.weight.dims()[0],
        }
    }

    /// `(d_in, d_out)` of the linear in `slot`.
    pub fn linear_dims(&self, slot: LinearSlot) -> (usize, usize) {
        let (h, f) = (self.hidden, self.intermediate);
        match slot {
            LinearSlot::Query | LinearSlot::Key | LinearSlot::Value | LinearSlot::AttentionOutput => (h, h),
            LinearSlot::Intermediate => (h, f),
            LinearSlot::Output => (f, h),
        }
    }
}

/// One kind of module to insert.
#[derive(Debug, Clone, PartialEq)]
pub enum InsertSpec {
    /// LoRA deltas on `slots` of every layer.
    Lora {
        /// Linears.
        slots: Vec<LinearSlot>,
        /// Rank.
        r: usize,
        /// `scale = alpha / r`.
        alpha: f64,
        /// Dropout on the LoRA path.
        dropout: f64,
    },
    /// Learned weight masks on `slots` of every layer.
    Masks {
        /// Linears.
        slots: Vec<LinearSlot>,
        /// Initial score.
        init: f64,
        /// Threshold.
        threshold: f64,
    },
    /// (IA)³ scales in every layer.
    Ia3,
    /// Bottleneck adapters after every FFN output and, with `after_attention`, after every
    /// attention output too (Houlsby; without: Pfeiffer).
    Adapters {
        /// Also after the attention output.
        after_attention: bool,
        /// Hidden / bottleneck width.
        reduction: usize,
    },
    /// Compacter adapters after the attention and FFN outputs, with shared PHM rules.
    Compacter {
        /// Hidden / bottleneck width.
        reduction: usize,
        /// Kronecker terms.
        n: usize,
    },
    /// A ladder side network.
    Side {
        /// Backbone width / side width.
        reduction: usize,
    },
    /// A soft prompt of `n_virtual` vectors.
    Prompt {
        /// Virtual tokens.
        n_virtual: usize,
    },
}

impl InsertSpec {
    /// The model slot this fills: two specs with the same place cannot be combined.
    pub fn place(&self) -> &'static str {
        match self {
            Self::Lora { .. } => "LoRA deltas",
            Self::Masks { .. } => "weight masks",
            Self::Ia3 => "(IA)³ scales",
            Self::Adapters { .. } => "the adapter after the FFN output",
            Self::Compacter { .. } => "the Compacter adapters",
            Self::Side { .. } => "the side network",
            Self::Prompt { .. } => "the soft prompt",
        }
    }

    /// Builds the modules into `model`, drawing their initialisation from the backend RNG.
    ///
    /// # Errors
    /// A side network that does not fit (see [`crate::ladder::LadderSide::new`]);
    /// [`StrategyError::Unsupported`] when the host lacks the slot (a soft prompt, a side
    /// network or Compacter's shared rules on GPT-2).
    pub fn apply<B: Backend, M: TunableModel<B>>(&self, mut model: M, device: &B::Device) -> Result<M, StrategyError> {
        let shape = model.shape();
        let h = shape.hidden;
        let act = model.activation();
        let family = model.family();
        match self {
            Self::Lora {
                slots,
                r,
                alpha,
                dropout,
            } => {
                for inserts in model.layer_inserts_mut() {
                    inserts.lora = Some(LayerLora::from_slots(|slot| {
                        let (d_in, d_out) = shape.linear_dims(slot);
                        slots
                            .contains(&slot)
                            .then(|| LoraDelta::new(d_in, d_out, *r, *alpha, *dropout, device))
                    }));
                }
            }
            Self::Masks { slots, init, threshold } => {
                for inserts in model.layer_inserts_mut() {
                    inserts.masks = Some(LayerMasks::from_slots(|slot| {
                        let (d_in, d_out) = shape.linear_dims(slot);
                        slots
                            .contains(&slot)
                            .then(|| WeightMask::new(d_in, d_out, *init, *threshold, device))
                    }));
                }
            }
            Self::Ia3 => {
                for inserts in model.layer_inserts_mut() {
                    inserts.ia3 = Some(LayerIa3::new(h, shape.intermediate, device));
                }
            }
            Self::Adapters {
                after_attention,
                reduction,
            } => {
                for inserts in model.layer_inserts_mut() {
                    if *after_attention {
                        inserts.attention_adapter = Some(Bottleneck::new(h, *reduction, act, device));
                    }
                    inserts.ffn_adapter = Some(Bottleneck::new(h, *reduction, act, device));
                }
            }
            Self::Compacter { reduction, n } => {
                let rules = Param::from_tensor(Tensor::random(
                    [*n, *n, *n],
                    Distribution::Normal(0.0, 1.0 / *n as f64),
                    device,
                ));
                *model.phm_rules_mut().ok_or_else(|| unsupported(family, self.place()))? = Some(rules);
                for inserts in model.layer_inserts_mut() {
                    inserts.attention_compacter = Some(CompacterAdapter::new(h, *reduction, *n, act, device));
                    inserts.ffn_compacter = Some(CompacterAdapter::new(h, *reduction, *n, act, device));
                }
            }
            Self::Side { reduction } => {
                let side =
                    crate::ladder::LadderSide::new(h, shape.layers, *reduction, act, device).map_err(|message| {
                        StrategyError::Invalid {
                            strategy: "ladder",
                            message,
                        }
                    })?;
                *model.side_mut().ok_or_else(|| unsupported(family, self.place()))? = Some(side);
            }
            Self::Prompt { n_virtual } => {
                let Some(slot) = model.prompt_mut() else {
                    return Err(unsupported(family, self.place()));
                };
                let [vocab, hidden] = slot.vocabulary.dims();
                // Lester et al. initialise from sampled vocabulary embeddings; skip the first
                // 1000 ids, which hold BERT's [PAD]/[unused*]/special tokens.
                let low = 1000.min(vocab - 1) as f64;
                let ids = Tensor::<B, 1>::random([*n_virtual], Distribution::Uniform(low, vocab as f64), device)
                    .floor()
                    .int()
                    .clamp(0, vocab as i64 - 1);
                let rows = slot.vocabulary.select(0, ids);
                debug_assert_eq!(rows.dims(), [*n_virtual, hidden]);
                *slot.prompt = Some(Param::from_tensor(rows.detach()));
            }
        }
        Ok(model)
    }
}
