//! `cargo xtask parity`: kiln vs a PyTorch reference file, tensor by tensor.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kiln::backend::{BackendJob, DeviceKind};
use kiln::burn::tensor::backend::AutodiffBackend;
use kiln::data::{TextInput, TextTokenizer};
use kiln::model::parity::{bert_parity, gpt2_parity, ParityRow, ReferenceFile, Tolerances};
use kiln::model::{BertModel, CheckpointDir, Gpt2Model};

/// Arguments of `xtask parity`.
pub struct ParityJob {
    pub model: PathBuf,
    pub reference: PathBuf,
    pub sentences: Option<PathBuf>,
    pub tolerances: Tolerances,
}

fn model_type(dir: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(dir.join("config.json"))
        .with_context(|| format!("reading {}/config.json", dir.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    Ok(v.get("model_type")
        .and_then(|m| m.as_str())
        .unwrap_or("bert")
        .to_string())
}

/// Tokenizes the raw texts and requires the reference's exact ids, segments and mask.
fn check_tokenization(
    dir: &std::path::Path,
    sentences: &std::path::Path,
    reference: &ReferenceFile,
) -> Result<ParityRow> {
    let inputs: Vec<TextInput> = serde_json::from_str(&std::fs::read_to_string(sentences)?).with_context(|| {
        format!(
            "{}: expected a JSON list of strings or [a, b] pairs",
            sentences.display()
        )
    })?;
    let tok = TextTokenizer::from_file(CheckpointDir::new(dir).tokenizer(), 512)?;
    let enc = tok.encode_batch(&inputs)?;
    let mut mismatches = 0usize;
    for (name, ours) in [
        ("input_ids", &enc.input_ids),
        ("token_type_ids", &enc.token_type_ids),
        ("attention_mask", &enc.attention_mask),
    ] {
        let Ok((shape, theirs)) = reference.i64(name) else {
            continue;
        };
        if shape != [enc.batch, enc.seq] {
            bail!(
                "{name}: reference shape {shape:?}, tokenizer produced [{}, {}]",
                enc.batch,
                enc.seq
            );
        }
        mismatches += ours.iter().zip(theirs).filter(|(a, b)| a != b).count();
    }
    Ok(ParityRow {
        tensor: "tokenization".into(),
        metric: "mismatches",
        value: mismatches as f64,
        tolerance: 0.0,
        ok: mismatches == 0,
    })
}

impl BackendJob for ParityJob {
    type Output = Result<Vec<ParityRow>>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _kind: DeviceKind) -> Self::Output {
        // Inference only: the inner (non-autodiff) backend.
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let reference = ReferenceFile::open(&self.reference)?;
        let mut rows = match model_type(&self.model)?.as_str() {
            "gpt2" => {
                let (model, _) = Gpt2Model::<I<B>>::from_pretrained(&self.model, &device)?;
                gpt2_parity(&model, &reference, self.tolerances, &device)?
            }
            "bert" => {
                let (model, _) = BertModel::<I<B>>::from_pretrained(&self.model, false, &device)?;
                bert_parity(&model, &reference, self.tolerances, &device)?
            }
            other => bail!("model_type {other:?} is not supported (bert, gpt2)"),
        };
        if let Some(sentences) = &self.sentences {
            rows.insert(0, check_tokenization(&self.model, sentences, &reference)?);
        }
        if rows.is_empty() {
            bail!("{} holds no tensor kiln can compare", self.reference.display());
        }
        Ok(rows)
    }
}

/// Prints the table; returns whether every row passed.
pub fn print_table(rows: &[ParityRow]) -> bool {
    println!(
        "{:<24} {:<11} {:>14} {:>12}  ok",
        "tensor", "metric", "value", "tolerance"
    );
    for r in rows {
        let (value, tol) = if r.metric == "min_cosine" {
            (format!("{:.9}", r.value), format!("{}", r.tolerance))
        } else if r.metric == "mismatches" {
            (format!("{}", r.value), format!("{}", r.tolerance))
        } else {
            (format!("{:.3e}", r.value), format!("{:.0e}", r.tolerance))
        };
        println!(
            "{:<24} {:<11} {:>14} {:>12}  {}",
            r.tensor,
            r.metric,
            value,
            tol,
            if r.ok { "ok" } else { "FAIL" }
        );
    }
    let failed = rows.iter().filter(|r| !r.ok).count();
    println!("{} passed, {} failed", rows.len() - failed, failed);
    failed == 0
}
