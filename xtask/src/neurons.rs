//! `cargo xtask lens neurons`: knowledge neurons (Dai et al. 2022) of a masked LM for a set of
//! cloze prompts expressing one fact, with the effect of suppressing and amplifying them.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kiln::backend::{BackendJob, DeviceKind};
use kiln::burn::prelude::*;
use kiln::burn::tensor::backend::AutodiffBackend;
use kiln::burn::tensor::TensorData;
use kiln::data::{TextInput, TextTokenizer};
use kiln::lens::neurons::{knowledge_neurons, neuron_attribution, neuron_effect, ClozeBatch};
use kiln::model::{BertMlmHead, BertModel, CheckpointDir};
use serde::Deserialize;
use serde_json::json;

/// One prompt: text with exactly one `[MASK]`, and the expected token (one vocabulary entry).
#[derive(Debug, Deserialize)]
pub struct Prompt {
    pub prompt: String,
    pub target: String,
}

pub struct NeuronsJob {
    pub model: PathBuf,
    pub prompts: PathBuf,
    pub out: PathBuf,
    pub steps: usize,
    pub threshold: f32,
    pub share: f32,
}

impl BackendJob for NeuronsJob {
    type Output = Result<serde_json::Value>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _kind: DeviceKind) -> Self::Output {
        let text = std::fs::read_to_string(&self.prompts).with_context(|| self.prompts.display().to_string())?;
        let prompts: Vec<Prompt> = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: expected [{{\"prompt\": \"… [MASK] …\", \"target\": \"word\"}}, …]",
                self.prompts.display()
            )
        })?;
        if prompts.is_empty() {
            bail!("{}: no prompts", self.prompts.display());
        }
        let dir = CheckpointDir::new(&self.model);
        let (model, config) = BertModel::<B>::from_pretrained(&self.model, false, &device)?;
        let head = BertMlmHead::<B>::from_checkpoint(&config, dir.weights(), &device)
            .context("knowledge neurons need a masked-LM head (cls.predictions.*) in the checkpoint")?;
        let tok = TextTokenizer::from_file(dir.tokenizer(), 128)?;
        let mask_id = tok.token_id("[MASK]").context("the tokenizer has no [MASK] token")? as i64;
        let inputs: Vec<TextInput> = prompts.iter().map(|p| TextInput::Single(p.prompt.clone())).collect();
        let enc = tok.encode_batch(&inputs)?;
        let mut mask_positions = Vec::new();
        let mut targets = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let row = &enc.input_ids[i * enc.seq..(i + 1) * enc.seq];
            let found: Vec<usize> = (0..enc.seq).filter(|&t| row[t] == mask_id).collect();
            if found.len() != 1 {
                bail!(
                    "prompt {i} ({:?}) has {} [MASK] tokens, need exactly 1",
                    p.prompt,
                    found.len()
                );
            }
            mask_positions.push(found[0]);
            let target = tok
                .token_id(&p.target)
                .with_context(|| format!("target {:?} of prompt {i} is not one vocabulary entry", p.target))?;
            targets.push(target as usize);
        }
        let shape = [enc.batch, enc.seq];
        let batch = ClozeBatch {
            input_ids: Tensor::<B, 2, Int>::from_data(TensorData::new(enc.input_ids.clone(), shape), &device),
            attention_mask: Tensor::<B, 2, Int>::from_data(TensorData::new(enc.attention_mask.clone(), shape), &device),
            mask_positions,
            targets,
        };
        let layers = model.num_layers();
        // per_prompt[p][l][i]
        let mut per_prompt = vec![Vec::new(); prompts.len()];
        let mut completeness = Vec::new();
        for l in 0..layers {
            let attr = neuron_attribution(&model, &head, &batch, l, self.steps, self.steps);
            for (p, scores) in attr.scores.into_iter().enumerate() {
                per_prompt[p].push(scores);
            }
            completeness.push(json!({
                "layer": l,
                "p_full": attr.p_full,
                "p_zeroed": attr.p_zeroed,
                "sum_attributions": per_prompt.iter().map(|p| p[l].iter().sum::<f32>()).collect::<Vec<_>>(),
            }));
            tracing::info!(layer = l, "attributed");
        }
        let neurons = knowledge_neurons(&per_prompt, self.threshold, self.share);
        let base = neuron_effect(&model, &head, &batch, &[], 1.0);
        let suppressed = neuron_effect(&model, &head, &batch, &neurons, 0.0);
        let amplified = neuron_effect(&model, &head, &batch, &neurons, 2.0);
        let change = |after: &[f32]| -> f64 {
            after
                .iter()
                .zip(&base)
                .map(|(a, b)| ((a - b) / b.max(1e-12)) as f64)
                .sum::<f64>()
                / base.len() as f64
        };
        let result = json!({
            "prompts": prompts.iter().map(|p| json!({"prompt": p.prompt, "target": p.target})).collect::<Vec<_>>(),
            "steps": self.steps, "threshold": self.threshold, "share": self.share,
            "knowledge_neurons": neurons.iter().map(|&(l, i)| json!({"layer": l, "neuron": i})).collect::<Vec<_>>(),
            "probability": {"base": base, "suppressed": suppressed, "amplified": amplified},
            "mean_relative_change": {"suppressed": change(&suppressed), "amplified": change(&amplified)},
            "completeness": completeness,
            "attributions": per_prompt,
        });
        kiln::tune::checkpoint::write_atomic(&self.out, serde_json::to_string(&result)?.as_bytes())?;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-bert-mlm")
    }

    fn job(model: PathBuf, prompts: &str, dir: &std::path::Path) -> NeuronsJob {
        let file = dir.join("prompts.json");
        std::fs::write(&file, prompts).unwrap();
        NeuronsJob {
            model,
            prompts: file,
            out: dir.join("out.json"),
            steps: 32,
            threshold: 0.2,
            share: 0.6,
        }
    }

    #[test]
    fn neurons_are_complete_per_layer_and_written() {
        let dir = tempfile::tempdir().unwrap();
        let prompts = r#"[{"prompt": "the capital of france is [MASK].", "target": "paris"},
                          {"prompt": "paris is the capital city of [MASK].", "target": "france"}]"#;
        let r = kiln::backend::run_on(DeviceKind::Cpu, job(fixture(), prompts, dir.path()))
            .unwrap()
            .unwrap();
        for layer in r["completeness"].as_array().unwrap() {
            for p in 0..2 {
                let full = layer["p_full"][p].as_f64().unwrap();
                let gap = full - layer["p_zeroed"][p].as_f64().unwrap();
                let sum = layer["sum_attributions"][p].as_f64().unwrap();
                // Midpoint rule at 32 steps: within 2% of the larger of the gap and P itself
                // (a near-zero gap along a curved path leaves a small absolute error).
                assert!((sum - gap).abs() <= 0.02 * gap.abs().max(full), "{layer}");
            }
        }
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("out.json")).unwrap()).unwrap();
        assert_eq!(written["knowledge_neurons"], r["knowledge_neurons"]);
    }

    #[test]
    fn bad_prompts_and_headless_checkpoints_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let two_masks = r#"[{"prompt": "[MASK] is [MASK].", "target": "paris"}]"#;
        let err = kiln::backend::run_on(DeviceKind::Cpu, job(fixture(), two_masks, dir.path()))
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("2 [MASK] tokens"), "{err}");
        let unknown = r#"[{"prompt": "the [MASK].", "target": "zebra"}]"#;
        let err = kiln::backend::run_on(DeviceKind::Cpu, job(fixture(), unknown, dir.path()))
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("not one vocabulary entry"), "{err}");
        let minilm = kiln::model::hub::locate_or_fetch(kiln::model::hub::DEFAULT_MODEL_ID, None, true)
            .unwrap_or_else(|e| panic!("{e}"));
        let ok = r#"[{"prompt": "the [MASK].", "target": "cat"}]"#;
        let err = kiln::backend::run_on(DeviceKind::Cpu, job(minilm, ok, dir.path()))
            .unwrap()
            .unwrap_err();
        assert!(format!("{err:#}").contains("masked-LM head"), "{err:#}");
    }
}
