//! Parameter inventory: every float parameter's id, path (burn-store's dotted path), shape
//! and tensor kind, and marking parameters trainable by id. Which parameters train is decided
//! by typed roles ([`kiln_model::roles`]), never by path.

use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use kiln_model::roles::TensorKind;

/// One float parameter of a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    /// burn's parameter id (stable across forward passes and optimizer steps).
    pub id: ParamId,
    /// Dotted path, e.g. `bert.encoder.layer.0.attention.self_attention.query.weight`.
    pub path: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Which tensor of its module it is (decides weight decay).
    pub tensor: TensorKind,
}

impl ParamInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

struct Inventory {
    /// `(field, container type)` of each entered module.
    stack: Vec<(String, String)>,
    out: Vec<ParamInfo>,
}

impl<B: Backend> ModuleVisitor<B> for Inventory {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.push((name.to_string(), container_type.to_string()));
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let path: Vec<&str> = self.stack.iter().map(|(n, _)| n.as_str()).collect();
        self.out.push(ParamInfo {
            id: param.id,
            path: path.join("."),
            shape: param.val().dims().to_vec(),
            tensor: self
                .stack
                .last()
                .map_or(TensorKind::Other, |(n, c)| TensorKind::of_field(n, c)),
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

/// Marks each float parameter `require_grad` iff `trains(id)`, so that backward computes no
/// gradient for frozen ones (less time and memory).
pub fn set_trainable<B: AutodiffBackend, M: Module<B>>(module: M, trains: impl Fn(ParamId) -> bool) -> M {
    module.map(&mut Trainable { trains })
}

struct Trainable<F> {
    trains: F,
}

impl<B: AutodiffBackend, F: Fn(ParamId) -> bool> ModuleMapper<B> for Trainable<F> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let train = (self.trains)(param.id);
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.set_require_grad(train), mapper)
    }
}
