//! (IA)³ (Liu et al. 2022): learned rescaling of keys, values and the FFN inner activation,
//! initialised to one; only the scales and the head train.

use kiln_model::roles::{Insert, ParamRole, Part};
use serde::{Deserialize, Serialize};

use super::{Effect, InsertSpec, Strategy, StrategyError};

/// (IA)³ scales.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ia3 {}

impl Strategy for Ia3 {
    fn name(&self) -> &'static str {
        "ia3"
    }
    fn effect(&self) -> Effect {
        Effect::Selects
    }
    fn inserts(&self) -> Result<Vec<InsertSpec>, StrategyError> {
        Ok(vec![InsertSpec::Ia3])
    }
    fn selects(&self, role: &ParamRole) -> bool {
        role.part == Part::Insert(Insert::Ia3)
    }
}
