//! ULMFiT (Howard & Ruder 2018): slanted triangular learning rate, discriminative learning
//! rates (÷`decay` per layer going down) and gradual unfreezing (the head in the first epoch,
//! one more layer each epoch, embeddings last). It changes when and how fast parameters
//! train, not which.

use kiln_model::roles::{ParamRole, Site};
use serde::{Deserialize, Serialize};

use super::{invalid, Effect, Strategy, StrategyError};

fn default_cut_frac() -> f64 {
    0.1
}
fn default_ratio() -> f64 {
    32.0
}
fn default_decay() -> f64 {
    2.6
}
fn yes() -> bool {
    true
}

/// ULMFiT's schedules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ulmfit {
    /// Fraction of steps spent increasing the learning rate.
    #[serde(default = "default_cut_frac")]
    pub cut_frac: f64,
    /// Peak / lowest learning rate.
    #[serde(default = "default_ratio")]
    pub ratio: f64,
    /// Per-layer learning-rate divisor (1 = off).
    #[serde(default = "default_decay")]
    pub decay: f64,
    /// Whether to unfreeze gradually.
    #[serde(default = "yes")]
    pub gradual_unfreezing: bool,
}

/// Depth of a parameter from the top: 0 for the head, pooler, prompt and anything outside the
/// encoder and embeddings, `num_layers − i` for encoder layer `i` (so the top layer is 1),
/// and `num_layers + 1` for the embeddings.
fn depth(role: &ParamRole, num_layers: usize) -> usize {
    match role.site {
        Site::Embeddings => num_layers + 1,
        Site::Layer(i) => num_layers - i,
        Site::Shared | Site::Pooler | Site::Prompt | Site::Final | Site::Head | Site::Side => 0,
    }
}

impl Strategy for Ulmfit {
    fn name(&self) -> &'static str {
        "ulmfit"
    }
    fn effect(&self) -> Effect {
        Effect::Schedules
    }
    fn validate(&self) -> Result<(), StrategyError> {
        let Self {
            cut_frac, ratio, decay, ..
        } = self;
        if !(*cut_frac > 0.0 && *cut_frac < 1.0 && *ratio >= 1.0 && *decay >= 1.0) {
            return invalid(
                "ulmfit",
                format!("need 0 < cut_frac < 1, ratio ≥ 1, decay ≥ 1 (got {cut_frac}, {ratio}, {decay})"),
            );
        }
        Ok(())
    }
    fn learning_rate(&self, base: f64, step: usize, total: usize) -> Option<f64> {
        Some(slanted_triangular(base, step, total, self.cut_frac, self.ratio))
    }
    fn lr_scale(&self, role: &ParamRole, num_layers: usize) -> f64 {
        1.0 / self.decay.powi(depth(role, num_layers) as i32)
    }
    fn open_at(&self, role: &ParamRole, epoch: usize, num_layers: usize) -> bool {
        !self.gradual_unfreezing || depth(role, num_layers) <= epoch
    }
    fn unfreezes_gradually(&self) -> bool {
        self.gradual_unfreezing
    }
}

/// ULMFiT's slanted triangular learning rate (Howard & Ruder 2018, eq. 3) at step `t` of `total`.
pub fn slanted_triangular(base: f64, t: usize, total: usize, cut_frac: f64, ratio: f64) -> f64 {
    let cut = ((total as f64 * cut_frac).floor()).max(1.0);
    let t = t as f64;
    let p = if t < cut {
        t / cut
    } else {
        1.0 - (t - cut) / (cut * (1.0 / cut_frac - 1.0))
    };
    base * (1.0 + p.max(0.0) * (ratio - 1.0)) / ratio
}
