//! `cargo xtask lens mixing`: Kobayashi et al.'s norm analysis of every layer on a list of
//! texts, written as safetensors, with a summary table of mean mixing ratios.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use kiln::backend::{BackendJob, DeviceKind};
use kiln::burn::prelude::*;
use kiln::burn::tensor::backend::AutodiffBackend;
use kiln::burn::tensor::TensorData;
use kiln::data::{TextInput, TextTokenizer};
use kiln::lens::norm::{analyse_layer, capture, mean_over_real};
use kiln::model::{BertModel, CheckpointDir};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

pub struct MixingJob {
    pub model: PathBuf,
    pub input: PathBuf,
    pub out: PathBuf,
    pub max_length: usize,
}

/// Mean ratio per method (rows) and layer (columns).
pub const METHODS: [&str; 5] = ["attn_w", "attnres_w", "attn_n", "attnres_n", "attnresln_n"];

impl BackendJob for MixingJob {
    type Output = Result<Vec<[f64; 5]>>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _kind: DeviceKind) -> Self::Output {
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let text = std::fs::read_to_string(&self.input).with_context(|| self.input.display().to_string())?;
        let inputs: Vec<TextInput> = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: expected a JSON list of strings or [a, b] pairs",
                self.input.display()
            )
        })?;
        if inputs.is_empty() {
            anyhow::bail!("{}: the list of texts is empty", self.input.display());
        }
        let (model, config) = BertModel::<I<B>>::from_pretrained(&self.model, false, &device)?;
        let tok = TextTokenizer::from_file(CheckpointDir::new(&self.model).tokenizer(), self.max_length)?;
        let enc = tok.encode_batch(&inputs)?;
        model
            .check_input(enc.batch, enc.seq, &enc.input_ids, &enc.token_type_ids)
            .with_context(|| format!("{} with --max-length {}", self.input.display(), self.max_length))?;
        let shape = [enc.batch, enc.seq];
        let ids = Tensor::<I<B>, 2, Int>::from_data(TensorData::new(enc.input_ids.clone(), shape), &device);
        let types = Tensor::<I<B>, 2, Int>::from_data(TensorData::new(enc.token_type_ids.clone(), shape), &device);
        let mask = Tensor::<I<B>, 2, Int>::from_data(TensorData::new(enc.attention_mask.clone(), shape), &device);
        let out = model.forward(ids, Some(types), Some(mask.clone()), capture());
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let ints = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        tensors.push(("input_ids".into(), shape.to_vec(), ints(&enc.input_ids)));
        tensors.push(("attention_mask".into(), shape.to_vec(), ints(&enc.attention_mask)));
        let mut summary = Vec::new();
        for (l, layer) in model.encoder.layer.iter().enumerate() {
            let r = analyse_layer(layer, &out.layers[l], mask.clone(), config.layer_norm_eps);
            let f32s = |t: Vec<f32>| t.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            let dims3 = r.norm_afx.dims().to_vec();
            tensors.push((
                format!("norm_afx.{l}"),
                dims3,
                f32s(r.norm_afx.into_data().convert::<f32>().to_vec()?),
            ));
            let mut row = [0.0; 5];
            for (k, (name, t)) in METHODS
                .iter()
                .zip([r.attn_w, r.attnres_w, r.attn_n, r.attnres_n, r.attnresln_n])
                .enumerate()
            {
                row[k] = mean_over_real(t.clone(), mask.clone());
                tensors.push((
                    format!("mix.{name}.{l}"),
                    shape.to_vec(),
                    f32s(t.into_data().convert::<f32>().to_vec()?),
                ));
            }
            summary.push(row);
        }
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, s, b)| {
                let dtype = if n == "input_ids" || n == "attention_mask" {
                    Dtype::I64
                } else {
                    Dtype::F32
                };
                (n.clone(), TensorView::new(dtype, s.clone(), b).expect("view"))
            })
            .collect();
        let meta = HashMap::from([("kiln.layers".to_string(), model.encoder.layer.len().to_string())]);
        let bytes = safetensors::serialize(views, Some(meta))?;
        kiln::tune::checkpoint::write_atomic(&self.out, &bytes)?;
        Ok(summary)
    }
}

/// Markdown table: method × layer, in percent, plus the mean over layers.
pub fn print_summary(summary: &[[f64; 5]]) {
    print!("\n| method |");
    for l in 0..summary.len() {
        print!(" layer {l} |");
    }
    println!(" mean |");
    println!("|---|{}---|", "---|".repeat(summary.len()));
    let labels = ["Attn-W", "AttnRes-W", "Attn-N", "AttnRes-N", "AttnResLn-N"];
    for (k, label) in labels.iter().enumerate() {
        print!("| {label} |");
        for row in summary {
            print!(" {:.1} |", 100.0 * row[k]);
        }
        let mean = summary.iter().map(|r| r[k]).sum::<f64>() / summary.len().max(1) as f64;
        println!(" {:.1} |", 100.0 * mean);
    }
}
