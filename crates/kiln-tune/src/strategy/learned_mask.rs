//! Learned binary masks over the chosen linears' pretrained weights (Zhao et al. 2020): a
//! real score per weight, thresholded in the forward pass with a straight-through gradient;
//! only the scores and the head train.

use kiln_model::roles::{Insert, LinearSlot, ParamRole, Part};
use serde::{Deserialize, Serialize};

use super::{invalid, targets::linear_targets, Effect, InsertSpec, Strategy, StrategyError};

fn all_linears() -> Vec<String> {
    LinearSlot::ALL.iter().map(|s| s.name().to_string()).collect()
}
fn default_init() -> f64 {
    0.01
}
fn default_threshold() -> f64 {
    0.005
}

/// Learned weight masks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnedMask {
    /// Linears, as LoRA's `targets`.
    #[serde(default = "all_linears")]
    pub targets: Vec<String>,
    /// Initial score (above `threshold`: start from the pretrained weights).
    #[serde(default = "default_init")]
    pub init: f64,
    /// Mask threshold.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
}

impl Strategy for LearnedMask {
    fn name(&self) -> &'static str {
        "learned_mask"
    }
    fn effect(&self) -> Effect {
        Effect::Selects
    }
    fn validate(&self) -> Result<(), StrategyError> {
        linear_targets(self.name(), &self.targets)?;
        let (init, threshold) = (self.init, self.threshold);
        if init <= threshold {
            return invalid(
                "learned_mask",
                format!(
                    "init {init} must exceed threshold {threshold} (else training starts with every weight masked)"
                ),
            );
        }
        Ok(())
    }
    fn inserts(&self) -> Result<Vec<InsertSpec>, StrategyError> {
        Ok(vec![InsertSpec::Masks {
            slots: linear_targets(self.name(), &self.targets)?,
            init: self.init,
            threshold: self.threshold,
        }])
    }
    fn selects(&self, role: &ParamRole) -> bool {
        matches!(role.part, Part::Insert(Insert::Mask(_)))
    }
}
