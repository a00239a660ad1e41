//! AdamW with PyTorch semantics, per-parameter groups and global-norm clipping.
//!
//! Written here rather than using `burn::optim::AdamW` because fine-tuning needs what that
//! optimizer does not offer: per-parameter weight-decay switches (HF excludes biases and
//! LayerNorm weights), per-parameter learning-rate scales (discriminative LRs), frozen
//! parameters, access to the gradients between backward and the update (Child-Tuning masks
//! them), and its state as named tensors for exact checkpoint/resume. The update itself is
//! PyTorch's `torch.optim.AdamW` (Loshchilov & Hutter 2019, decoupled weight decay):
//!
//! ```text
//! p ← p − lr·wd·p
//! m ← β₁m + (1−β₁)g;   v ← β₂v + (1−β₂)g²
//! p ← p − lr · (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)
//! ```

use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::params::ParamInfo;

/// A transform of each trainable parameter's flattened gradient, applied after clipping and
/// before the moment updates (Child-Tuning's masks implement it in `strategy`).
pub trait GradientTransform<B: Backend> {
    /// The transformed gradient of the parameter at `path`.
    fn apply(&self, path: &str, grad: Tensor<B, 1>) -> Tensor<B, 1>;
}

/// Hyper-parameters (PyTorch defaults for β and ε; burn's differ).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε, added to √v̂ (outside the root).
    pub eps: f64,
    /// Decoupled weight decay for parameters of groups that decay.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value before the update (`None` = off).
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
        }
    }
}

/// How one parameter is optimised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamGroup {
    /// Multiplies the scheduled learning rate (1 = base LR).
    pub lr_scale: f64,
    /// Whether weight decay applies.
    pub weight_decay: bool,
    /// Whether the parameter is updated at all.
    pub trainable: bool,
}

impl ParamGroup {
    /// HF defaults: trainable, base LR, decay except on biases and LayerNorm parameters.
    pub fn hf_default(info: &ParamInfo) -> Self {
        Self {
            lr_scale: 1.0,
            weight_decay: info.tensor.decays(),
            trainable: true,
        }
    }
}

/// First and second moments of one parameter, flattened.
#[derive(Debug, Clone)]
pub struct Moments<B: Backend> {
    /// m.
    pub exp_avg: Tensor<B, 1>,
    /// v.
    pub exp_avg_sq: Tensor<B, 1>,
    /// Updates this parameter has received (PyTorch's per-parameter `state["step"]`: a
    /// parameter unfrozen late starts its bias correction at 1).
    pub step: u64,
}

/// The optimizer and its state (on the inner, non-autodiff backend).
#[derive(Debug, Clone)]
pub struct AdamW<B: Backend> {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Number of optimizer steps done (each parameter's own count, which the bias corrections
    /// use, is in its [`Moments`]).
    pub step: u64,
    /// Moments by parameter path.
    pub state: HashMap<String, Moments<B>>,
    groups: HashMap<ParamId, (String, ParamGroup)>,
}

/// What a step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Global L2 norm of the gradients of trainable parameters, before clipping.
    pub grad_norm: f64,
    /// Whether clipping scaled the gradients.
    pub clipped: bool,
}

struct NormVisitor<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    groups: &'a HashMap<ParamId, (String, ParamGroup)>,
    sum_sq: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for NormVisitor<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let trainable = self.groups.get(&param.id).is_some_and(|(_, g)| g.trainable);
        if let (true, Some(g)) = (trainable, self.grads.get::<B::InnerBackend, D>(param.id)) {
            let s = match kiln_kernels::ops::sum_sq(&g) {
                Some(s) => Tensor::from_floats([s as f32], &g.device()),
                None => g.powi_scalar(2).sum(),
            };
            self.sum_sq = Some(match self.sum_sq.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

struct UpdateMapper<'a, B: AutodiffBackend> {
    opt: &'a mut AdamW<B::InnerBackend>,
    grads: &'a mut GradientsParams,
    lr: f64,
    grad_scale: f64,
    mask: Option<&'a dyn GradientTransform<B::InnerBackend>>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for UpdateMapper<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let group = self.opt.groups.get(&id).cloned();
        let grad = self.grads.remove::<B::InnerBackend, D>(id);
        let tensor = match (group, grad) {
            (Some((path, group)), Some(grad)) if group.trainable => {
                let require_grad = tensor.is_require_grad();
                // the fused update scales the gradient itself; a Child-Tuning mask needs it scaled first
                let (grad, grad_scale) = match self.mask {
                    Some(mask) => {
                        let grad = grad.mul_scalar(self.grad_scale);
                        let shape = grad.shape();
                        let n = shape.num_elements();
                        (mask.apply(&path, grad.reshape([n])).reshape(shape), 1.0)
                    }
                    None => (grad, self.grad_scale),
                };
                let updated = self.opt.update(&path, group, tensor.inner(), grad, grad_scale, self.lr);
                let t = Tensor::from_inner(updated);
                if require_grad {
                    t.require_grad()
                } else {
                    t
                }
            }
            _ => tensor,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

impl<B: Backend> AdamW<B> {
    /// An optimizer for the parameters `params`, each assigned a group by `group_of`.
    pub fn new(config: AdamWConfig, params: &[ParamInfo], group_of: impl Fn(&ParamInfo) -> ParamGroup) -> Self {
        let groups = params.iter().map(|p| (p.id, (p.path.clone(), group_of(p)))).collect();
        Self {
            config,
            step: 0,
            state: HashMap::new(),
            groups,
        }
    }

    /// The group of a parameter, if it is known.
    pub fn group(&self, id: ParamId) -> Option<&ParamGroup> {
        self.groups.get(&id).map(|(_, g)| g)
    }

    /// Changes a parameter's group (e.g. gradual unfreezing).
    pub fn set_group(&mut self, id: ParamId, group: ParamGroup) {
        if let Some(entry) = self.groups.get_mut(&id) {
            entry.1 = group;
        }
    }

    /// Updates one parameter (flattened) from its gradient times `grad_scale`: the one-pass
    /// kernel on Flex (`kiln_kernels::adamw`, the same f32 arithmetic in the same order),
    /// the composed tensor form elsewhere.
    #[allow(clippy::too_many_arguments)]
    fn update<const D: usize>(
        &mut self,
        path: &str,
        group: ParamGroup,
        p: Tensor<B, D>,
        g: Tensor<B, D>,
        grad_scale: f64,
        lr: f64,
    ) -> Tensor<B, D> {
        let c = self.config;
        let lr = lr * group.lr_scale;
        let shape = p.shape();
        let n = shape.num_elements();
        let prev = self.state.remove(path);
        let step = prev.as_ref().map_or(1, |m| m.step + 1);
        let t = step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let decay = if group.weight_decay && c.weight_decay != 0.0 {
            Some(1.0 - lr * c.weight_decay)
        } else {
            None
        };
        let h = kiln_kernels::adamw::AdamWStep {
            grad_scale: grad_scale as f32,
            beta1: c.beta1 as f32,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            eps: c.eps as f32,
            decay: decay.unwrap_or(1.0) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            step_size: (lr / bc1) as f32,
        };
        let moments = prev.map(|m| (m.exp_avg, m.exp_avg_sq));
        let (p, g, moments) = match kiln_kernels::ops::adamw(p.reshape([n]), g.reshape([n]), moments, h) {
            Ok((p, exp_avg, exp_avg_sq)) => {
                self.state.insert(
                    path.to_string(),
                    Moments {
                        exp_avg,
                        exp_avg_sq,
                        step,
                    },
                );
                return p.reshape(shape);
            }
            Err(inputs) => inputs,
        };
        let g = if grad_scale == 1.0 { g } else { g.mul_scalar(grad_scale) };
        let moments = match moments {
            Some((exp_avg, exp_avg_sq)) => Moments {
                exp_avg: exp_avg.mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1),
                exp_avg_sq: exp_avg_sq.mul_scalar(c.beta2) + g.powi_scalar(2).mul_scalar(1.0 - c.beta2),
                step,
            },
            None => Moments {
                exp_avg: g.clone().mul_scalar(1.0 - c.beta1),
                exp_avg_sq: g.powi_scalar(2).mul_scalar(1.0 - c.beta2),
                step,
            },
        };
        // PyTorch: denom = √v / √bc2 + ε; p −= (lr / bc1) · m / denom.
        let denom = moments
            .exp_avg_sq
            .clone()
            .sqrt()
            .div_scalar(bc2.sqrt())
            .add_scalar(c.eps);
        let delta = (moments.exp_avg.clone() / denom).mul_scalar(lr / bc1);
        self.state.insert(path.to_string(), moments);
        let p = match decay {
            Some(d) => p.mul_scalar(d),
            None => p,
        };
        (p - delta).reshape(shape)
    }

    /// Global gradient norm (trainable parameters only), as PyTorch's `clip_grad_norm_`.
    pub fn grad_norm<AB, M>(&self, module: &M, grads: &GradientsParams) -> f64
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let mut v = NormVisitor::<AB> {
            grads,
            groups: &self.groups,
            sum_sq: None,
        };
        module.visit(&mut v);
        v.sum_sq.map_or(0.0, |s| s.into_scalar().elem::<f64>().sqrt())
    }

    /// One update of every trainable parameter that has a gradient, at learning rate `lr`
    /// (before group scaling). Clips first when configured. Consumes the gradients.
    pub fn step<AB, M>(&mut self, module: M, grads: GradientsParams, lr: f64) -> (M, StepStats)
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        self.step_masked(module, grads, lr, None)
    }

    /// [`AdamW::step`] with a Child-Tuning gradient mask applied after clipping and before the
    /// moment updates (the authors' `ChildTuningAdamW`): masked elements still move by their
    /// earlier momentum and by weight decay.
    pub fn step_masked<AB, M>(
        &mut self,
        module: M,
        mut grads: GradientsParams,
        lr: f64,
        mask: Option<&dyn GradientTransform<B>>,
    ) -> (M, StepStats)
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let grad_norm = self.grad_norm(&module, &grads);
        // torch.nn.utils.clip_grad_norm_: coef = max / (norm + 1e-6), applied when < 1.
        let (grad_scale, clipped) = match self.config.max_grad_norm {
            Some(max) if grad_norm.is_finite() && max / (grad_norm + 1e-6) < 1.0 => (max / (grad_norm + 1e-6), true),
            _ => (1.0, false),
        };
        let mut mapper = UpdateMapper::<AB> {
            opt: self,
            grads: &mut grads,
            lr,
            grad_scale,
            mask,
        };
        let module = module.map(&mut mapper);
        self.step += 1;
        (module, StepStats { grad_norm, clipped })
    }
}

/// Linear warm-up from 0 to `base` over `warmup` steps, then linear decay to 0 at `total`
/// (HF `get_linear_schedule_with_warmup`). `step` counts updates already done.
pub fn linear_schedule(base: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        base * step as f64 / warmup.max(1) as f64
    } else {
        base * (total.saturating_sub(step)) as f64 / (total.saturating_sub(warmup)).max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::param_infos;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::{Linear, LinearConfig};

    type A = Autodiff<Flex>;

    /// Scalar AdamW written out in f64, PyTorch's algorithm.
    fn reference(p0: f64, grads: &[f64], lr: f64, wd: f64) -> f64 {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        let (mut p, mut m, mut v) = (p0, 0.0, 0.0);
        for (t, g) in grads.iter().enumerate() {
            p -= lr * wd * p;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let t = (t + 1) as i32;
            p -= lr / (1.0 - b1.powi(t)) * m / ((v / (1.0 - b2.powi(t))).sqrt() + eps);
        }
        p
    }

    #[test]
    fn matches_pytorch_adamw_and_skips_decay_on_biases() {
        let device = Default::default();
        let mut model: Linear<A> = LinearConfig::new(3, 2).init(&device);
        let w0: Vec<f32> = model.weight.val().into_data().to_vec().unwrap();
        let b0: Vec<f32> = model.bias.as_ref().unwrap().val().into_data().to_vec().unwrap();
        let infos = param_infos(&model);
        let config = AdamWConfig {
            weight_decay: 0.1,
            max_grad_norm: None,
            ..Default::default()
        };
        let mut opt = AdamW::new(config, &infos, ParamGroup::hf_default);
        let x = Tensor::<A, 2>::from_floats([[1.0, -2.0, 0.5]], &device);
        // loss = sum(y * c_t) with a different c each step → dL/dW[i][j] = x_i c_j, dL/db = c.
        let cs = [[1.0f32, -0.5], [0.3, 2.0], [-1.5, 0.1]];
        for c in cs {
            let y = model.forward(x.clone());
            let loss = (y * Tensor::<A, 2>::from_floats([c], &device)).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = opt.step(model, grads, 0.05).0;
        }
        let w: Vec<f32> = model.weight.val().into_data().to_vec().unwrap();
        let b: Vec<f32> = model.bias.as_ref().unwrap().val().into_data().to_vec().unwrap();
        let xs = [1.0, -2.0, 0.5];
        for i in 0..3 {
            for j in 0..2 {
                let g: Vec<f64> = cs.iter().map(|c| xs[i] * c[j] as f64).collect();
                let want = reference(w0[i * 2 + j] as f64, &g, 0.05, 0.1);
                assert!(
                    (w[i * 2 + j] as f64 - want).abs() < 1e-6,
                    "w[{i}][{j}] {} vs {want}",
                    w[i * 2 + j]
                );
            }
        }
        for j in 0..2 {
            let g: Vec<f64> = cs.iter().map(|c| c[j] as f64).collect();
            let want = reference(b0[j] as f64, &g, 0.05, 0.0);
            assert!((b[j] as f64 - want).abs() < 1e-6, "bias without decay");
        }
    }

    #[test]
    fn frozen_parameters_stay_bit_identical_and_clipping_uses_the_global_norm() {
        let device = Default::default();
        let model: Linear<A> = LinearConfig::new(2, 2).init(&device);
        let w0 = model.weight.val().into_data();
        let infos = param_infos(&model);
        let config = AdamWConfig {
            max_grad_norm: Some(0.5),
            ..Default::default()
        };
        let mut opt = AdamW::new(config, &infos, |p| ParamGroup {
            trainable: !p.path.ends_with("weight"),
            ..ParamGroup::hf_default(p)
        });
        let y = model.forward(Tensor::<A, 2>::from_floats([[3.0, 4.0]], &device));
        let grads = GradientsParams::from_grads(y.sum().backward(), &model);
        let (model, stats) = opt.step(model, grads, 0.1);
        assert_eq!(model.weight.val().into_data(), w0);
        // Only the bias is trainable: its gradient is [1, 1], norm √2 > 0.5 → clipped.
        assert!((stats.grad_norm - 2f64.sqrt()).abs() < 1e-6 && stats.clipped);
    }

    #[test]
    fn schedule_warms_up_then_decays_linearly() {
        assert_eq!(linear_schedule(1.0, 0, 10, 110), 0.0);
        assert_eq!(linear_schedule(1.0, 5, 10, 110), 0.5);
        assert_eq!(linear_schedule(1.0, 10, 10, 110), 1.0);
        assert_eq!(linear_schedule(1.0, 60, 10, 110), 0.5);
        assert_eq!(linear_schedule(1.0, 110, 10, 110), 0.0);
    }
}
