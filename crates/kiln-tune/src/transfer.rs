//! Attention transfer: before fine-tuning a converted model, train only the new feature maps
//! so that each converted layer's attention imitates the original softmax attention
//! (Hedgehog, Zhang et al. 2024; LoLCATs, Zhang et al. 2024).
//!
//! Per batch the teacher (the model before conversion) runs without gradients and the student
//! (the converted model) with every parameter frozen but its feature maps. Losses:
//! - `cross_entropy` (Hedgehog): `−Σⱼ aᵗᵢⱼ log aˢᵢⱼ` per query row, averaged over real query
//!   rows, heads and converted layers;
//! - `output_mse` (LoLCATs): mean squared error between the attention-block outputs (after
//!   the output projection, before the residual) at real tokens, averaged over converted
//!   layers.
//!
//! Each layer is fed the *student's* own hidden states, as both papers do when they train all
//! layers jointly from the model's outputs.

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorData;
use kiln_model::{BertModel, Capture};
use serde::{Deserialize, Serialize};

use crate::classifier::SequenceClassifier;
use crate::optim::{AdamW, AdamWConfig, ParamGroup};
use crate::params::param_infos;

/// What the feature maps imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferLoss {
    /// Cross-entropy between attention rows (Hedgehog).
    CrossEntropy,
    /// MSE between attention-block outputs (LoLCATs).
    OutputMse,
}

/// Attention-transfer settings (`[train.attention_transfer]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    /// Optimizer steps (one batch each, cycling through the training set).
    pub steps: usize,
    /// Learning rate (constant).
    pub lr: f64,
    /// Examples per batch.
    pub batch_size: usize,
    /// The objective.
    pub loss: TransferLoss,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            steps: 200,
            lr: 1e-2,
            batch_size: 16,
            loss: TransferLoss::CrossEntropy,
        }
    }
}

/// One batch: ids, token types and attention mask, each `[batch, seq]` (row-major).
pub struct TransferBatch {
    /// Token ids.
    pub ids: Vec<i64>,
    /// Segment ids.
    pub types: Vec<i64>,
    /// 1 at real tokens.
    pub mask: Vec<i64>,
    /// `[batch, seq]`.
    pub shape: [usize; 2],
}

/// The transfer loss of `student` against `teacher` on one batch, and the layers compared.
pub fn transfer_loss<B: AutodiffBackend>(
    student: &BertModel<B>,
    teacher: &BertModel<B::InnerBackend>,
    batch: &TransferBatch,
    loss: TransferLoss,
    device: &B::Device,
) -> Tensor<B, 1> {
    let t = |v: &Vec<i64>| Tensor::<B, 2, Int>::from_data(TensorData::new(v.clone(), batch.shape), device);
    let (ids, types, mask) = (t(&batch.ids), t(&batch.types), t(&batch.mask));
    let capture = match loss {
        TransferLoss::CrossEntropy => Capture {
            attention_probs: true,
            ..Capture::none()
        },
        TransferLoss::OutputMse => Capture {
            attention_output: true,
            ..Capture::none()
        },
    };
    let s_out = student.forward(ids.clone(), Some(types.clone()), Some(mask.clone()), capture);
    let t_out = teacher.forward(ids.inner(), Some(types.inner()), Some(mask.clone().inner()), capture);
    let [b, n] = batch.shape;
    let real = mask.float(); // [b, n]
    let n_real = real.clone().sum().into_scalar().elem::<f64>().max(1.0);
    let converted: Vec<usize> = student
        .encoder
        .layer
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            !matches!(
                l.attention.self_attention.mechanism,
                kiln_attention::AttentionKind::Softmax(_)
            )
        })
        .map(|(i, _)| i)
        .collect();
    let mut total: Option<Tensor<B, 1>> = None;
    for &i in &converted {
        let term = match loss {
            TransferLoss::CrossEntropy => {
                let a_s = s_out.layers[i].attention_probs.clone().expect("captured");
                let a_t = Tensor::<B, 4>::from_inner(t_out.layers[i].attention_probs.clone().expect("captured"));
                let heads = a_s.dims()[1];
                let ce = (a_t * a_s.clamp_min(1e-12).log()).sum_dim(3).neg(); // [b, h, n, 1]
                let rows = ce.reshape([b, heads, n]) * real.clone().reshape([b, 1, n]);
                rows.sum().div_scalar(n_real * heads as f64)
            }
            TransferLoss::OutputMse => {
                let o_s = s_out.layers[i].attention_output.clone().expect("captured");
                let o_t = Tensor::<B, 3>::from_inner(t_out.layers[i].attention_output.clone().expect("captured"));
                let d = o_s.dims()[2];
                let sq = (o_s - o_t).powi_scalar(2).sum_dim(2).reshape([b, n]) * real.clone();
                sq.sum().div_scalar(n_real * d as f64)
            }
        };
        total = Some(match total {
            Some(acc) => acc + term,
            None => term,
        });
    }
    total
        .map(|t| t.div_scalar(converted.len().max(1) as f64))
        .unwrap_or_else(|| Tensor::zeros([1], device))
}

/// Trains only the feature maps of `student` (a converted classifier) to imitate `teacher`
/// (its encoder before conversion) for `cfg.steps` batches from `batches` (cycled). Returns
/// the student and the loss per step.
pub fn attention_transfer<B: AutodiffBackend>(
    student: SequenceClassifier<B>,
    teacher: &BertModel<B::InnerBackend>,
    batches: &[TransferBatch],
    cfg: &TransferConfig,
    device: &B::Device,
) -> (SequenceClassifier<B>, Vec<f64>) {
    let is_map = |p: &str| p.contains(".feature_map.");
    let infos = param_infos(&student);
    let mut student = student.map(&mut OnlyMaps { stack: Vec::new() });
    let adam = AdamWConfig {
        weight_decay: 0.0,
        max_grad_norm: Some(1.0),
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::<B::InnerBackend>::new(adam, &infos, |info| ParamGroup {
        trainable: is_map(&info.path),
        lr_scale: 1.0,
        weight_decay: false,
    });
    let mut losses = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        if batches.is_empty() {
            break;
        }
        let batch = &batches[step % batches.len()];
        let loss = transfer_loss(&student.bert, teacher, batch, cfg.loss, device);
        losses.push(loss.clone().into_scalar().elem::<f64>());
        let grads = GradientsParams::from_grads(loss.backward(), &student);
        student = opt.step(student, grads, cfg.lr).0;
        if step % 20 == 0 {
            tracing::info!(step, loss = losses[step], "attention transfer");
        }
    }
    (student, losses)
}

/// Marks every parameter but the feature maps `require_grad = false`.
struct OnlyMaps {
    stack: Vec<String>,
}

impl<B: AutodiffBackend> burn::module::ModuleMapper<B> for OnlyMaps {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<B, D>>,
    ) -> burn::module::Param<Tensor<B, D>> {
        let train = self.stack.join(".").contains(".feature_map.");
        let (id, tensor, mapper) = param.consume();
        burn::module::Param::from_mapped_value(id, tensor.set_require_grad(train), mapper)
    }
}

/// The teacher for `student`: its encoder as it is now (call before converting), on the inner
/// backend.
pub fn teacher_of<B: AutodiffBackend>(model: &SequenceClassifier<B>) -> BertModel<B::InnerBackend> {
    model.bert.valid()
}
