//! Child-Tuning (Xu et al. 2021): mask the gradients of whatever trains, after clipping and
//! before the AdamW moments, as the authors' `ChildTuningAdamW`. `_F` draws a fresh
//! Bernoulli mask each step; `_D` fixes one from the empirical Fisher information of the task
//! loss ([`child_tuning_d_mask`], run by the trainer before training).

use std::collections::HashMap;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Distribution;
use kiln_model::roles::{ParamRole, Site};
use serde::{Deserialize, Serialize};

use super::{invalid, Effect, GradientMask, Strategy, StrategyError};
use crate::params::ParamInfo;

fn default_reserve_p() -> f64 {
    0.3
}

fn check_reserve_p(strategy: &'static str, reserve_p: f64) -> Result<(), StrategyError> {
    if reserve_p > 0.0 && reserve_p <= 1.0 {
        Ok(())
    } else {
        invalid(strategy, format!("reserve_p must be in (0, 1], got {reserve_p}"))
    }
}

/// A Child-Tuning variant: its config struct (`reserve_p`) and its [`Strategy`] impl, which
/// differ between _F and _D only in name and the mask asked of the trainer.
macro_rules! child_tuning {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $mask:ident, $field_doc:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $ty {
            #[doc = $field_doc]
            #[serde(default = "default_reserve_p")]
            pub reserve_p: f64,
        }

        impl Strategy for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn effect(&self) -> Effect {
                Effect::MasksGradients
            }
            fn validate(&self) -> Result<(), StrategyError> {
                check_reserve_p(self.name(), self.reserve_p)
            }
            fn gradient_mask(&self) -> Option<GradientMask> {
                Some(GradientMask::$mask { keep: self.reserve_p })
            }
        }
    };
}

child_tuning!(
    /// Child-Tuning_F: each step keep every gradient element with probability `reserve_p` and
    /// scale kept ones by `1/reserve_p`.
    ChildTuningF,
    "child_tuning_f",
    Bernoulli,
    "Keep probability."
);
child_tuning!(
    /// Child-Tuning_D: a fixed mask from the empirical Fisher information of the task loss.
    ChildTuningD,
    "child_tuning_d",
    Fisher,
    "Fraction of encoder-layer gradient elements kept."
);

/// Gradient masks of Child-Tuning.
#[derive(Debug, Clone)]
pub enum ChildMask<B: Backend> {
    /// Fresh Bernoulli(p) mask every step, kept elements scaled by `1/p`.
    Bernoulli(f64),
    /// Fixed 0/1 masks by parameter path (flattened); paths without a mask train fully.
    Fixed(HashMap<String, Tensor<B, 1>>),
}

impl<B: Backend> crate::optim::GradientTransform<B> for ChildMask<B> {
    fn apply(&self, path: &str, grad: Tensor<B, 1>) -> Tensor<B, 1> {
        match self {
            Self::Bernoulli(p) => {
                let mask = Tensor::<B, 1>::random(grad.shape(), Distribution::Bernoulli(*p), &grad.device());
                grad * mask.div_scalar(*p)
            }
            Self::Fixed(masks) => match masks.get(path) {
                Some(mask) => grad * mask.clone(),
                None => grad,
            },
        }
    }
}

/// Whether Child-Tuning_D gives the parameter a mask: the pretrained model's encoder-layer
/// parameters (the authors' `'layer' in name`), not embeddings, pooler, head or inserts.
pub fn child_d_eligible(role: &ParamRole) -> bool {
    matches!(role.site, Site::Layer(_)) && role.insert().is_none()
}

/// numpy's default `percentile` (linear interpolation between closest ranks) of `values`,
/// `q` in `[0, 100]`. Reorders `values`.
pub fn percentile(values: &mut [f32], q: f64) -> f32 {
    assert!(!values.is_empty(), "percentile of nothing");
    let pos = q / 100.0 * (values.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let (_, &mut lo_v, upper) = values.select_nth_unstable_by(lo, f32::total_cmp);
    let hi_v = if hi == lo {
        lo_v
    } else {
        // The (lo+1)-th smallest is the minimum of the upper part.
        upper.iter().copied().fold(f32::INFINITY, f32::min)
    };
    (lo_v as f64 + (hi_v as f64 - lo_v as f64) * (pos - lo as f64)) as f32
}

/// Child-Tuning_D's empirical Fisher and mask.
///
/// For each of `n_batches` batches (`loss_of(model, i)`: the task loss in train mode),
/// backward, clip each eligible tensor's gradient to L2 norm 1 on its own (PyTorch's
/// `clip_grad_norm_(p, 1)`), and accumulate `g² / n_batches` into one accumulator per tensor;
/// gradients are dropped batch by batch. The mask keeps elements whose Fisher is at least the
/// global `(1 − reserve_p)` percentile over every eligible element (one threshold).
///
/// # Errors
/// Whatever `loss_of` returns.
pub fn child_tuning_d_mask<B, M, E>(
    model: &M,
    n_batches: usize,
    reserve_p: f64,
    mut loss_of: impl FnMut(&M, usize) -> Result<Tensor<B, 1>, E>,
) -> Result<ChildMask<B::InnerBackend>, E>
where
    B: AutodiffBackend,
    M: burn::module::AutodiffModule<B> + kiln_model::roles::ModelRoles,
{
    let roles = model.param_roles();
    let infos: Vec<ParamInfo> = crate::params::param_infos(model)
        .into_iter()
        .filter(|p| roles.get(p.id).is_some_and(child_d_eligible))
        .collect();
    let mut fisher: HashMap<String, Tensor<B::InnerBackend, 1>> = HashMap::new();
    for i in 0..n_batches {
        let loss = loss_of(model, i)?;
        let mut grads = burn::optim::GradientsParams::from_grads(loss.backward(), model);
        for p in &infos {
            let g: Option<Tensor<B::InnerBackend, 1>> = match p.shape.len() {
                1 => grads.remove::<B::InnerBackend, 1>(p.id),
                2 => grads.remove::<B::InnerBackend, 2>(p.id).map(|g| g.reshape([p.numel()])),
                _ => None,
            };
            let Some(g) = g else { continue };
            let norm = g.clone().powi_scalar(2).sum().into_scalar().elem::<f64>().sqrt();
            let coef = 1.0 / (norm + 1e-6);
            let g = if coef < 1.0 { g.mul_scalar(coef) } else { g };
            let add = g.powi_scalar(2).div_scalar(n_batches as f64);
            let acc = match fisher.remove(&p.path) {
                Some(acc) => acc + add,
                None => add,
            };
            fisher.insert(p.path.clone(), acc);
        }
    }
    let mut all: Vec<f32> = Vec::new();
    for p in &infos {
        if let Some(f) = fisher.get(&p.path) {
            all.extend(f.clone().into_data().convert::<f32>().to_vec::<f32>().expect("f32"));
        }
    }
    if all.is_empty() {
        return Ok(ChildMask::Fixed(HashMap::new()));
    }
    let threshold = percentile(&mut all, (1.0 - reserve_p) * 100.0);
    tracing::info!(threshold, elements = all.len(), reserve_p, "Child-Tuning_D mask");
    let masks = fisher
        .into_iter()
        .map(|(path, f)| (path, f.greater_equal_elem(threshold).float()))
        .collect();
    Ok(ChildMask::Fixed(masks))
}
