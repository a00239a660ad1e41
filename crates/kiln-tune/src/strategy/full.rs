//! Full fine-tuning: every parameter trains.

use serde::{Deserialize, Serialize};

use super::{Effect, Strategy};

/// Every parameter trains (also what an empty strategy list means).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Full {}

impl Strategy for Full {
    fn name(&self) -> &'static str {
        "full"
    }
    fn effect(&self) -> Effect {
        Effect::TrainsAll
    }
}
