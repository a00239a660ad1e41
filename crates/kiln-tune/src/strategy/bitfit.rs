//! BitFit (Ben Zaken et al. 2022): only the biases (and LayerNorm shifts) train.

use kiln_model::roles::ParamRole;
use serde::{Deserialize, Serialize};

use super::{Effect, Strategy};

/// Biases and LayerNorm shifts (and the head) train.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitFit {}

impl Strategy for BitFit {
    fn name(&self) -> &'static str {
        "bit_fit"
    }
    fn effect(&self) -> Effect {
        Effect::Selects
    }
    fn selects(&self, role: &ParamRole) -> bool {
        role.is_bias()
    }
}
