//! Tuning strategies: which parameters train, which modules are inserted, how gradients are
//! transformed between backward and the optimizer update, and what is saved.
//!
//! A run's strategy is a list of [`StrategyConfig`] components composed into one [`Tuning`]:
//!
//! - **Selections** restrict training to some parameters: BitFit (biases), LNA (LayerNorms and
//!   attention), LoRA (its deltas), Houlsby/Pfeiffer adapters (the adapters and LayerNorms).
//!   With several, a parameter trains when any of them selects it. With none, everything
//!   trains (full fine-tuning). The task head (`classifier.*`) always trains.
//! - **Gradient transforms**: Child-Tuning_F and _D (Xu et al. 2021) mask the gradient of
//!   whatever trains, after clipping and before the AdamW moments (as the authors'
//!   `ChildTuningAdamW`). At most one per run.
//!
//! So `[bitfit, child_tuning_f]` or `[lora, child_tuning_d]` compose; `[full, bitfit]`, two
//! Child-Tuning variants, or a component twice are errors.
//!
//! Target patterns (LoRA `targets`, and [`PathPattern`] generally) match parameter or module
//! paths exactly, by suffix (`"query"` matches `…self_attention.query`), or by regex
//! (`"re:…"`), as PEFT's `target_modules`; a pattern that matches nothing is an error.

use std::collections::HashMap;

use burn::module::{ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Distribution;
use kiln_model::peft::{
    Bottleneck, CompacterAdapter, LayerIa3, LayerLora, LayerMasks, LoraDelta, WeightMask, LORA_TARGETS,
};
use serde::{Deserialize, Serialize};

use crate::classifier::SequenceClassifier;
use crate::params::ParamInfo;

/// One component of a tuning strategy, as written in an experiment file:
/// `[[train.tuning]] kind = "lora"` + its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StrategyConfig {
    /// Every parameter trains (the default when no selection is given).
    Full,
    /// Biases and the head only (Ben Zaken et al. 2022).
    BitFit,
    /// LayerNorms and attention (self-attention projections and output) only; FFN and
    /// embeddings frozen (Li et al. 2021, "LNA").
    Lna,
    /// Child-Tuning_F: each step keep every gradient element with probability `reserve_p` and
    /// scale kept ones by `1/reserve_p`.
    ChildTuningF {
        /// Keep probability.
        #[serde(default = "default_reserve_p")]
        reserve_p: f64,
    },
    /// Child-Tuning_D: a fixed mask from the empirical Fisher information of the task loss.
    ChildTuningD {
        /// Fraction of encoder-layer gradient elements kept.
        #[serde(default = "default_reserve_p")]
        reserve_p: f64,
    },
    /// LoRA deltas on chosen linears (Hu et al. 2021).
    Lora {
        /// Rank.
        #[serde(default = "default_lora_r")]
        r: usize,
        /// Scale numerator (`scale = alpha / r`).
        #[serde(default = "default_lora_alpha")]
        alpha: f64,
        /// Dropout on the LoRA path.
        #[serde(default)]
        dropout: f64,
        /// Linears: any of `query key value attention_output intermediate output`, or
        /// patterns over them (`re:` regex, exact, or suffix).
        #[serde(default = "default_lora_targets")]
        targets: Vec<String>,
    },
    /// Houlsby adapters: after the attention output and after the FFN output.
    Houlsby {
        /// Hidden size / bottleneck width.
        #[serde(default = "default_reduction")]
        reduction: usize,
    },
    /// Pfeiffer adapters: after the FFN output only.
    Pfeiffer {
        /// Hidden size / bottleneck width.
        #[serde(default = "default_reduction")]
        reduction: usize,
    },
    /// Compacter (Karimi Mahabadi et al. 2021): Houlsby-placed adapters whose projections are
    /// PHM layers with rank-one factors and rule matrices shared across all layers.
    Compacter {
        /// Hidden size / bottleneck width.
        #[serde(default = "default_compacter_reduction")]
        reduction: usize,
        /// Number of Kronecker terms (must divide the hidden size and the bottleneck width).
        #[serde(default = "default_phm_n")]
        n: usize,
    },
    /// Ladder side-tuning (Sung et al. 2022): a `reduction`-times narrower side network fed by
    /// the frozen backbone's hidden states through learned gates; no backpropagation through
    /// the backbone. See [`crate::ladder`].
    Ladder {
        /// Backbone width / side width.
        #[serde(default = "default_ladder_reduction")]
        reduction: usize,
    },
    /// Prompt tuning (Lester et al. 2021): a soft prompt of `n_virtual` vectors prepended to the
    /// word embeddings, initialised from the embeddings of random vocabulary tokens; only the
    /// prompt and the head train.
    PromptTuning {
        /// Number of virtual tokens.
        #[serde(default = "default_virtual")]
        n_virtual: usize,
    },
    /// (IA)³: learned rescaling of keys, values and the FFN inner activation (Liu et al. 2022).
    Ia3,
    /// Learned binary masks over the chosen linears' pretrained weights (Zhao et al. 2020).
    LearnedMask {
        /// Linears, as LoRA's `targets`.
        #[serde(default = "all_linears")]
        targets: Vec<String>,
        /// Initial score (above `threshold`: start from the pretrained weights).
        #[serde(default = "default_mask_init")]
        init: f64,
        /// Mask threshold.
        #[serde(default = "default_mask_threshold")]
        threshold: f64,
    },
    /// ULMFiT (Howard & Ruder 2018): slanted triangular learning rate, discriminative
    /// learning rates (÷`decay` per layer going down), and gradual unfreezing (the head in the
    /// first epoch, one more layer each epoch, embeddings last).
    Ulmfit {
        /// Fraction of steps spent increasing the learning rate.
        #[serde(default = "default_cut_frac")]
        cut_frac: f64,
        /// Peak / lowest learning rate.
        #[serde(default = "default_ratio")]
        ratio: f64,
        /// Per-layer learning-rate divisor (1 = off).
        #[serde(default = "default_decay")]
        decay: f64,
        /// Whether to unfreeze gradually.
        #[serde(default = "yes")]
        gradual_unfreezing: bool,
    },
}

fn default_ladder_reduction() -> usize {
    8
}
fn default_compacter_reduction() -> usize {
    32
}
fn default_phm_n() -> usize {
    4
}
fn default_virtual() -> usize {
    20
}
fn all_linears() -> Vec<String> {
    LORA_TARGETS.iter().map(|(n, _)| n.to_string()).collect()
}
fn default_mask_init() -> f64 {
    0.01
}
fn default_mask_threshold() -> f64 {
    0.005
}
fn default_cut_frac() -> f64 {
    0.1
}
fn default_ratio() -> f64 {
    32.0
}
fn default_decay() -> f64 {
    2.6
}
fn yes() -> bool {
    true
}

fn default_reserve_p() -> f64 {
    0.3
}
fn default_lora_r() -> usize {
    8
}
fn default_lora_alpha() -> f64 {
    16.0
}
fn default_lora_targets() -> Vec<String> {
    vec!["query".into(), "value".into()]
}
fn default_reduction() -> usize {
    16
}

impl StrategyConfig {
    /// Short name (`lora`, `child_tuning_d`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::BitFit => "bit_fit",
            Self::Lna => "lna",
            Self::ChildTuningF { .. } => "child_tuning_f",
            Self::ChildTuningD { .. } => "child_tuning_d",
            Self::Lora { .. } => "lora",
            Self::Houlsby { .. } => "houlsby",
            Self::Pfeiffer { .. } => "pfeiffer",
            Self::PromptTuning { .. } => "prompt_tuning",
            Self::Compacter { .. } => "compacter",
            Self::Ladder { .. } => "ladder",
            Self::Ia3 => "ia3",
            Self::LearnedMask { .. } => "learned_mask",
            Self::Ulmfit { .. } => "ulmfit",
        }
    }

    fn is_selection(&self) -> bool {
        matches!(
            self,
            Self::BitFit
                | Self::Lna
                | Self::Lora { .. }
                | Self::Houlsby { .. }
                | Self::Pfeiffer { .. }
                | Self::Ia3
                | Self::LearnedMask { .. }
                | Self::PromptTuning { .. }
                | Self::Compacter { .. }
                | Self::Ladder { .. }
        )
    }

    fn is_gradient_transform(&self) -> bool {
        matches!(self, Self::ChildTuningF { .. } | Self::ChildTuningD { .. })
    }

    /// Whether this selection trains the parameter at `path`.
    fn selects(&self, path: &str) -> bool {
        let last = path.rsplit('.').next().unwrap_or(path);
        match self {
            Self::BitFit => last == "bias" || last == "beta",
            Self::Lna => {
                path.contains("layer_norm") || (path.contains(".attention.") && path.starts_with("bert.encoder."))
            }
            Self::Lora { .. } => path.contains(".inserts.lora."),
            Self::Houlsby { .. } | Self::Pfeiffer { .. } => path.contains("_adapter.") || path.contains("layer_norm"),
            Self::Ia3 => path.contains(".inserts.ia3."),
            Self::PromptTuning { .. } => path == "bert.prompt",
            Self::Ladder { .. } => path.starts_with("side.") || path.starts_with("bert.pooler."),
            Self::Compacter { .. } => {
                path.contains("_compacter.")
                    || path.starts_with("bert.encoder.shared.phm_rules")
                    || path.contains("layer_norm")
            }
            Self::LearnedMask { .. } => path.contains(".inserts.masks."),
            // Not selections: they train what the selections (or full fine-tuning) choose.
            Self::Full | Self::ChildTuningF { .. } | Self::ChildTuningD { .. } | Self::Ulmfit { .. } => false,
        }
    }
}

/// Errors of building or applying a strategy.
#[derive(Debug, thiserror::Error)]
pub enum StrategyError {
    /// Components that cannot be combined.
    #[error("tuning strategies {0} and {1} cannot be combined: {2}")]
    Incompatible(&'static str, &'static str, &'static str),
    /// A bad setting.
    #[error("{strategy}: {message}")]
    Invalid {
        /// Component name.
        strategy: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A target pattern matched nothing.
    #[error("{strategy}: target pattern {pattern:?} matches none of {candidates:?}")]
    NoMatch {
        /// Component name.
        strategy: &'static str,
        /// The pattern.
        pattern: String,
        /// What it could have matched.
        candidates: Vec<String>,
    },
}

/// A path pattern as PEFT's `target_modules`: `re:<regex>` (full match), else exact or
/// `.`-separated suffix.
#[derive(Debug, Clone)]
pub enum PathPattern {
    /// Full-match regex.
    Regex(regex::Regex),
    /// Exact path or dotted suffix.
    Suffix(String),
}

impl PathPattern {
    /// Parses `text`.
    ///
    /// # Errors
    /// An invalid regex.
    pub fn parse(text: &str) -> Result<Self, regex::Error> {
        Ok(match text.strip_prefix("re:") {
            Some(re) => Self::Regex(regex::Regex::new(&format!("^(?:{re})$"))?),
            None => Self::Suffix(text.to_string()),
        })
    }

    /// Whether `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Regex(re) => re.is_match(path),
            Self::Suffix(s) => path == s || path.ends_with(&format!(".{s}")),
        }
    }
}

/// `(name, d_in, d_out)` of a layer's six linears, in [`LORA_TARGETS`] order (the field
/// order of `LayerLora` and `LayerMasks`).
fn linear_shapes<B: Backend>(layer: &kiln_model::bert::BertLayer<B>) -> [(&'static str, usize, usize); 6] {
    let h = layer.attention.self_attention.query.weight.dims()[0];
    let ffn = layer.intermediate.dense.weight.dims()[1];
    let dims = [(h, h), (h, h), (h, h), (h, h), (h, ffn), (ffn, h)];
    std::array::from_fn(|i| (LORA_TARGETS[i].0, dims[i].0, dims[i].1))
}

/// Resolves LoRA target patterns to [`LORA_TARGETS`] names (matched against both the short
/// name and the HF module path).
pub fn lora_targets(patterns: &[String]) -> Result<Vec<&'static str>, StrategyError> {
    let mut chosen = Vec::new();
    for text in patterns {
        let pattern = PathPattern::parse(text).map_err(|e| StrategyError::Invalid {
            strategy: "lora",
            message: e.to_string(),
        })?;
        let hits: Vec<&'static str> = LORA_TARGETS
            .iter()
            .filter(|(name, hf)| pattern.matches(name) || pattern.matches(hf))
            .map(|(name, _)| *name)
            .collect();
        if hits.is_empty() {
            return Err(StrategyError::NoMatch {
                strategy: "lora",
                pattern: text.clone(),
                candidates: LORA_TARGETS.iter().map(|(n, hf)| format!("{n} ({hf})")).collect(),
            });
        }
        for h in hits {
            if !chosen.contains(&h) {
                chosen.push(h);
            }
        }
    }
    Ok(chosen)
}

/// Gradient masks of Child-Tuning.
#[derive(Debug, Clone)]
pub enum ChildMask<B: Backend> {
    /// Fresh Bernoulli(p) mask every step, kept elements scaled by `1/p`.
    Bernoulli(f64),
    /// Fixed 0/1 masks by parameter path (flattened); paths without a mask train fully.
    Fixed(HashMap<String, Tensor<B, 1>>),
}

impl<B: Backend> ChildMask<B> {
    /// Applies the mask to the flattened gradient of `path`.
    pub fn apply(&self, path: &str, grad: Tensor<B, 1>) -> Tensor<B, 1> {
        match self {
            Self::Bernoulli(p) => {
                let mask = Tensor::<B, 1>::random(grad.shape(), Distribution::Bernoulli(*p), &grad.device());
                grad * mask.div_scalar(*p)
            }
            Self::Fixed(masks) => match masks.get(path) {
                Some(mask) => grad * mask.clone(),
                None => grad,
            },
        }
    }
}

/// A composed strategy.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Its components, as configured.
    pub components: Vec<StrategyConfig>,
}

/// The head's parameters train under every strategy.
pub fn is_head(path: &str) -> bool {
    path.starts_with("classifier.")
}

impl Tuning {
    /// Validates and composes `components` (empty = full fine-tuning).
    ///
    /// # Errors
    /// [`StrategyError`] for an incompatible combination or a bad setting.
    pub fn new(components: &[StrategyConfig]) -> Result<Self, StrategyError> {
        for (i, a) in components.iter().enumerate() {
            for b in &components[i + 1..] {
                if a.name() == b.name() {
                    return Err(StrategyError::Incompatible(
                        a.name(),
                        b.name(),
                        "a component appears twice",
                    ));
                }
                if a.is_gradient_transform() && b.is_gradient_transform() {
                    return Err(StrategyError::Incompatible(
                        a.name(),
                        b.name(),
                        "only one gradient mask per run",
                    ));
                }
                let full_and_selection =
                    |x: &StrategyConfig, y: &StrategyConfig| matches!(x, StrategyConfig::Full) && y.is_selection();
                if full_and_selection(a, b) || full_and_selection(b, a) {
                    return Err(StrategyError::Incompatible(
                        a.name(),
                        b.name(),
                        "full fine-tuning trains everything, the other restricts what trains",
                    ));
                }
                if matches!(
                    (a, b),
                    (StrategyConfig::Houlsby { .. }, StrategyConfig::Pfeiffer { .. })
                        | (StrategyConfig::Pfeiffer { .. }, StrategyConfig::Houlsby { .. })
                ) {
                    return Err(StrategyError::Incompatible(
                        a.name(),
                        b.name(),
                        "both insert an FFN adapter in the same place",
                    ));
                }
            }
            match a {
                StrategyConfig::ChildTuningF { reserve_p } | StrategyConfig::ChildTuningD { reserve_p }
                    if !(*reserve_p > 0.0 && *reserve_p <= 1.0) =>
                {
                    return Err(StrategyError::Invalid {
                        strategy: a.name(),
                        message: format!("reserve_p must be in (0, 1], got {reserve_p}"),
                    });
                }
                StrategyConfig::Lora {
                    r,
                    alpha,
                    dropout,
                    targets,
                } => {
                    let message = if *r == 0 {
                        Some("rank r must be at least 1".to_string())
                    } else if !(alpha.is_finite() && *alpha > 0.0) {
                        Some(format!(
                            "alpha = {alpha}: must be a positive number (scale = alpha / r)"
                        ))
                    } else if !(0.0..1.0).contains(dropout) {
                        Some(format!("dropout = {dropout}: must be in [0, 1)"))
                    } else {
                        None
                    };
                    if let Some(message) = message {
                        return Err(StrategyError::Invalid {
                            strategy: "lora",
                            message,
                        });
                    }
                    lora_targets(targets)?;
                }
                StrategyConfig::LearnedMask {
                    targets,
                    init,
                    threshold,
                } => {
                    lora_targets(targets).map_err(|e| match e {
                        StrategyError::NoMatch {
                            pattern, candidates, ..
                        } => StrategyError::NoMatch {
                            strategy: "learned_mask",
                            pattern,
                            candidates,
                        },
                        other => other,
                    })?;
                    if init <= threshold {
                        return Err(StrategyError::Invalid {
                            strategy: "learned_mask",
                            message: format!("init {init} must exceed threshold {threshold} (else training starts with every weight masked)"),
                        });
                    }
                }
                StrategyConfig::Ulmfit {
                    cut_frac, ratio, decay, ..
                } if !(*cut_frac > 0.0 && *cut_frac < 1.0 && *ratio >= 1.0 && *decay >= 1.0) => {
                    return Err(StrategyError::Invalid {
                        strategy: "ulmfit",
                        message: format!(
                            "need 0 < cut_frac < 1, ratio ≥ 1, decay ≥ 1 (got {cut_frac}, {ratio}, {decay})"
                        ),
                    });
                }
                StrategyConfig::Houlsby { reduction } | StrategyConfig::Pfeiffer { reduction } if *reduction == 0 => {
                    return Err(StrategyError::Invalid {
                        strategy: a.name(),
                        message: "reduction must be at least 1".into(),
                    });
                }
                // Valid settings of the guarded arms above, and components without settings
                // to check here (model-dependent ones: `check_fits`).
                StrategyConfig::Full
                | StrategyConfig::BitFit
                | StrategyConfig::Lna
                | StrategyConfig::ChildTuningF { .. }
                | StrategyConfig::ChildTuningD { .. }
                | StrategyConfig::Houlsby { .. }
                | StrategyConfig::Pfeiffer { .. }
                | StrategyConfig::Compacter { .. }
                | StrategyConfig::Ladder { .. }
                | StrategyConfig::PromptTuning { .. }
                | StrategyConfig::Ia3
                | StrategyConfig::Ulmfit { .. } => {}
            }
        }
        Ok(Self {
            components: components.to_vec(),
        })
    }

    /// A readable name: components joined by `+` (`full` when empty).
    pub fn name(&self) -> String {
        if self.components.is_empty() {
            "full".into()
        } else {
            self.components
                .iter()
                .map(StrategyConfig::name)
                .collect::<Vec<_>>()
                .join("+")
        }
    }

    /// Whether some component restricts what trains (so checkpoints hold only the tuned part).
    pub fn restricts(&self) -> bool {
        self.components.iter().any(StrategyConfig::is_selection)
    }

    /// Whether the parameter at `path` trains. The head and the feature maps of converted
    /// attention (new parameters, see `BertModel::convert_attention`) train under every strategy.
    pub fn trains(&self, path: &str) -> bool {
        if crate::params::is_fixed(path) {
            return false;
        }
        let selections: Vec<&StrategyConfig> = self.components.iter().filter(|c| c.is_selection()).collect();
        is_head(path)
            || path.contains(".feature_map.")
            || selections.is_empty()
            || selections.iter().any(|c| c.selects(path))
    }

    fn ulmfit(&self) -> Option<(f64, f64, f64, bool)> {
        self.components.iter().find_map(|c| {
            if let StrategyConfig::Ulmfit {
                cut_frac,
                ratio,
                decay,
                gradual_unfreezing,
            } = c
            {
                Some((*cut_frac, *ratio, *decay, *gradual_unfreezing))
            } else {
                None
            }
        })
    }

    /// Learning rate at optimizer step `step` of `total`: ULMFiT's slanted triangular
    /// schedule when configured (its `cut_frac` replaces `warmup`), else linear warm-up and
    /// decay.
    pub fn learning_rate(&self, base: f64, step: usize, warmup: usize, total: usize) -> f64 {
        match self.ulmfit() {
            Some((cut_frac, ratio, _, _)) => slanted_triangular(base, step, total, cut_frac, ratio),
            None => crate::optim::linear_schedule(base, step, warmup, total),
        }
    }

    /// Learning-rate multiplier of a parameter: `1 / decay^depth` under ULMFiT (depth 0 for the
    /// head and pooler, `k` for the `k`-th encoder layer from the top, `num_layers + 1` for the
    /// embeddings); 1 otherwise.
    pub fn lr_scale(&self, path: &str, num_layers: usize) -> f64 {
        match self.ulmfit() {
            Some((_, _, decay, _)) => 1.0 / decay.powi(layer_depth(path, num_layers) as i32),
            None => 1.0,
        }
    }

    /// Whether the parameter at `path` trains during `epoch` (gradual unfreezing opens depth
    /// `epoch` and everything above it).
    pub fn trains_at(&self, path: &str, epoch: usize, num_layers: usize) -> bool {
        let open = match self.ulmfit() {
            Some((_, _, _, true)) => layer_depth(path, num_layers) <= epoch,
            _ => true,
        };
        open && self.trains(path)
    }

    /// Whether what trains changes from epoch to epoch.
    pub fn unfreezes_gradually(&self) -> bool {
        matches!(self.ulmfit(), Some((_, _, _, true)))
    }

    /// The Child-Tuning_D component's `reserve_p`, if any.
    pub fn child_tuning_d(&self) -> Option<f64> {
        self.components.iter().find_map(|c| {
            if let StrategyConfig::ChildTuningD { reserve_p } = c {
                Some(*reserve_p)
            } else {
                None
            }
        })
    }

    /// The Child-Tuning_F component's `reserve_p`, if any.
    pub fn child_tuning_f(&self) -> Option<f64> {
        self.components.iter().find_map(|c| {
            if let StrategyConfig::ChildTuningF { reserve_p } = c {
                Some(*reserve_p)
            } else {
                None
            }
        })
    }

    /// Checks that every component fits `bert` before anything is inserted: LoRA's rank at
    /// most the narrower side of each target linear, an adapter or side-network reduction
    /// that leaves a bottleneck of at least one unit, Compacter's `n` dividing both widths, a
    /// soft prompt shorter than half the positions. [`Tuning::insert`] calls it first; the
    /// trainer calls it before it writes anything.
    ///
    /// # Errors
    /// [`StrategyError::Invalid`] naming the component, the value and the model's limit.
    pub fn check_fits<B: Backend>(&self, bert: &kiln_model::BertModel<B>) -> Result<(), StrategyError> {
        let [_, h] = bert.embeddings.word_embeddings.weight.dims();
        let invalid = |strategy: &'static str, message: String| Err(StrategyError::Invalid { strategy, message });
        for c in &self.components {
            match c {
                StrategyConfig::Lora { r, targets, .. } => {
                    let targets = lora_targets(targets)?;
                    if let Some(layer) = bert.encoder.layer.first() {
                        for (name, d_in, d_out) in linear_shapes(layer) {
                            if targets.contains(&name) && *r > d_in.min(d_out) {
                                return invalid(
                                    "lora",
                                    format!(
                                        "r = {r} exceeds the rank of {name} ({d_in} → {d_out}): at most {}",
                                        d_in.min(d_out)
                                    ),
                                );
                            }
                        }
                    }
                }
                StrategyConfig::Houlsby { reduction }
                | StrategyConfig::Pfeiffer { reduction }
                | StrategyConfig::Ladder { reduction }
                    if *reduction > h =>
                {
                    return invalid(
                        c.name(),
                        format!(
                            "reduction = {reduction} leaves a zero-width bottleneck (hidden size {h}): at most {h}"
                        ),
                    );
                }
                StrategyConfig::Compacter { reduction, n } => {
                    let inner = h / (*reduction).max(1);
                    if *n == 0 || inner == 0 || !h.is_multiple_of(*n) || !inner.is_multiple_of(*n) {
                        return invalid(
                            "compacter",
                            format!("n = {n} must divide the hidden size {h} and the bottleneck width {inner} (reduction {reduction})"),
                        );
                    }
                }
                StrategyConfig::PromptTuning { n_virtual } => {
                    let max_pos = bert.embeddings.position_embeddings.weight.dims()[0];
                    if *n_virtual == 0 || *n_virtual >= max_pos / 2 {
                        return invalid(
                            "prompt_tuning",
                            format!(
                                "n_virtual = {n_virtual}: must be in 1..{} (half the model's {max_pos} positions)",
                                max_pos / 2
                            ),
                        );
                    }
                }
                StrategyConfig::Full
                | StrategyConfig::BitFit
                | StrategyConfig::Lna
                | StrategyConfig::ChildTuningF { .. }
                | StrategyConfig::ChildTuningD { .. }
                | StrategyConfig::Houlsby { .. }
                | StrategyConfig::Pfeiffer { .. }
                | StrategyConfig::Ladder { .. }
                | StrategyConfig::Ia3
                | StrategyConfig::LearnedMask { .. }
                | StrategyConfig::Ulmfit { .. } => {}
            }
        }
        Ok(())
    }

    /// Inserts the modules the components need (LoRA deltas, adapters), drawing their
    /// initialisation from the backend RNG.
    ///
    /// # Errors
    /// A LoRA target pattern that matches nothing.
    pub fn insert<B: Backend>(
        &self,
        mut model: SequenceClassifier<B>,
        device: &B::Device,
    ) -> Result<SequenceClassifier<B>, StrategyError> {
        self.check_fits(&model.bert)?;
        for c in &self.components {
            match c {
                StrategyConfig::Lora {
                    r,
                    alpha,
                    dropout,
                    targets,
                } => {
                    let targets = lora_targets(targets)?;
                    for layer in &mut model.bert.encoder.layer {
                        let [query, key, value, attention_output, intermediate, output] =
                            linear_shapes(layer).map(|(name, d_in, d_out)| {
                                targets
                                    .contains(&name)
                                    .then(|| LoraDelta::new(d_in, d_out, *r, *alpha, *dropout, device))
                            });
                        layer.inserts.lora = Some(LayerLora {
                            query,
                            key,
                            value,
                            attention_output,
                            intermediate,
                            output,
                        });
                    }
                }
                StrategyConfig::Houlsby { reduction } | StrategyConfig::Pfeiffer { reduction } => {
                    let houlsby = matches!(c, StrategyConfig::Houlsby { .. });
                    for layer in &mut model.bert.encoder.layer {
                        let h = layer.attention.self_attention.query.weight.dims()[0];
                        let act = layer.intermediate.activation;
                        if houlsby {
                            layer.inserts.attention_adapter = Some(Bottleneck::new(h, *reduction, act, device));
                        }
                        layer.inserts.ffn_adapter = Some(Bottleneck::new(h, *reduction, act, device));
                    }
                }
                StrategyConfig::Ladder { reduction } => {
                    let d = model.bert.embeddings.word_embeddings.weight.dims()[1];
                    let layers = model.bert.num_layers();
                    let act = model.bert.encoder.layer[0].intermediate.activation;
                    model.side = Some(
                        crate::ladder::LadderSide::new(d, layers, *reduction, act, device).map_err(|message| {
                            StrategyError::Invalid {
                                strategy: "ladder",
                                message,
                            }
                        })?,
                    );
                }
                StrategyConfig::Compacter { reduction, n } => {
                    let h = model.bert.embeddings.word_embeddings.weight.dims()[1];
                    model.bert.encoder.shared.phm_rules = Some(Param::from_tensor(Tensor::random(
                        [*n, *n, *n],
                        Distribution::Normal(0.0, 1.0 / *n as f64),
                        device,
                    )));
                    for layer in &mut model.bert.encoder.layer {
                        let act = layer.intermediate.activation;
                        layer.inserts.attention_compacter = Some(CompacterAdapter::new(h, *reduction, *n, act, device));
                        layer.inserts.ffn_compacter = Some(CompacterAdapter::new(h, *reduction, *n, act, device));
                    }
                }
                StrategyConfig::PromptTuning { n_virtual } => {
                    let [vocab, hidden] = model.bert.embeddings.word_embeddings.weight.dims();
                    // Lester et al. initialise from sampled vocabulary embeddings; skip the
                    // first 1000 ids, which hold BERT's [PAD]/[unused*]/special tokens.
                    let low = 1000.min(vocab - 1) as f64;
                    let ids = Tensor::<B, 1>::random([*n_virtual], Distribution::Uniform(low, vocab as f64), device)
                        .floor()
                        .int()
                        .clamp(0, vocab as i64 - 1);
                    let rows = model.bert.embeddings.word_embeddings.weight.val().select(0, ids);
                    debug_assert_eq!(rows.dims(), [*n_virtual, hidden]);
                    model.bert.prompt = Some(Param::from_tensor(rows.detach()));
                }
                StrategyConfig::Ia3 => {
                    for layer in &mut model.bert.encoder.layer {
                        let h = layer.attention.self_attention.query.weight.dims()[0];
                        let ffn = layer.intermediate.dense.weight.dims()[1];
                        layer.inserts.ia3 = Some(LayerIa3::new(h, ffn, device));
                    }
                }
                StrategyConfig::LearnedMask {
                    targets,
                    init,
                    threshold,
                } => {
                    let targets = lora_targets(targets)?;
                    for layer in &mut model.bert.encoder.layer {
                        let [query, key, value, attention_output, intermediate, output] =
                            linear_shapes(layer).map(|(name, d_in, d_out)| {
                                targets
                                    .contains(&name)
                                    .then(|| WeightMask::new(d_in, d_out, *init, *threshold, device))
                            });
                        layer.inserts.masks = Some(LayerMasks {
                            query,
                            key,
                            value,
                            attention_output,
                            intermediate,
                            output,
                        });
                    }
                }
                // Nothing to insert: they select or mask existing parameters.
                StrategyConfig::Full
                | StrategyConfig::BitFit
                | StrategyConfig::Lna
                | StrategyConfig::ChildTuningF { .. }
                | StrategyConfig::ChildTuningD { .. }
                | StrategyConfig::Ulmfit { .. } => {}
            }
        }
        Ok(model)
    }

    /// Marks frozen parameters `require_grad = false` so backward computes no gradient for
    /// them (less time and memory), and returns the model.
    pub fn freeze<B: AutodiffBackend>(&self, model: SequenceClassifier<B>) -> SequenceClassifier<B> {
        crate::params::set_trainable(model, |path| self.trains(path))
    }

    /// [`Tuning::freeze`] for `epoch` of gradual unfreezing.
    pub fn freeze_at<B: AutodiffBackend>(&self, model: SequenceClassifier<B>, epoch: usize) -> SequenceClassifier<B> {
        let layers = model.bert.num_layers();
        crate::params::set_trainable(model, |path| self.trains_at(path, epoch, layers))
    }
}

/// ULMFiT's slanted triangular learning rate (Howard & Ruder 2018, eq. 3) at step `t` of `total`.
pub fn slanted_triangular(base: f64, t: usize, total: usize, cut_frac: f64, ratio: f64) -> f64 {
    let cut = ((total as f64 * cut_frac).floor()).max(1.0);
    let t = t as f64;
    let p = if t < cut {
        t / cut
    } else {
        1.0 - (t - cut) / (cut * (1.0 / cut_frac - 1.0))
    };
    base * (1.0 + p.max(0.0) * (ratio - 1.0)) / ratio
}

/// Depth of a parameter from the top: 0 for the head and pooler (anything outside the encoder
/// and embeddings), `num_layers − i` for encoder layer `i` (so the top layer is 1), and
/// `num_layers + 1` for the embeddings.
fn layer_depth(path: &str, num_layers: usize) -> usize {
    if path.starts_with("bert.embeddings.") {
        return num_layers + 1;
    }
    if let Some(rest) = path.strip_prefix("bert.encoder.layer.") {
        if let Some(i) = rest.split('.').next().and_then(|i| i.parse::<usize>().ok()) {
            return num_layers - i;
        }
    }
    0
}

/// Trainable-parameter report: counts per top-level module group and in total.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainableReport {
    /// Strategy name.
    pub strategy: String,
    /// Trainable parameters.
    pub trainable: usize,
    /// All parameters (including inserted ones).
    pub total: usize,
    /// `trainable / total · 100`.
    pub percent: f64,
    /// `(module, trainable, total)` per module group (`embeddings`, `layer.N.attention`, ...).
    pub per_module: Vec<(String, usize, usize)>,
}

impl TrainableReport {
    /// Counts `params` under `tuning`.
    pub fn new(tuning: &Tuning, params: &[ParamInfo]) -> Self {
        let mut per: Vec<(String, usize, usize)> = Vec::new();
        let (mut trainable, mut total) = (0, 0);
        for p in params {
            let group = module_group(&p.path);
            let n = p.numel();
            let t = if tuning.trains(&p.path) { n } else { 0 };
            trainable += t;
            total += n;
            match per.iter_mut().find(|(g, _, _)| *g == group) {
                Some(entry) => {
                    entry.1 += t;
                    entry.2 += n;
                }
                None => per.push((group, t, n)),
            }
        }
        Self {
            strategy: tuning.name(),
            trainable,
            total,
            percent: 100.0 * trainable as f64 / total.max(1) as f64,
            per_module: per,
        }
    }
}

/// `bert.encoder.layer.3.attention.output.dense.weight` → `layer.3.attention`;
/// `bert.embeddings.*` → `embeddings`; else the first two path components.
fn module_group(path: &str) -> String {
    let parts: Vec<&str> = path.split('.').collect();
    match parts.as_slice() {
        ["bert", "encoder", "layer", i, "inserts", kind, ..] => format!("layer.{i}.inserts.{kind}"),
        ["bert", "encoder", "layer", i, block, ..] => format!("layer.{i}.{block}"),
        ["bert", module, ..] => (*module).to_string(),
        [first, ..] => (*first).to_string(),
        [] => String::new(),
    }
}

/// Whether Child-Tuning_D gives the parameter at `path` a mask: encoder-layer weights of the
/// pretrained model (the authors' `'layer' in name`), not embeddings, pooler, head or inserts.
pub fn child_d_eligible(path: &str) -> bool {
    path.starts_with("bert.encoder.layer.") && !path.contains(".inserts.")
}

/// numpy's default `percentile` (linear interpolation between closest ranks) of `values`,
/// `q` in `[0, 100]`. Reorders `values`.
pub fn percentile(values: &mut [f32], q: f64) -> f32 {
    assert!(!values.is_empty(), "percentile of nothing");
    let pos = q / 100.0 * (values.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let (_, &mut lo_v, upper) = values.select_nth_unstable_by(lo, f32::total_cmp);
    let hi_v = if hi == lo {
        lo_v
    } else {
        // The (lo+1)-th smallest is the minimum of the upper part.
        upper.iter().copied().fold(f32::INFINITY, f32::min)
    };
    (lo_v as f64 + (hi_v as f64 - lo_v as f64) * (pos - lo as f64)) as f32
}

/// Child-Tuning_D's empirical Fisher and mask.
///
/// For each of `n_batches` batches (`loss_of(model, i)`: the task loss in train mode),
/// backward, clip each eligible tensor's gradient to L2 norm 1 on its own (PyTorch's
/// `clip_grad_norm_(p, 1)`), and accumulate `g² / n_batches` into one accumulator per tensor;
/// gradients are dropped batch by batch. The mask keeps elements whose Fisher is at least the
/// global `(1 − reserve_p)` percentile over every eligible element (one threshold).
///
/// # Errors
/// Whatever `loss_of` returns.
pub fn child_tuning_d_mask<B, E>(
    model: &SequenceClassifier<B>,
    n_batches: usize,
    reserve_p: f64,
    mut loss_of: impl FnMut(&SequenceClassifier<B>, usize) -> Result<Tensor<B, 1>, E>,
) -> Result<ChildMask<B::InnerBackend>, E>
where
    B: AutodiffBackend,
{
    let infos: Vec<ParamInfo> = crate::params::param_infos(model)
        .into_iter()
        .filter(|p| child_d_eligible(&p.path))
        .collect();
    let mut fisher: HashMap<String, Tensor<B::InnerBackend, 1>> = HashMap::new();
    for i in 0..n_batches {
        let loss = loss_of(model, i)?;
        let mut grads = burn::optim::GradientsParams::from_grads(loss.backward(), model);
        for p in &infos {
            let g: Option<Tensor<B::InnerBackend, 1>> = match p.shape.len() {
                1 => grads.remove::<B::InnerBackend, 1>(p.id),
                2 => grads.remove::<B::InnerBackend, 2>(p.id).map(|g| g.reshape([p.numel()])),
                _ => None,
            };
            let Some(g) = g else { continue };
            let norm = g.clone().powi_scalar(2).sum().into_scalar().elem::<f64>().sqrt();
            let coef = 1.0 / (norm + 1e-6);
            let g = if coef < 1.0 { g.mul_scalar(coef) } else { g };
            let add = g.powi_scalar(2).div_scalar(n_batches as f64);
            let acc = match fisher.remove(&p.path) {
                Some(acc) => acc + add,
                None => add,
            };
            fisher.insert(p.path.clone(), acc);
        }
    }
    let mut all: Vec<f32> = Vec::new();
    for p in &infos {
        if let Some(f) = fisher.get(&p.path) {
            all.extend(f.clone().into_data().convert::<f32>().to_vec::<f32>().expect("f32"));
        }
    }
    if all.is_empty() {
        return Ok(ChildMask::Fixed(HashMap::new()));
    }
    let threshold = percentile(&mut all, (1.0 - reserve_p) * 100.0);
    tracing::info!(threshold, elements = all.len(), reserve_p, "Child-Tuning_D mask");
    let masks = fisher
        .into_iter()
        .map(|(path, f)| (path, f.greater_equal_elem(threshold).float()))
        .collect();
    Ok(ChildMask::Fixed(masks))
}

/// Errors of saving or loading a tuned part.
#[derive(Debug, thiserror::Error)]
pub enum TunedIoError {
    /// File system.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Not a valid safetensors file.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file and the model disagree.
    #[error("{path}: tuned tensors do not fit the model: missing {missing:?}, wrong shape {wrong_shape:?}")]
    Mismatch {
        /// The file.
        path: std::path::PathBuf,
        /// Trained paths of the model the file lacks.
        missing: Vec<String>,
        /// `path: file shape vs model shape`.
        wrong_shape: Vec<String>,
    },
}

struct Collect<'a> {
    tuning: &'a Tuning,
    stack: Vec<String>,
    out: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl<B: Backend> burn::module::ModuleVisitor<B> for Collect<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let path = self.stack.join(".");
        if self.tuning.trains(&path) {
            let t = param.val();
            let shape = t.dims().to_vec();
            let data = t.into_data().convert::<f32>().to_vec::<f32>().expect("f32");
            self.out.push((path, shape, data));
        }
    }
}

/// The trained tensors of `model` under `tuning` as a safetensors file (kiln paths, f32), with
/// the strategy in the metadata (`kiln.tuning`). Full fine-tuning saves everything.
pub fn tuned_bytes<B: Backend>(model: &SequenceClassifier<B>, tuning: &Tuning) -> Vec<u8> {
    let mut c = Collect {
        tuning,
        stack: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut c);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = c
        .out
        .into_iter()
        .map(|(p, s, d)| (p, s, d.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(p, s, b)| {
            (
                p.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).expect("consistent view"),
            )
        })
        .collect();
    let meta = HashMap::from([(
        "kiln.tuning".to_string(),
        serde_json::to_string(&tuning.components).expect("json"),
    )]);
    safetensors::serialize(views, Some(meta)).expect("serialize")
}

struct Apply<'a> {
    tensors: &'a HashMap<String, (Vec<usize>, Vec<f32>)>,
    tuning: &'a Tuning,
    stack: Vec<String>,
    missing: Vec<String>,
    wrong_shape: Vec<String>,
}

impl<B: Backend> ModuleMapper<B> for Apply<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let path = self.stack.join(".");
        if !self.tuning.trains(&path) {
            return param;
        }
        let Some((shape, data)) = self.tensors.get(&path) else {
            self.missing.push(path);
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        if shape.as_slice() != tensor.dims().as_slice() {
            self.wrong_shape
                .push(format!("{path}: {shape:?} vs {:?}", tensor.dims()));
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let require_grad = tensor.is_require_grad();
        let loaded = Tensor::<B, D>::from_data(
            burn::tensor::TensorData::new(data.clone(), shape.clone()),
            &tensor.device(),
        )
        .set_require_grad(require_grad);
        Param::from_mapped_value(id, loaded, mapper)
    }
}

/// Writes [`tuned_bytes`] atomically to `path`.
///
/// # Errors
/// [`TunedIoError::Io`].
pub fn save_tuned<B: Backend>(
    model: &SequenceClassifier<B>,
    tuning: &Tuning,
    path: &std::path::Path,
) -> Result<(), TunedIoError> {
    crate::checkpoint::write_atomic(path, &tuned_bytes(model, tuning)).map_err(|e| TunedIoError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// The strategy stored in a tuned-part file.
///
/// # Errors
/// [`TunedIoError`] when the file cannot be read or has no valid `kiln.tuning` metadata.
pub fn read_tuning(path: &std::path::Path) -> Result<Tuning, TunedIoError> {
    let bytes = std::fs::read(path).map_err(|source| TunedIoError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let format = |message: String| TunedIoError::Format {
        path: path.to_path_buf(),
        message,
    };
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| format(e.to_string()))?;
    let text = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("kiln.tuning"))
        .ok_or_else(|| format("no kiln.tuning metadata".into()))?;
    let components: Vec<StrategyConfig> = serde_json::from_str(text).map_err(|e| format(e.to_string()))?;
    Tuning::new(&components).map_err(|e| format(e.to_string()))
}

/// Loads a tuned part saved by [`save_tuned`] into `model`, which must already carry the
/// strategy's inserted modules ([`Tuning::insert`]) on top of the same base weights.
///
/// # Errors
/// [`TunedIoError`]: unreadable file, or tensors missing or of the wrong shape.
pub fn load_tuned<B: Backend>(
    model: SequenceClassifier<B>,
    tuning: &Tuning,
    path: &std::path::Path,
) -> Result<SequenceClassifier<B>, TunedIoError> {
    let bytes = std::fs::read(path).map_err(|source| TunedIoError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| TunedIoError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(TunedIoError::Format {
                path: path.to_path_buf(),
                message: format!("{name}: dtype {:?}, expected F32", view.dtype()),
            });
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.insert(name, (view.shape().to_vec(), data));
    }
    let mut apply = Apply {
        tensors: &tensors,
        tuning,
        stack: Vec::new(),
        missing: Vec::new(),
        wrong_shape: Vec::new(),
    };
    let model = model.map(&mut apply);
    if !apply.missing.is_empty() || !apply.wrong_shape.is_empty() {
        return Err(TunedIoError::Mismatch {
            path: path.to_path_buf(),
            missing: apply.missing,
            wrong_shape: apply.wrong_shape,
        });
    }
    Ok(model)
}
