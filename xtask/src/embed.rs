//! `cargo xtask embed`: sentence embeddings with MiniLM and their cosine similarities.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use kiln::backend::{BackendJob, DeviceKind};
use kiln::burn::prelude::*;
use kiln::burn::tensor::backend::AutodiffBackend;
use kiln::burn::tensor::TensorData;
use kiln::data::{TextInput, TextTokenizer};
use kiln::model::{sentence_embedding, BertModel, Capture, CheckpointDir};

/// Sentences embedded when none are given: pairs that should (and should not) be similar.
pub const DEFAULT_SENTENCES: [&str; 6] = [
    "A man is playing a guitar.",
    "Someone is playing an instrument.",
    "The stock market fell sharply today.",
    "Shares dropped steeply in early trading.",
    "A cat sleeps on the windowsill.",
    "The kitten is napping in the sun.",
];

pub struct EmbedJob {
    pub model: PathBuf,
    pub sentences: Vec<String>,
    pub batch_size: usize,
}

impl BackendJob for EmbedJob {
    type Output = Result<Vec<Vec<f32>>>;

    fn run<B: AutodiffBackend>(self, device: B::Device, kind: DeviceKind) -> Self::Output {
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let start = Instant::now();
        let (model, config) = BertModel::<I<B>>::from_pretrained(&self.model, false, &device)?;
        tracing::info!(layers = config.num_hidden_layers, hidden = config.hidden_size, elapsed = ?start.elapsed(), device = %kind, "model loaded");
        let tok = TextTokenizer::from_file(CheckpointDir::new(&self.model).tokenizer(), 256)?;
        let bar = ProgressBar::new(self.sentences.len() as u64).with_style(
            ProgressStyle::with_template("{spinner} embedding [{bar:30}] {pos}/{len} sentences {elapsed}")?
                .progress_chars("=> "),
        );
        let mut embeddings: Vec<Vec<f32>> = Vec::new();
        for chunk in self.sentences.chunks(self.batch_size.max(1)) {
            let inputs: Vec<TextInput> = chunk.iter().map(|s| TextInput::Single(s.clone())).collect();
            let enc = tok.encode_batch(&inputs)?;
            let ids = Tensor::<I<B>, 2, Int>::from_data(TensorData::new(enc.input_ids, [enc.batch, enc.seq]), &device);
            let types =
                Tensor::<I<B>, 2, Int>::from_data(TensorData::new(enc.token_type_ids, [enc.batch, enc.seq]), &device);
            let mask =
                Tensor::<I<B>, 2, Int>::from_data(TensorData::new(enc.attention_mask, [enc.batch, enc.seq]), &device);
            let out = model.forward(ids, Some(types), Some(mask.clone()), Capture::none());
            let emb = sentence_embedding(out.last_hidden_state, mask)
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()?;
            let width = config.hidden_size;
            embeddings.extend(emb.chunks(width).map(<[f32]>::to_vec));
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        tracing::info!(sentences = embeddings.len(), elapsed = ?start.elapsed(), "embedded");
        Ok(embeddings)
    }
}

/// Cosine similarity matrix of unit vectors (their dot products).
pub fn similarity(embeddings: &[Vec<f32>]) -> Vec<Vec<f32>> {
    embeddings
        .iter()
        .map(|a| {
            embeddings
                .iter()
                .map(|b| a.iter().zip(b).map(|(x, y)| x * y).sum())
                .collect()
        })
        .collect()
}

pub fn print_similarity(sentences: &[String], sim: &[Vec<f32>]) {
    println!("\nCosine similarity of all-MiniLM-L6-v2 sentence embeddings:\n");
    for (i, s) in sentences.iter().enumerate() {
        println!("  [{i}] {s}");
    }
    print!("\n     ");
    for j in 0..sim.len() {
        print!("{:>7}", format!("[{j}]"));
    }
    println!();
    for (i, row) in sim.iter().enumerate() {
        print!("  [{i}]");
        for v in row {
            print!("{v:>7.3}");
        }
        println!();
    }
}
