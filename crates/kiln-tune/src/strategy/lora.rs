//! LoRA (Hu et al. 2021): trainable low-rank deltas on chosen linears; only they (and the
//! head) train. Exportable to PEFT's layout ([`crate::export`]).

use kiln_model::roles::{Insert, LinearSlot, ParamRole, Part};
use serde::{Deserialize, Serialize};

use super::{invalid, lora_targets, Effect, InsertSpec, ModelShape, Strategy, StrategyError};

fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    16.0
}
fn default_targets() -> Vec<String> {
    vec!["query".into(), "value".into()]
}

/// LoRA deltas on chosen linears.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lora {
    /// Rank.
    #[serde(default = "default_r")]
    pub r: usize,
    /// Scale numerator (`scale = alpha / r`).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dropout on the LoRA path.
    #[serde(default)]
    pub dropout: f64,
    /// Linears: any of `query key value attention_output intermediate output`, or patterns
    /// over them (`re:` regex, exact, or suffix; the HF module paths match too).
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
}

impl Default for Lora {
    fn default() -> Self {
        Self {
            r: default_r(),
            alpha: default_alpha(),
            dropout: 0.0,
            targets: default_targets(),
        }
    }
}

impl Lora {
    /// The targeted linears.
    ///
    /// # Errors
    /// A pattern that matches nothing.
    pub fn slots(&self) -> Result<Vec<LinearSlot>, StrategyError> {
        lora_targets(&self.targets)
    }
}

impl Strategy for Lora {
    fn name(&self) -> &'static str {
        "lora"
    }
    fn effect(&self) -> Effect {
        Effect::Selects
    }
    fn validate(&self) -> Result<(), StrategyError> {
        let Self { r, alpha, dropout, .. } = self;
        if *r == 0 {
            return invalid("lora", "rank r must be at least 1");
        }
        if !(alpha.is_finite() && *alpha > 0.0) {
            return invalid(
                "lora",
                format!("alpha = {alpha}: must be a positive number (scale = alpha / r)"),
            );
        }
        if !(0.0..1.0).contains(dropout) {
            return invalid("lora", format!("dropout = {dropout}: must be in [0, 1)"));
        }
        self.slots().map(drop)
    }
    fn check_fits(&self, model: &ModelShape) -> Result<(), StrategyError> {
        let r = self.r;
        for slot in self.slots()? {
            let (d_in, d_out) = model.linear_dims(slot);
            if r > d_in.min(d_out) {
                return invalid(
                    "lora",
                    format!(
                        "r = {r} exceeds the rank of {} ({d_in} → {d_out}): at most {}",
                        slot.name(),
                        d_in.min(d_out)
                    ),
                );
            }
        }
        Ok(())
    }
    fn inserts(&self) -> Result<Vec<InsertSpec>, StrategyError> {
        Ok(vec![InsertSpec::Lora {
            slots: self.slots()?,
            r: self.r,
            alpha: self.alpha,
            dropout: self.dropout,
        }])
    }
    fn selects(&self, role: &ParamRole) -> bool {
        matches!(role.part, Part::Insert(Insert::Lora(_)))
    }
}
