//! Interoperability with Python: LoRA adapters in PEFT's layout (both ways) and fine-tuned
//! models in Hugging Face's layout.
//!
//! PEFT layout (what `PeftModel.save_pretrained` writes for `task_type="SEQ_CLS"` on
//! `BertForSequenceClassification`):
//! - `adapter_config.json`: `peft_type "LORA"`, `r`, `lora_alpha`, `lora_dropout`,
//!   `target_modules`, `modules_to_save ["classifier", "score"]`, ...;
//! - `adapter_model.safetensors`:
//!   `base_model.model.bert.encoder.layer.{i}.attention.self.query.lora_A.weight` `[r, d_in]`,
//!   `….lora_B.weight` `[d_out, r]`, and the head as `base_model.model.classifier.weight`
//!   `[num_labels, hidden]` / `.bias`.
//!
//! kiln's deltas are stored transposed (`a: [d_in, r]`, `b: [r, d_out]`), so export and
//! import transpose.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::TensorData;
use kiln_model::peft::set_merged;
use kiln_model::roles::LinearSlot;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{model_bytes, write_atomic};
use crate::classifier::SequenceClassifier;
use crate::strategy::{Effect, Lora, StrategyConfig, Tuning};

/// Errors of export and import.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// File system.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing an exported file.
    #[error(transparent)]
    Write(#[from] crate::checkpoint::CheckpointError),
    /// The strategy does not fit.
    #[error(transparent)]
    Strategy(#[from] crate::strategy::StrategyError),
    /// An adapter's configuration is not a valid kiln LoRA strategy for the model.
    #[error("{path}: {source}")]
    Adapter {
        /// The adapter's `adapter_config.json`.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::strategy::StrategyError,
    },
    /// Serialising the adapter's tensors.
    #[error("adapter_model.safetensors: {0}")]
    Safetensors(#[source] safetensors::SafeTensorError),
    /// The adapter or model does not fit.
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// PEFT's `adapter_config.json` (the fields kiln reads and writes; unknown ones are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftLoraConfig {
    /// Must be `"LORA"`.
    pub peft_type: String,
    /// `"SEQ_CLS"` for classifiers.
    #[serde(default)]
    pub task_type: Option<String>,
    /// Rank.
    pub r: usize,
    /// Scale numerator.
    pub lora_alpha: f64,
    /// Dropout on the LoRA path.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Module-name suffixes (`query`, `value`, `dense`, ...).
    pub target_modules: Vec<String>,
    /// Must be `"none"` (kiln's LoRA trains no biases).
    #[serde(default = "none")]
    pub bias: String,
    /// Must be false (BERT linears are not Conv1D).
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// rsLoRA scaling (`alpha / √r`); kiln supports only the classic `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// Modules trained fully and saved beside the adapter.
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// The base model.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Always true for saved adapters.
    #[serde(default)]
    pub inference_mode: bool,
}

fn none() -> String {
    "none".into()
}

const PREFIX: &str = "base_model.model.";

fn f32s(t: Tensor<impl Backend, 2>) -> (Vec<usize>, Vec<u8>) {
    let dims = t.dims().to_vec();
    let v = t.into_data().convert::<f32>().to_vec::<f32>().expect("f32");
    (dims, v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// The one LoRA component of `tuning`; the others may only mask gradients (Child-Tuning),
/// which changes nothing PEFT's layout has to hold.
fn lora_of(tuning: &Tuning) -> Result<Lora, ExportError> {
    let mut found = None;
    for c in &tuning.components {
        if let StrategyConfig::Lora(lora) = c {
            found = Some(lora.clone());
        } else if c.strategy().effect() != Effect::MasksGradients {
            return Err(ExportError::Invalid(format!(
                "PEFT export covers LoRA (optionally trained with Child-Tuning); {} trains parameters PEFT's LoRA layout cannot hold",
                c.name()
            )));
        }
    }
    found.ok_or_else(|| ExportError::Invalid("the strategy has no LoRA component".into()))
}

/// Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` in PEFT's layout.
///
/// # Errors
/// [`ExportError`] when the strategy is not LoRA or a file cannot be written.
pub fn export_peft_lora<B: Backend>(
    model: &SequenceClassifier<B>,
    tuning: &Tuning,
    base_model: &str,
    dir: &Path,
) -> Result<(), ExportError> {
    let lora_cfg = lora_of(tuning)?;
    let slots = lora_cfg.slots()?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, layer) in model.bert.encoder.layer.iter().enumerate() {
        let lora = layer
            .inserts
            .lora
            .as_ref()
            .ok_or_else(|| ExportError::Invalid(format!("layer {i} has no LoRA deltas")))?;
        for slot in LinearSlot::ALL {
            let Some(delta) = lora.get(slot) else { continue };
            if delta.merged {
                return Err(ExportError::Invalid(format!(
                    "layer {i} {}: unmerge before exporting",
                    slot.name()
                )));
            }
            let key = format!("{PREFIX}bert.encoder.layer.{i}.{}", slot.hf_path());
            let (s, b) = f32s(delta.a.val().transpose());
            tensors.push((format!("{key}.lora_A.weight"), s, b));
            let (s, b) = f32s(delta.b.val().transpose());
            tensors.push((format!("{key}.lora_B.weight"), s, b));
        }
    }
    // The head: the classifier and the pooler under it. The pooler is saved too (PEFT's
    // `modules_to_save` "pooler"): checkpoints such as all-MiniLM-L6-v2 have none, so the base
    // model alone would give it fresh random weights and the adapter would not reproduce the
    // logits (an adapter of such a model saved without it cannot be reproduced in PyTorch
    // either).
    let mut linears = vec![("classifier", &model.classifier)];
    if let Some(pooler) = &model.bert.pooler {
        linears.push(("bert.pooler.dense", &pooler.dense));
    }
    for (name, linear) in linears {
        let (s, b) = f32s(linear.weight.val().transpose());
        tensors.push((format!("{PREFIX}{name}.weight"), s, b));
        if let Some(bias) = &linear.bias {
            let v = bias.val().into_data().convert::<f32>().to_vec::<f32>().expect("f32");
            tensors.push((
                format!("{PREFIX}{name}.bias"),
                vec![v.len()],
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
        }
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).expect("view")))
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(meta)).map_err(ExportError::Safetensors)?;
    let config = PeftLoraConfig {
        peft_type: "LORA".into(),
        task_type: Some("SEQ_CLS".into()),
        r: lora_cfg.r,
        lora_alpha: lora_cfg.alpha,
        lora_dropout: lora_cfg.dropout,
        target_modules: slots.iter().map(|s| s.hf_path().to_string()).collect(),
        bias: "none".into(),
        fan_in_fan_out: false,
        use_rslora: false,
        modules_to_save: Some(vec!["classifier".into(), "score".into(), "pooler".into()]),
        base_model_name_or_path: Some(base_model.into()),
        inference_mode: true,
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    write_atomic(&dir.join("adapter_model.safetensors"), &bytes)?;
    let json = serde_json::to_string_pretty(&config).expect("json");
    Ok(write_atomic(&dir.join("adapter_config.json"), json.as_bytes())?)
}

/// Reads a PEFT LoRA adapter directory onto `model` (the base, without inserts): inserts the
/// deltas its config names, loads them and the head. Returns the model and the equivalent
/// kiln strategy.
///
/// # Errors
/// [`ExportError`] for an unsupported config (rsLoRA, biases, fan-in-fan-out), missing or
/// wrong-shaped tensors, or unknown keys.
pub fn import_peft_lora<B: Backend>(
    model: SequenceClassifier<B>,
    dir: &Path,
    device: &B::Device,
) -> Result<(SequenceClassifier<B>, Tuning), ExportError> {
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(io(&cfg_path))?;
    let cfg: PeftLoraConfig =
        serde_json::from_str(&text).map_err(|e| ExportError::Invalid(format!("{}: {e}", cfg_path.display())))?;
    if cfg.peft_type != "LORA" || cfg.bias != "none" || cfg.fan_in_fan_out || cfg.use_rslora {
        return Err(ExportError::Invalid(format!(
            "{}: kiln reads LORA adapters with bias \"none\", no fan_in_fan_out and no rsLoRA (got {} / {} / {} / {})",
            cfg_path.display(),
            cfg.peft_type,
            cfg.bias,
            cfg.fan_in_fan_out,
            cfg.use_rslora
        )));
    }
    let tuning = Tuning::new(&[StrategyConfig::Lora(Lora {
        r: cfg.r,
        alpha: cfg.lora_alpha,
        dropout: cfg.lora_dropout,
        targets: cfg.target_modules.clone(),
    })])
    .map_err(|source| ExportError::Adapter {
        path: cfg_path.clone(),
        source,
    })?;
    let mut model = tuning.insert(model, device).map_err(|source| ExportError::Adapter {
        path: cfg_path.clone(),
        source,
    })?;
    let st_path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&st_path).map_err(io(&st_path))?;
    let st =
        SafeTensors::deserialize(&bytes).map_err(|e| ExportError::Invalid(format!("{}: {e}", st_path.display())))?;
    let mut tensors: HashMap<String, (Vec<usize>, Vec<f32>)> = HashMap::new();
    for (name, view) in st.tensors() {
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            // Adapters saved from a half-precision model (`model.half()`, `torch_dtype=bf16`).
            Dtype::F16 => view
                .data()
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => view
                .data()
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(ExportError::Invalid(format!(
                    "{}: {name} is {other:?}; kiln reads F32, F16 and BF16 adapters",
                    st_path.display()
                )))
            }
        };
        // Older PEFT versions keep the adapter name in the key.
        let key = name
            .replace(".lora_A.default.", ".lora_A.")
            .replace(".lora_B.default.", ".lora_B.");
        let key = key.replace(".modules_to_save.default.", ".");
        tensors.insert(key, (view.shape().to_vec(), data));
    }
    type Read = HashMap<String, (Vec<usize>, Vec<f32>)>;
    let take2 = |tensors: &mut Read, key: &str, want: [usize; 2]| -> Result<Tensor<B, 2>, ExportError> {
        let (shape, data) = tensors
            .remove(key)
            .ok_or_else(|| ExportError::Invalid(format!("{}: missing {key}", st_path.display())))?;
        if shape != want {
            return Err(ExportError::Invalid(format!(
                "{}: {key} has shape {shape:?}, the model needs {want:?}",
                st_path.display()
            )));
        }
        Ok(Tensor::from_data(TensorData::new(data, shape), device))
    };
    for (i, layer) in model.bert.encoder.layer.iter_mut().enumerate() {
        let lora = layer.inserts.lora.as_mut().expect("inserted");
        for slot in LinearSlot::ALL {
            let Some(delta) = lora.get_mut(slot) else { continue };
            let key = format!("{PREFIX}bert.encoder.layer.{i}.{}", slot.hf_path());
            let [d_in, r] = delta.a.dims();
            let [_, d_out] = delta.b.dims();
            let a = take2(&mut tensors, &format!("{key}.lora_A.weight"), [r, d_in])?.transpose();
            let b = take2(&mut tensors, &format!("{key}.lora_B.weight"), [d_out, r])?.transpose();
            delta.a = Param::initialized(delta.a.id, a);
            delta.b = Param::initialized(delta.b.id, b);
        }
    }
    // The head and the pooler (PEFT's modules_to_save), each loaded when the adapter has it; one
    // of another shape (another task's label count) is an error naming it, not ignored.
    let load_linear = |tensors: &mut Read, name: &str, linear: &mut burn::nn::Linear<B>| -> Result<bool, ExportError> {
        let key = format!("{PREFIX}{name}.weight");
        if !tensors.contains_key(&key) {
            return Ok(false);
        }
        let [d_in, d_out] = linear.weight.dims();
        let w = take2(tensors, &key, [d_out, d_in])?;
        linear.weight = Param::initialized(linear.weight.id, w.transpose());
        if let (Some((shape, data)), Some(bias)) = (tensors.remove(&format!("{PREFIX}{name}.bias")), &mut linear.bias) {
            if shape != [d_out] {
                return Err(ExportError::Invalid(format!("{name}.bias has shape {shape:?}")));
            }
            *bias = Param::initialized(bias.id, Tensor::from_data(TensorData::new(data, shape), device));
        }
        Ok(true)
    };
    if !load_linear(&mut tensors, "classifier", &mut model.classifier)? {
        tracing::warn!("{}: no classifier head; the model keeps its own", st_path.display());
    }
    if let Some(pooler) = &mut model.bert.pooler {
        load_linear(&mut tensors, "bert.pooler.dense", &mut pooler.dense)?;
    }
    if !tensors.is_empty() {
        let mut left: Vec<String> = tensors.into_keys().collect();
        left.sort();
        return Err(ExportError::Invalid(format!(
            "{}: tensors kiln does not know: {left:?}",
            st_path.display()
        )));
    }
    Ok((model, tuning))
}

/// Folds every LoRA delta into its base weight and removes the deltas: the result is a plain
/// `BertForSequenceClassification`.
pub fn merge_lora<B: Backend>(mut model: SequenceClassifier<B>) -> SequenceClassifier<B> {
    for layer in &mut model.bert.encoder.layer {
        let Some(mut lora) = layer.inserts.lora.take() else {
            continue;
        };
        for slot in LinearSlot::ALL {
            if let Some(delta) = lora.get_mut(slot) {
                set_merged(layer.linear_mut(slot), delta, true);
            }
        }
    }
    model
}

/// Writes a Hugging Face model directory that `AutoModelForSequenceClassification` loads:
/// `config.json` (the base config plus `architectures`, `num_labels`/`id2label`, and
/// `problem_type` for regression), `model.safetensors`, and the tokenizer files of
/// `tokenizer_dir`. LoRA deltas are merged first; adapters cannot be expressed in this layout
/// and are an error.
///
/// # Errors
/// [`ExportError`] on adapters or I/O.
pub fn export_hf_model<B: Backend>(
    model: SequenceClassifier<B>,
    base_config_json: &Path,
    tokenizer_dir: &Path,
    dir: &Path,
) -> Result<(), ExportError> {
    let model = merge_lora(model);
    if model
        .bert
        .encoder
        .layer
        .iter()
        .any(|l| l.inserts.attention_adapter.is_some() || l.inserts.ffn_adapter.is_some())
    {
        return Err(ExportError::Invalid(
            "bottleneck adapters have no place in BertForSequenceClassification; save the tuned part instead".into(),
        ));
    }
    let text = std::fs::read_to_string(base_config_json).map_err(io(base_config_json))?;
    let mut json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ExportError::Invalid(format!("{}: {e}", base_config_json.display())))?;
    let labels = model.num_labels();
    json["architectures"] = serde_json::json!(["BertForSequenceClassification"]);
    json["num_labels"] = serde_json::json!(labels);
    json["id2label"] = serde_json::json!((0..labels)
        .map(|i| (i.to_string(), format!("LABEL_{i}")))
        .collect::<HashMap<_, _>>());
    json["label2id"] = serde_json::json!((0..labels)
        .map(|i| (format!("LABEL_{i}"), i))
        .collect::<HashMap<_, _>>());
    if labels == 1 {
        json["problem_type"] = serde_json::json!("regression");
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let bytes = model_bytes(&model)?;
    let write = |name: &str, bytes: &[u8]| -> Result<(), ExportError> { Ok(write_atomic(&dir.join(name), bytes)?) };
    write("model.safetensors", &bytes)?;
    write(
        "config.json",
        serde_json::to_string_pretty(&json).expect("json").as_bytes(),
    )?;
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
    ] {
        let src = tokenizer_dir.join(name);
        if src.exists() {
            let bytes = std::fs::read(&src).map_err(io(&src))?;
            write(name, &bytes)?;
        }
    }
    Ok(())
}
