//! Exactness check of kiln's training step against PyTorch + transformers: three AdamW steps
//! of `BertForSequenceClassification` from a reference file (`shared/reference/README.md`,
//! `minilm-train-step`): `input_ids`, `token_type_ids`, `attention_mask`, `labels`, the head's
//! `init.*` tensors, the per-step `loss` and pre-clip `grad_norm`, and `after.<HF name>`
//! parameters.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorData;
use kiln_model::parity::{ParityRow, ReferenceFile};
use kiln_model::ModelError;

use crate::classifier::{SequenceClassifier, Targets};
use crate::optim::{AdamW, AdamWConfig, ParamGroup};
use crate::params::param_infos;

/// The recipe of the reference (README): lr 1e-4, wd 0.01, clip 1.0, dropout 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainParityConfig {
    /// Constant learning rate.
    pub lr: f64,
    /// Optimizer settings.
    pub adamw: AdamWConfig,
    /// Max |Δloss|.
    pub tol_loss: f64,
    /// Max relative difference of the gradient norm.
    pub tol_grad_norm_rel: f64,
    /// Max |Δparameter|.
    pub tol_param: f64,
}

impl Default for TrainParityConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            adamw: AdamWConfig::default(),
            tol_loss: 1e-4,
            tol_grad_norm_rel: 1e-3,
            tol_param: 1e-5,
        }
    }
}

/// Kiln path of a HF `BertForSequenceClassification` parameter name, and whether the HF
/// tensor is a Linear weight (`[out, in]`, transposed in kiln).
pub fn kiln_path_of_hf(name: &str) -> (String, bool) {
    let path = name
        .replace("attention.self.", "attention.self_attention.")
        .replace("LayerNorm.weight", "layer_norm.gamma")
        .replace("LayerNorm.bias", "layer_norm.beta");
    let linear_weight = name.ends_with(".weight") && !name.contains("embeddings.") && !name.contains("LayerNorm");
    (path, linear_weight)
}

struct Values<B: Backend> {
    stack: Vec<String>,
    out: HashMap<String, (Vec<usize>, Vec<f32>)>,
    _b: std::marker::PhantomData<B>,
}

impl<B: Backend> ModuleVisitor<B> for Values<B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let data = t.into_data().convert::<f32>().to_vec::<f32>().expect("f32");
        self.out.insert(self.stack.join("."), (shape, data));
    }
}

/// Every parameter's shape and values by kiln path.
pub fn param_values<B: Backend, M: Module<B>>(module: &M) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let mut v = Values::<B> {
        stack: Vec::new(),
        out: HashMap::new(),
        _b: std::marker::PhantomData,
    };
    module.visit(&mut v);
    v.out
}

fn float<B: Backend, const D: usize>(
    r: &ReferenceFile,
    name: &str,
    device: &B::Device,
) -> Result<Tensor<B, D>, ModelError> {
    let (shape, values) = r.f32(name)?;
    let shape: [usize; D] = shape
        .try_into()
        .map_err(|_| ModelError::Unsupported(format!("{name}: expected {D} dims")))?;
    Ok(Tensor::from_data(TensorData::new(values.to_vec(), shape), device))
}

/// Runs the reference's steps with kiln's model, loss and optimizer; one row per loss,
/// gradient norm and listed parameter.
///
/// # Errors
/// [`ModelError`] if the model or the reference cannot be read.
pub fn train_step_parity<B: AutodiffBackend>(
    model_dir: &Path,
    reference: &ReferenceFile,
    cfg: TrainParityConfig,
    device: &B::Device,
) -> Result<Vec<ParityRow>, ModelError> {
    let labels = reference.i64("labels")?.1.to_vec();
    let n = labels.len();
    let num_labels = reference.f32("init.classifier.bias")?.0[0];
    let (mut model, _) = SequenceClassifier::<B>::from_pretrained(model_dir, num_labels, device)?;
    model.set_dropout(0.0);
    model.set_head(
        float(reference, "init.pooler.dense.weight", device)?,
        float(reference, "init.pooler.dense.bias", device)?,
        float(reference, "init.classifier.weight", device)?,
        float(reference, "init.classifier.bias", device)?,
    );
    let ids = reference.int_tensor::<B>("input_ids", device)?;
    let types = reference.int_tensor::<B>("token_type_ids", device)?;
    let mask = reference.int_tensor::<B>("attention_mask", device)?;
    let targets = Targets::Classes(Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [n]), device));
    let mut opt = AdamW::new(cfg.adamw, &param_infos(&model), ParamGroup::hf_default);
    let (_, want_loss) = reference.f32("loss")?;
    let (_, want_norm) = reference.f32("grad_norm")?;
    let mut rows = Vec::new();
    for step in 0..want_loss.len() {
        let loss = model.loss(model.forward(ids.clone(), types.clone(), mask.clone()), &targets);
        let loss_value = loss.clone().into_scalar().elem::<f64>();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let (next, stats) = opt.step(model, grads, cfg.lr);
        model = next;
        let dl = (loss_value - want_loss[step] as f64).abs();
        rows.push(ParityRow {
            tensor: format!("loss[{step}]"),
            metric: "abs_diff",
            value: dl,
            tolerance: cfg.tol_loss,
            ok: dl <= cfg.tol_loss,
        });
        let rel = (stats.grad_norm - want_norm[step] as f64).abs() / (want_norm[step] as f64).abs().max(1e-12);
        rows.push(ParityRow {
            tensor: format!("grad_norm[{step}]"),
            metric: "rel_diff",
            value: rel,
            tolerance: cfg.tol_grad_norm_rel,
            ok: rel <= cfg.tol_grad_norm_rel,
        });
    }
    let values = param_values(&model);
    for name in reference.tensors.keys().filter_map(|k| k.strip_prefix("after.")) {
        let (path, transposed) = kiln_path_of_hf(name);
        let (shape, want) = reference.f32(&format!("after.{name}"))?;
        let (got_shape, got) = values
            .get(&path)
            .ok_or_else(|| ModelError::Unsupported(format!("kiln has no parameter {path} (HF {name})")))?;
        let max = if transposed {
            let (out, inp) = (shape[0], shape[1]);
            if got_shape != &[inp, out] {
                return Err(ModelError::Unsupported(format!(
                    "{name}: shape {got_shape:?} vs HF {shape:?}"
                )));
            }
            (0..out)
                .flat_map(|o| (0..inp).map(move |i| (o, i)))
                .map(|(o, i)| (got[i * out + o] - want[o * inp + i]).abs() as f64)
                .fold(0.0, f64::max)
        } else {
            got.iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs() as f64)
                .fold(0.0, f64::max)
        };
        rows.push(ParityRow {
            tensor: format!("after.{name}"),
            metric: "max_abs",
            value: max,
            tolerance: cfg.tol_param,
            ok: max <= cfg.tol_param,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names_map_to_kiln_paths() {
        assert_eq!(
            kiln_path_of_hf("bert.encoder.layer.0.attention.self.query.weight"),
            (
                "bert.encoder.layer.0.attention.self_attention.query.weight".into(),
                true
            )
        );
        assert_eq!(
            kiln_path_of_hf("bert.embeddings.LayerNorm.weight"),
            ("bert.embeddings.layer_norm.gamma".into(), false)
        );
        assert!(!kiln_path_of_hf("bert.embeddings.position_embeddings.weight").1);
        assert_eq!(kiln_path_of_hf("classifier.weight"), ("classifier.weight".into(), true));
    }
}
