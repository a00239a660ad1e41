//! Exactness check of kiln's training step against PyTorch + transformers: three AdamW steps
//! of `BertForSequenceClassification` from a reference file (`shared/reference/README.md`,
//! `minilm-train-step`): `input_ids`, `token_type_ids`, `attention_mask`, `labels`, the head's
//! `init.*` tensors, the per-step `loss` and pre-clip `grad_norm`, and `after.<HF name>`
//! parameters (whole, or the leading rows of a 2-D one, as the committed fixture keeps them).

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
    train_step_parity_report::<B>(model_dir, reference, cfg, device).map(|r| r.rows)
}

/// [`train_step_parity`]'s rows, with per-element diagnostics of every failing parameter.
#[derive(Debug, Clone)]
pub struct TrainParityReport {
    /// One row per loss, gradient norm and listed parameter.
    pub rows: Vec<ParityRow>,
    /// For each parameter over its tolerance: how many elements are, the worst ones with
    /// both sides' values and step-0 gradients, and how many of them had a step-0 gradient
    /// near Adam's ε or of opposite sign (where f32 rounding decides Adam's update).
    pub diagnostics: Vec<String>,
}

/// Per-element comparison of one parameter (values in HF layout, row-major).
fn element_diagnostics(
    name: &str,
    tol: f64,
    got: &[f32],
    want: &[f32],
    cols: usize,
    grads: Option<(&[f32], &[f32])>,
    eps: f64,
) -> String {
    let mut over: Vec<usize> = (0..want.len())
        .filter(|&i| f64::from((got[i] - want[i]).abs()) > tol)
        .collect();
    over.sort_by(|&a, &b| (got[b] - want[b]).abs().total_cmp(&(got[a] - want[a]).abs()));
    let mut text = format!(
        "{name}: {} of {} elements differ by more than {tol:.0e}",
        over.len(),
        want.len()
    );
    if let Some((g_kiln, g_torch)) = grads {
        let near_eps = over
            .iter()
            .filter(|&&i| f64::from(g_torch[i].abs()) < 100.0 * eps)
            .count();
        let flipped = over
            .iter()
            .filter(|&&i| g_kiln[i].signum() != g_torch[i].signum())
            .count();
        let median_all = {
            let mut a: Vec<f32> = g_torch.iter().map(|g| g.abs()).collect();
            a.sort_by(f32::total_cmp);
            a[a.len() / 2]
        };
        text += &format!(
            "; of those, {near_eps} had a step-0 PyTorch gradient below 100·ε = {:.0e} and {flipped} a step-0 gradient of opposite sign in kiln (median |g| over the tensor {median_all:.2e})",
            100.0 * eps
        );
    }
    for &i in over.iter().take(5) {
        let (r, c) = (i / cols.max(1), i % cols.max(1));
        text += &format!(
            "\n  [{r}, {c}] kiln {:+.6e} PyTorch {:+.6e} |Δ| {:.2e}",
            got[i],
            want[i],
            (got[i] - want[i]).abs()
        );
        if let Some((g_kiln, g_torch)) = grads {
            text += &format!("  step-0 gradient kiln {:+.3e} PyTorch {:+.3e}", g_kiln[i], g_torch[i]);
        }
    }
    text
}

/// [`train_step_parity`] with [`TrainParityReport::diagnostics`]. Step-0 gradients are
/// compared where the reference holds `grad0.<HF name>` (`scripts/train_step_reference.py`
/// writes them).
///
/// # Errors
/// As [`train_step_parity`].
pub fn train_step_parity_report<B: AutodiffBackend>(
    model_dir: &Path,
    reference: &ReferenceFile,
    cfg: TrainParityConfig,
    device: &B::Device,
) -> Result<TrainParityReport, ModelError> {
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
    // kiln's step-0 gradients of the parameters whose PyTorch gradients the reference holds,
    // in HF layout.
    let mut grad0 = HashMap::new();
    let infos = param_infos(&model);
    for step in 0..want_loss.len() {
        let loss = model.loss(model.forward(ids.clone(), types.clone(), mask.clone()), &targets);
        let loss_value = loss.clone().into_scalar().elem::<f64>();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        if step == 0 {
            grad0 = hf_gradients::<B>(reference, &infos, &grads);
        }
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
    let mut diagnostics = Vec::new();
    let mut names: Vec<&str> = reference
        .tensors
        .keys()
        .filter_map(|k| k.strip_prefix("after."))
        .collect();
    names.sort_unstable();
    for name in names {
        let (path, transposed) = kiln_path_of_hf(name);
        let (shape, want) = reference.f32(&format!("after.{name}"))?;
        let (got_shape, got) = values
            .get(&path)
            .ok_or_else(|| ModelError::Unsupported(format!("kiln has no parameter {path} (HF {name})")))?;
        // kiln's values in HF layout (Linear weights are stored [in, out]). A reference may
        // hold only the leading rows of a 2-D parameter (the committed fixture keeps 16).
        let hf_shape: Vec<usize> = if transposed {
            got_shape.iter().rev().copied().collect()
        } else {
            got_shape.clone()
        };
        let leading_rows =
            shape.len() == hf_shape.len() && shape.first() <= hf_shape.first() && shape.get(1..) == hf_shape.get(1..);
        if !leading_rows {
            return Err(ModelError::Unsupported(format!(
                "{name}: reference shape {shape:?} is not kiln's HF-layout shape {hf_shape:?} or its leading rows"
            )));
        }
        let got: Vec<f32> = if transposed {
            let (out, inp) = (got_shape[1], got_shape[0]);
            (0..shape[0])
                .flat_map(|o| (0..inp).map(move |i| got[i * out + o]))
                .collect()
        } else {
            got[..want.len()].to_vec()
        };
        let max = got
            .iter()
            .zip(want)
            .map(|(a, b)| f64::from((a - b).abs()))
            .fold(0.0, f64::max);
        let ok = max <= cfg.tol_param;
        if !ok {
            let torch_grad = reference.f32(&format!("grad0.{name}")).ok().map(|(_, g)| g);
            let grads = torch_grad.zip(grad0.get(name)).map(|(t, k)| (k.as_slice(), t));
            let cols = shape.get(1).copied().unwrap_or(1);
            diagnostics.push(element_diagnostics(
                name,
                cfg.tol_param,
                &got,
                want,
                cols,
                grads,
                cfg.adamw.eps,
            ));
        }
        let kept = if shape.first() < hf_shape.first() {
            format!("[..{}]", shape[0])
        } else {
            String::new()
        };
        rows.push(ParityRow {
            tensor: format!("after.{name}{kept}"),
            metric: "max_abs",
            value: max,
            tolerance: cfg.tol_param,
            ok,
        });
    }
    Ok(TrainParityReport { rows, diagnostics })
}

/// kiln's gradients of the parameters whose PyTorch gradients `reference` holds
/// (`grad0.<HF name>`), in HF layout, by HF name.
fn hf_gradients<B: AutodiffBackend>(
    reference: &ReferenceFile,
    infos: &[crate::params::ParamInfo],
    grads: &GradientsParams,
) -> HashMap<String, Vec<f32>> {
    let mut out = HashMap::new();
    for name in reference.tensors.keys().filter_map(|k| k.strip_prefix("grad0.")) {
        let (path, transposed) = kiln_path_of_hf(name);
        let Some(info) = infos.iter().find(|i| i.path == path) else {
            continue;
        };
        let values = match info.shape.len() {
            1 => grads.get::<B::InnerBackend, 1>(info.id).map(|g| g.into_data()),
            2 => grads.get::<B::InnerBackend, 2>(info.id).map(|g| {
                if transposed {
                    g.transpose().into_data()
                } else {
                    g.into_data()
                }
            }),
            _ => None,
        };
        if let Some(v) = values.and_then(|d| d.convert::<f32>().to_vec::<f32>().ok()) {
            out.insert(name.to_string(), v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_name_the_worst_elements_and_their_gradients() {
        let want = [0.0f32, 1.0, 2.0, 3.0];
        let got = [0.0f32, 1.0 + 3e-5, 2.0, 3.0 - 2e-5];
        let g_kiln = [1e-3f32, 2e-9, 1e-3, -1e-3];
        let g_torch = [1e-3f32, -1e-9, 1e-3, -1e-3];
        let text = element_diagnostics("w", 1e-5, &got, &want, 2, Some((&g_kiln, &g_torch)), 1e-8);
        assert!(
            text.starts_with("w: 2 of 4 elements differ by more than 1e-5"),
            "{text}"
        );
        assert!(
            text.contains(
                "1 had a step-0 PyTorch gradient below 100·ε = 1e-6 and 1 a step-0 gradient of opposite sign"
            ),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].starts_with("  [0, 1]") && lines[2].starts_with("  [1, 1]"),
            "worst first: {text}"
        );
    }

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
