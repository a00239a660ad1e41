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
use kiln_attention::AttentionKind;
use kiln_model::{BertModel, Capture, Gpt2Model, LayerCapture};
use serde::{Deserialize, Serialize};

use crate::classifier::SequenceClassifier;
use crate::optim::{AdamW, AdamWConfig, ParamGroup};
use crate::params::{param_infos, set_trainable};
use burn::module::ParamId;
use kiln_model::roles::{ModelRoles, Part};

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
    let capture = loss.capture();
    let s_out = student.forward(ids.clone(), Some(types.clone()), Some(mask.clone()), capture);
    let t_out = teacher.forward(ids.inner(), Some(types.inner()), Some(mask.clone().inner()), capture);
    let converted = converted_layers(
        student
            .encoder
            .layer
            .iter()
            .map(|l| &l.attention.self_attention.mechanism),
    );
    mean_over_layers(&converted, &s_out.layers, &t_out.layers, mask.float(), loss, device)
}

/// [`transfer_loss`] for a converted GPT decoder on token windows `[batch, n]` (all real,
/// causal attention on both sides).
pub fn decoder_transfer_loss<B: AutodiffBackend>(
    student: &Gpt2Model<B>,
    teacher: &Gpt2Model<B::InnerBackend>,
    ids: Tensor<B, 2, Int>,
    loss: TransferLoss,
) -> Tensor<B, 1> {
    let device = ids.device();
    let capture = loss.capture();
    let s_out = student.forward(ids.clone(), None, capture);
    let t_out = teacher.forward(ids.clone().inner(), None, capture);
    let converted = converted_layers(student.h.iter().map(|b| &b.attn.mechanism));
    let real = Tensor::<B, 2>::ones(ids.dims(), &device);
    mean_over_layers(&converted, &s_out.layers, &t_out.layers, real, loss, &device)
}

impl TransferLoss {
    fn capture(self) -> Capture {
        match self {
            Self::CrossEntropy => Capture {
                attention_probs: true,
                ..Capture::none()
            },
            Self::OutputMse => Capture {
                attention_output: true,
                ..Capture::none()
            },
        }
    }
}

/// Indices of the layers whose mechanism is no longer softmax.
fn converted_layers<'a, B: Backend + 'a>(mechanisms: impl Iterator<Item = &'a AttentionKind<B>>) -> Vec<usize> {
    mechanisms
        .enumerate()
        .filter(|(_, m)| !matches!(m, AttentionKind::Softmax(_)))
        .map(|(i, _)| i)
        .collect()
}

/// The loss averaged over the `converted` layers; `real` `[b, n]` is 1 at real query tokens.
fn mean_over_layers<B: AutodiffBackend>(
    converted: &[usize],
    student: &[LayerCapture<B>],
    teacher: &[LayerCapture<B::InnerBackend>],
    real: Tensor<B, 2>,
    loss: TransferLoss,
    device: &B::Device,
) -> Tensor<B, 1> {
    let [b, n] = real.dims();
    let n_real = real.clone().sum().into_scalar().elem::<f64>().max(1.0);
    let mut total: Option<Tensor<B, 1>> = None;
    for &i in converted {
        let term = match loss {
            TransferLoss::CrossEntropy => {
                let a_s = student[i].attention_probs.clone().expect("captured");
                let a_t = Tensor::<B, 4>::from_inner(teacher[i].attention_probs.clone().expect("captured"));
                let heads = a_s.dims()[1];
                let ce = (a_t * a_s.clamp_min(1e-12).log()).sum_dim(3).neg(); // [b, h, n, 1]
                let rows = ce.reshape([b, heads, n]) * real.clone().reshape([b, 1, n]);
                rows.sum().div_scalar(n_real * heads as f64)
            }
            TransferLoss::OutputMse => {
                let o_s = student[i].attention_output.clone().expect("captured");
                let o_t = Tensor::<B, 3>::from_inner(teacher[i].attention_output.clone().expect("captured"));
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
    if batches.is_empty() {
        return (student, Vec::new());
    }
    transfer_loop(student, cfg, |model, step| {
        transfer_loss(&model.bert, teacher, &batches[step % batches.len()], cfg.loss, device)
    })
}

/// [`attention_transfer`] for a converted decoder: `batch(step)` gives the step's token
/// windows `[batch, n]`.
pub fn decoder_attention_transfer<B: AutodiffBackend>(
    student: Gpt2Model<B>,
    teacher: &Gpt2Model<B::InnerBackend>,
    cfg: &TransferConfig,
    mut batch: impl FnMut(usize) -> Tensor<B, 2, Int>,
) -> (Gpt2Model<B>, Vec<f64>) {
    transfer_loop(student, cfg, |model, step| {
        decoder_transfer_loss(model, teacher, batch(step), cfg.loss)
    })
}

/// The optimisation both share: everything but the feature maps frozen, AdamW without
/// decay, clip 1, constant `cfg.lr`, `cfg.steps` steps.
fn transfer_loop<B: AutodiffBackend, M: AutodiffModule<B> + ModelRoles>(
    model: M,
    cfg: &TransferConfig,
    mut loss_at: impl FnMut(&M, usize) -> Tensor<B, 1>,
) -> (M, Vec<f64>) {
    let roles = model.param_roles();
    let is_map = |id: ParamId| {
        roles
            .get(id)
            .is_some_and(|r| r.part == Part::Mechanism { fixed: false })
    };
    let infos = param_infos(&model);
    let mut model = set_trainable(model, is_map);
    let adam = AdamWConfig {
        weight_decay: 0.0,
        max_grad_norm: Some(1.0),
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::<B::InnerBackend>::new(adam, &infos, |info| ParamGroup {
        trainable: is_map(info.id),
        lr_scale: 1.0,
        weight_decay: false,
    });
    let mut losses = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        let loss = loss_at(&model, step);
        losses.push(loss.clone().into_scalar().elem::<f64>());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = opt.step(model, grads, cfg.lr).0;
        if step % 20 == 0 {
            tracing::info!(step, loss = losses[step], "attention transfer");
        }
    }
    (model, losses)
}

/// The teacher for `student`: its encoder as it is now (call before converting), on the inner
/// backend.
pub fn teacher_of<B: AutodiffBackend>(model: &SequenceClassifier<B>) -> BertModel<B::InnerBackend> {
    model.bert.valid()
}
