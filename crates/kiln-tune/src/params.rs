//! Parameter inventory: every float parameter's id, path (burn-store's dotted path) and shape.

use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

/// One float parameter of a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    /// burn's parameter id (stable across forward passes and optimizer steps).
    pub id: ParamId,
    /// Dotted path, e.g. `bert.encoder.layer.0.attention.self_attention.query.weight`.
    pub path: String,
    /// Shape.
    pub shape: Vec<usize>,
}

impl ParamInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

struct Inventory {
    stack: Vec<String>,
    out: Vec<ParamInfo>,
}

impl<B: Backend> ModuleVisitor<B> for Inventory {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.out.push(ParamInfo {
            id: param.id,
            path: self.stack.join("."),
            shape: param.val().dims().to_vec(),
        });
    }
}

/// Every float parameter of `module`, in visiting order.
pub fn param_infos<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamInfo> {
    let mut inv = Inventory {
        stack: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut inv);
    inv.out
}

/// Parameters that never train, whatever the strategy: Performer's random projection `ω`
/// (fixed by definition; "redraw" means converting again).
pub fn is_fixed(path: &str) -> bool {
    path.ends_with(".feature_map.projection")
}

/// Marks each float parameter `require_grad` iff `trains(path)`, so that backward computes
/// no gradient for frozen ones (less time and memory).
pub fn set_trainable<B: AutodiffBackend, M: Module<B>>(module: M, trains: impl Fn(&str) -> bool) -> M {
    let mut mapper = Trainable {
        trains,
        stack: Vec::new(),
    };
    module.map(&mut mapper)
}

struct Trainable<F> {
    trains: F,
    stack: Vec<String>,
}

impl<B: AutodiffBackend, F: Fn(&str) -> bool> ModuleMapper<B> for Trainable<F> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let train = (self.trains)(&self.stack.join("."));
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.set_require_grad(train), mapper)
    }
}

/// HF/PyTorch convention for decoupled weight decay: no decay on biases and LayerNorm
/// parameters.
pub fn decays(path: &str) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path);
    !(matches!(last, "bias" | "beta" | "gamma") || path.contains("layer_norm"))
}

#[cfg(test)]
mod tests {
    use super::decays;

    #[test]
    fn decay_excludes_biases_and_layer_norms_at_any_depth() {
        assert!(!decays("bias") && !decays("a.b.bias") && !decays("x.layer_norm.gamma") && !decays("ln_f.beta"));
        assert!(decays("weight") && decays("bert.embeddings.word_embeddings.weight"));
    }
}
