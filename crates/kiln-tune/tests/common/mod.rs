//! Helpers shared by kiln-tune's integration tests.

use std::collections::HashMap;

use burn::prelude::*;
use kiln_model::roles::ModelRoles;
use kiln_tune::strategy::Tuning;

/// Every float parameter of `m` by path, as f32 values (through the full-fine-tuning tuned
/// part, which holds everything).
pub fn snapshot<B: Backend, M: Module<B> + ModelRoles>(m: &M) -> HashMap<String, Vec<f32>> {
    let bytes = kiln_tune::strategy::tuned_bytes(m, &Tuning::new(&[]).unwrap());
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            let d = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (n, d)
        })
        .collect()
}

/// A byte-level GPT-2 small enough to train in seconds: 256 tokens, 64 positions, 2 layers of
/// 4 heads × 8, no dropout.
#[allow(dead_code)]
pub fn tiny_gpt_config() -> kiln_model::GptConfig {
    serde_json::from_str(
        r#"{"vocab_size": 256, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}"#,
    )
    .unwrap()
}

/// Bytes of sentences drawn (seeded LCG) from a small vocabulary of words. (A test fixture:
/// the decoder tests' perplexity thresholds were set on this text.)
#[allow(dead_code)]
pub fn word_text(words: &[&str], n_words: usize, seed: u64) -> Vec<u32> {
    let mut state = seed;
    let mut out = Vec::new();
    for i in 0..n_words {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let w = words[(state >> 33) as usize % words.len()];
        out.extend(w.bytes().map(u32::from));
        out.push(if i % 6 == 5 { u32::from(b'.') } else { u32::from(b' ') });
    }
    out
}
