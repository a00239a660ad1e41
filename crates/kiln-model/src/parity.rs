//! Comparison of kiln's outputs with reference outputs of PyTorch transformers.
//!
//! A reference file is a safetensors file holding one right-padded batch: `input_ids`,
//! `attention_mask` (and `token_type_ids` for BERT) as int64 `[N, S]`, plus any of
//! `hidden_states.{l}` `[N, S, H]`, `attentions.{l}` `[N, heads, S, S]`,
//! `sentence_embedding` `[N, H]` and `logits` `[N, S, V]` (format of `shared/reference`).
//! Only non-padding positions are compared: for attention maps, the rows of real query
//! tokens.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use safetensors::{Dtype, SafeTensors};

use crate::bert::BertModel;
use crate::capture::{Capture, ModelOutput};
use crate::error::ModelError;
use crate::gpt2::Gpt2Model;
use crate::pooling::sentence_embedding;

/// One tensor of a reference file, converted to f32 or i64.
#[derive(Debug, Clone, PartialEq)]
pub enum RefData {
    /// Float tensors (f32, or f64/f16/bf16 converted).
    F32(Vec<f32>),
    /// Integer tensors (i64 or i32 converted).
    I64(Vec<i64>),
}

/// A named tensor of a reference file.
#[derive(Debug, Clone, PartialEq)]
pub struct RefTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: RefData,
}

/// All tensors of a reference safetensors file, in memory.
#[derive(Debug, Clone)]
pub struct ReferenceFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Tensors by name.
    pub tensors: BTreeMap<String, RefTensor>,
}

fn reference_error(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl ReferenceFile {
    /// Reads every tensor of `path`.
    ///
    /// # Errors
    /// [`ModelError::Io`], or [`ModelError::Checkpoint`] for a malformed file or an
    /// unsupported dtype.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| reference_error(path, e.to_string()))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let raw = view.data();
            let data = match view.dtype() {
                Dtype::F32 => RefData::F32(
                    raw.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
                Dtype::F64 => RefData::F32(
                    raw.chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                        .collect(),
                ),
                Dtype::I64 => RefData::I64(
                    raw.chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
                Dtype::I32 => RefData::I64(
                    raw.chunks_exact(4)
                        .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                        .collect(),
                ),
                other => {
                    return Err(reference_error(
                        path,
                        format!("tensor {name}: unsupported dtype {other:?}"),
                    ))
                }
            };
            tensors.insert(
                name,
                RefTensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }

    fn get(&self, name: &str) -> Result<&RefTensor, ModelError> {
        self.tensors
            .get(name)
            .ok_or_else(|| reference_error(&self.path, format!("reference has no tensor `{name}`")))
    }

    /// A float tensor's shape and values.
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] if absent or not a float tensor.
    pub fn f32(&self, name: &str) -> Result<(&[usize], &[f32]), ModelError> {
        match self.get(name)? {
            RefTensor {
                shape,
                data: RefData::F32(v),
            } => Ok((shape, v)),
            _ => Err(reference_error(&self.path, format!("`{name}` is not a float tensor"))),
        }
    }

    /// An integer tensor's shape and values.
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] if absent or not an integer tensor.
    pub fn i64(&self, name: &str) -> Result<(&[usize], &[i64]), ModelError> {
        match self.get(name)? {
            RefTensor {
                shape,
                data: RefData::I64(v),
            } => Ok((shape, v)),
            _ => Err(reference_error(
                &self.path,
                format!("`{name}` is not an integer tensor"),
            )),
        }
    }

    /// An integer `[N, S]` tensor on `device`.
    ///
    /// # Errors
    /// As [`ReferenceFile::i64`], or if it is not 2-D.
    pub fn int_tensor<B: Backend>(&self, name: &str, device: &B::Device) -> Result<Tensor<B, 2, Int>, ModelError> {
        let (shape, values) = self.i64(name)?;
        if shape.len() != 2 {
            return Err(reference_error(
                &self.path,
                format!("`{name}` should be [N, S], is {shape:?}"),
            ));
        }
        Ok(Tensor::from_data(
            TensorData::new(values.to_vec(), [shape[0], shape[1]]),
            device,
        ))
    }

    /// Names of the numbered tensors `{prefix}.0`, `{prefix}.1`, ... present, in order.
    pub fn numbered(&self, prefix: &str) -> Vec<String> {
        (0..)
            .map(|i| format!("{prefix}.{i}"))
            .take_while(|n| self.tensors.contains_key(n))
            .collect()
    }
}

/// Acceptance thresholds of a parity check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerances {
    /// Max absolute difference for hidden states and logits.
    pub hidden: f64,
    /// Max absolute difference for attention probabilities.
    pub attention: f64,
    /// Minimum cosine similarity of sentence embeddings.
    pub cosine: f64,
}

impl Default for Tolerances {
    /// f32 reimplementation tolerances of `shared/reference`: 2e-4, 2e-5, 0.99999.
    fn default() -> Self {
        Self {
            hidden: 2e-4,
            attention: 2e-5,
            cosine: 0.99999,
        }
    }
}

/// One line of a parity report.
#[derive(Debug, Clone, PartialEq)]
pub struct ParityRow {
    /// Tensor name in the reference file.
    pub tensor: String,
    /// What was measured: `"max_abs"` or `"min_cosine"`.
    pub metric: &'static str,
    /// The measured value.
    pub value: f64,
    /// The threshold.
    pub tolerance: f64,
    /// Whether the value is within the threshold.
    pub ok: bool,
}

/// Max |a − b| over the rows `[.., s, ..]` whose `mask[n, s] == 1`.
///
/// `shape` is `[N, ...]`; the sequence axis is `seq_axis` (1 for hidden states, 2 for
/// attention maps = the query axis).
pub fn masked_max_abs_diff(a: &[f32], b: &[f32], shape: &[usize], seq_axis: usize, mask: &[i64], seq: usize) -> f64 {
    let inner: usize = shape[seq_axis + 1..].iter().product();
    let outer: usize = shape[1..seq_axis].iter().product();
    let mut worst = 0f64;
    for n in 0..shape[0] {
        for o in 0..outer {
            for s in 0..shape[seq_axis] {
                if mask[n * seq + s] != 1 {
                    continue;
                }
                let start = ((n * outer + o) * shape[seq_axis] + s) * inner;
                for i in start..start + inner {
                    let d = (a[i] as f64 - b[i] as f64).abs();
                    if d > worst || d.is_nan() {
                        worst = if d.is_nan() { f64::INFINITY } else { d };
                    }
                }
            }
        }
    }
    worst
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().expect("f32 data")
}

fn row(tensor: &str, metric: &'static str, value: f64, tolerance: f64) -> ParityRow {
    let ok = if metric == "min_cosine" {
        value >= tolerance
    } else {
        value <= tolerance
    };
    ParityRow {
        tensor: tensor.to_string(),
        metric,
        value,
        tolerance,
        ok,
    }
}

fn compare_stack<B: Backend>(
    reference: &ReferenceFile,
    out: &ModelOutput<B>,
    mask: &[i64],
    seq: usize,
    tol: Tolerances,
) -> Result<Vec<ParityRow>, ModelError> {
    let mut rows = Vec::new();
    for (l, name) in reference.numbered("hidden_states").iter().enumerate() {
        let (shape, want) = reference.f32(name)?;
        let got = out
            .hidden_states
            .get(l)
            .ok_or_else(|| reference_error(&reference.path, format!("model has no {name}")))?;
        check_shape(&reference.path, name, shape, &got.dims())?;
        let diff = masked_max_abs_diff(&to_vec(got.clone()), want, shape, 1, mask, seq);
        rows.push(row(name, "max_abs", diff, tol.hidden));
    }
    let attentions = out.attentions();
    for (l, name) in reference.numbered("attentions").iter().enumerate() {
        let (shape, want) = reference.f32(name)?;
        let got = attentions
            .get(l)
            .ok_or_else(|| reference_error(&reference.path, format!("model has no {name}")))?;
        check_shape(&reference.path, name, shape, &got.dims())?;
        let diff = masked_max_abs_diff(&to_vec(got.clone()), want, shape, 2, mask, seq);
        rows.push(row(name, "max_abs", diff, tol.attention));
    }
    Ok(rows)
}

fn check_shape(path: &Path, name: &str, want: &[usize], got: &[usize]) -> Result<(), ModelError> {
    if want != got {
        return Err(reference_error(
            path,
            format!("`{name}`: reference shape {want:?}, kiln produced {got:?}"),
        ));
    }
    Ok(())
}

/// Runs a BERT model on the reference batch and compares every hidden state, attention map
/// and (if present) the sentence embedding.
///
/// # Errors
/// [`ModelError::Checkpoint`] if the reference lacks inputs or has inconsistent shapes.
pub fn bert_parity<B: Backend>(
    model: &BertModel<B>,
    reference: &ReferenceFile,
    tol: Tolerances,
    device: &B::Device,
) -> Result<Vec<ParityRow>, ModelError> {
    let (id_shape, id_values) = reference.i64("input_ids")?;
    let type_values = reference.i64("token_type_ids").map(|(_, v)| v).unwrap_or(&[]);
    model.check_input(id_shape[0], id_shape[1], id_values, type_values)?;
    let ids = reference.int_tensor::<B>("input_ids", device)?;
    let mask_t = reference.int_tensor::<B>("attention_mask", device)?;
    let types = reference.int_tensor::<B>("token_type_ids", device).ok();
    let (shape, mask) = reference.i64("attention_mask")?;
    let seq = shape[1];
    let out = model.forward(ids, types, Some(mask_t.clone()), Capture::hidden_and_attentions());
    let mut rows = compare_stack(reference, &out, mask, seq, tol)?;
    if reference.tensors.contains_key("sentence_embedding") {
        let (shape, want) = reference.f32("sentence_embedding")?;
        let got = to_vec(sentence_embedding(out.last_hidden_state, mask_t));
        let width = shape[1];
        let mut min_cos = f64::INFINITY;
        for n in 0..shape[0] {
            let (a, b) = (&got[n * width..(n + 1) * width], &want[n * width..(n + 1) * width]);
            let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            min_cos = min_cos.min(dot / (na * nb));
        }
        rows.push(row("sentence_embedding", "min_cosine", min_cos, tol.cosine));
    }
    Ok(rows)
}

/// Runs a GPT-2 model on the reference batch and compares hidden states, attention maps and
/// logits.
///
/// # Errors
/// As [`bert_parity`].
pub fn gpt2_parity<B: Backend>(
    model: &Gpt2Model<B>,
    reference: &ReferenceFile,
    tol: Tolerances,
    device: &B::Device,
) -> Result<Vec<ParityRow>, ModelError> {
    let (id_shape, id_values) = reference.i64("input_ids")?;
    model.check_input(id_shape[0], id_shape[1], id_values)?;
    let ids = reference.int_tensor::<B>("input_ids", device)?;
    let mask_t = reference.int_tensor::<B>("attention_mask", device)?;
    let (shape, mask) = reference.i64("attention_mask")?;
    let seq = shape[1];
    let out = model.forward(ids, Some(mask_t), Capture::hidden_and_attentions());
    let mut rows = compare_stack(reference, &out, mask, seq, tol)?;
    if reference.tensors.contains_key("logits") {
        let (shape, want) = reference.f32("logits")?;
        let logits = model.lm_logits(out.last_hidden_state);
        check_shape(&reference.path, "logits", shape, &logits.dims())?;
        let diff = masked_max_abs_diff(&to_vec(logits), want, shape, 1, mask, seq);
        rows.push(row("logits", "max_abs", diff, tol.hidden));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_diff_skips_padding_rows_only() {
        // [N=1, heads=2, S=2, S=2]; query row 1 is padding.
        let a = [0.0f32, 0.0, 9.0, 9.0, 0.5, 0.0, 9.0, 9.0];
        let b = [0.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(masked_max_abs_diff(&a, &b, &[1, 2, 2, 2], 2, &[1, 0], 2), 0.5);
        assert_eq!(masked_max_abs_diff(&a, &b, &[1, 2, 2, 2], 2, &[1, 1], 2), 9.0);
        // Hidden-state layout [N=2, S=2, H=2].
        let h = [1.0f32, 1.0, 5.0, 5.0, 0.0, 2.0, 7.0, 7.0];
        assert_eq!(masked_max_abs_diff(&h, &[0.0; 8], &[2, 2, 2], 1, &[1, 0, 1, 0], 2), 2.0);
    }

    #[test]
    fn nan_is_never_within_tolerance() {
        let d = masked_max_abs_diff(&[f32::NAN], &[0.0], &[1, 1], 1, &[1], 1);
        assert!(!row("x", "max_abs", d, 1.0).ok);
    }
}
