//! LNA (Li et al. 2021): LayerNorms and attention train; FFN and embeddings stay frozen.

use kiln_model::roles::{ParamRole, Part, Site};
use serde::{Deserialize, Serialize};

use super::{Effect, Strategy};

/// Every LayerNorm, and each encoder layer's attention block (Q/K/V/O projections and the
/// mechanism's own parameters), train.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lna {}

impl Strategy for Lna {
    fn name(&self) -> &'static str {
        "lna"
    }
    fn effect(&self) -> Effect {
        Effect::Selects
    }
    fn selects(&self, role: &ParamRole) -> bool {
        let attention = match role.part {
            Part::Linear(slot) => slot.in_attention(),
            Part::FusedQkv | Part::Norm | Part::Mechanism { .. } => true,
            Part::Embedding | Part::Insert(_) | Part::Whole => false,
        };
        role.is_norm() || (matches!(role.site, Site::Layer(_)) && attention)
    }
}
