//! Compacter (Karimi Mahabadi et al. 2021): Houlsby-placed adapters whose projections are
//! PHM layers with rank-one factors and rule matrices shared across all layers. The
//! adapters, the shared rules and every LayerNorm train.

use kiln_model::roles::{Insert, ParamRole, Part};
use serde::{Deserialize, Serialize};

use super::{invalid, Effect, InsertSpec, ModelShape, Strategy, StrategyError};

fn default_reduction() -> usize {
    32
}
fn default_n() -> usize {
    4
}

/// Compacter adapters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compacter {
    /// Hidden size / bottleneck width.
    #[serde(default = "default_reduction")]
    pub reduction: usize,
    /// Number of Kronecker terms (must divide the hidden size and the bottleneck width).
    #[serde(default = "default_n")]
    pub n: usize,
}

impl Strategy for Compacter {
    fn name(&self) -> &'static str {
        "compacter"
    }
    fn effect(&self) -> Effect {
        Effect::Selects
    }
    fn check_fits(&self, model: &ModelShape) -> Result<(), StrategyError> {
        let (h, n, reduction) = (model.hidden, self.n, self.reduction);
        let inner = h / reduction.max(1);
        if n == 0 || inner == 0 || !h.is_multiple_of(n) || !inner.is_multiple_of(n) {
            return invalid(
                "compacter",
                format!(
                    "n = {n} must divide the hidden size {h} and the bottleneck width {inner} (reduction {reduction})"
                ),
            );
        }
        Ok(())
    }
    fn inserts(&self) -> Result<Vec<InsertSpec>, StrategyError> {
        Ok(vec![InsertSpec::Compacter {
            reduction: self.reduction,
            n: self.n,
        }])
    }
    fn selects(&self, role: &ParamRole) -> bool {
        matches!(
            role.part,
            Part::Insert(Insert::AttentionCompacter | Insert::FfnCompacter | Insert::PhmRules)
        ) || role.is_norm()
    }
}
