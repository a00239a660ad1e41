//! Where the integration tests find their model and references: the MiniLM checkpoint through
//! the same lookup + one-time fetch as the demo, the PyTorch references committed under
//! `fixtures/reference`. Nothing here needs `../shared`.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn minilm_dir() -> PathBuf {
    kiln_model::hub::locate_or_fetch(kiln_model::hub::DEFAULT_MODEL_ID, None, true).unwrap_or_else(|e| panic!("{e}"))
}

pub fn reference(rel: &str) -> PathBuf {
    kiln_testkit::reference(rel)
}

/// The committed tiny random GPT-2 (HF layout) the GPT-2 references were computed with.
pub fn gpt2_tiny() -> PathBuf {
    reference("gpt2-tiny")
}
