//! Bottleneck adapters: Houlsby et al. 2019 (after the attention output and after the FFN
//! output) and Pfeiffer et al. 2021 (after the FFN output only). The adapters and every
//! LayerNorm train.

use kiln_model::roles::{Insert, ParamRole, Part};
use serde::{Deserialize, Serialize};

use super::{invalid, Effect, InsertSpec, ModelShape, Strategy, StrategyError};

fn default_reduction() -> usize {
    16
}

fn check_reduction(strategy: &'static str, reduction: usize) -> Result<(), StrategyError> {
    if reduction == 0 {
        invalid(strategy, "reduction must be at least 1")
    } else {
        Ok(())
    }
}

/// `reduction` must leave a bottleneck of at least one unit.
pub(super) fn check_bottleneck(
    strategy: &'static str,
    reduction: usize,
    model: &ModelShape,
) -> Result<(), StrategyError> {
    let h = model.hidden;
    if reduction > h {
        invalid(
            strategy,
            format!("reduction = {reduction} leaves a zero-width bottleneck (hidden size {h}): at most {h}"),
        )
    } else {
        Ok(())
    }
}

fn selects_adapters(role: &ParamRole) -> bool {
    matches!(role.part, Part::Insert(Insert::AttentionAdapter | Insert::FfnAdapter)) || role.is_norm()
}

/// A bottleneck-adapter strategy: its config struct (`reduction`) and its [`Strategy`] impl,
/// which differ between Houlsby and Pfeiffer only in name and placement.
macro_rules! adapter_strategy {
    ($(#[$doc:meta])* $ty:ident, $name:literal, after_attention = $after:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $ty {
            /// Hidden size / bottleneck width.
            #[serde(default = "default_reduction")]
            pub reduction: usize,
        }

        impl Strategy for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn effect(&self) -> Effect {
                Effect::Selects
            }
            fn validate(&self) -> Result<(), StrategyError> {
                check_reduction(self.name(), self.reduction)
            }
            fn check_fits(&self, model: &ModelShape) -> Result<(), StrategyError> {
                check_bottleneck(self.name(), self.reduction, model)
            }
            fn inserts(&self) -> Result<Vec<InsertSpec>, StrategyError> {
                Ok(vec![InsertSpec::Adapters {
                    after_attention: $after,
                    reduction: self.reduction,
                }])
            }
            fn selects(&self, role: &ParamRole) -> bool {
                selects_adapters(role)
            }
        }
    };
}

adapter_strategy!(
    /// Houlsby adapters: after the attention output and after the FFN output.
    Houlsby,
    "houlsby",
    after_attention = true
);
adapter_strategy!(
    /// Pfeiffer adapters: after the FFN output only.
    Pfeiffer,
    "pfeiffer",
    after_attention = false
);
