//! Prompt tuning (Lester et al. 2021): a soft prompt of `n_virtual` vectors prepended to the
//! word embeddings, initialised from the embeddings of random vocabulary tokens; only the
//! prompt and the head train.

use kiln_model::roles::{ParamRole, Site};
use serde::{Deserialize, Serialize};

use super::{invalid, Effect, InsertSpec, ModelShape, Strategy, StrategyError};

fn default_virtual() -> usize {
    20
}

/// A soft prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptTuning {
    /// Number of virtual tokens.
    #[serde(default = "default_virtual")]
    pub n_virtual: usize,
}

impl Strategy for PromptTuning {
    fn name(&self) -> &'static str {
        "prompt_tuning"
    }
    fn effect(&self) -> Effect {
        Effect::Selects
    }
    fn check_fits(&self, model: &ModelShape) -> Result<(), StrategyError> {
        let (n, max_pos) = (self.n_virtual, model.max_positions);
        if n == 0 || n >= max_pos / 2 {
            return invalid(
                "prompt_tuning",
                format!(
                    "n_virtual = {n}: must be in 1..{} (half the model's {max_pos} positions)",
                    max_pos / 2
                ),
            );
        }
        Ok(())
    }
    fn inserts(&self) -> Result<Vec<InsertSpec>, StrategyError> {
        Ok(vec![InsertSpec::Prompt {
            n_virtual: self.n_virtual,
        }])
    }
    fn selects(&self, role: &ParamRole) -> bool {
        role.site == Site::Prompt
    }
    fn extra_positions(&self) -> usize {
        self.n_virtual
    }
}
