//! Ladder side-tuning (Sung et al. 2022): a `reduction`-times narrower side network fed by
//! the frozen backbone's hidden states through learned gates (see [`crate::ladder`]); only
//! the side network, the pooler and the head train, with no backpropagation through the
//! backbone.

use kiln_model::roles::{ParamRole, Site};
use serde::{Deserialize, Serialize};

use super::adapters::check_bottleneck;
use super::{Effect, InsertSpec, ModelShape, Strategy, StrategyError};

fn default_reduction() -> usize {
    8
}

/// A ladder side network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ladder {
    /// Backbone width / side width.
    #[serde(default = "default_reduction")]
    pub reduction: usize,
}

impl Strategy for Ladder {
    fn name(&self) -> &'static str {
        "ladder"
    }
    fn effect(&self) -> Effect {
        Effect::Selects
    }
    fn check_fits(&self, model: &ModelShape) -> Result<(), StrategyError> {
        check_bottleneck(self.name(), self.reduction, model)
    }
    fn inserts(&self) -> Result<Vec<InsertSpec>, StrategyError> {
        Ok(vec![InsertSpec::Side {
            reduction: self.reduction,
        }])
    }
    fn selects(&self, role: &ParamRole) -> bool {
        matches!(role.site, Site::Side | Site::Pooler)
    }
}
