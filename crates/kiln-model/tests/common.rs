//! Locating the shared assets for integration tests: a missing asset is a failure with a
//! message saying how to provide it, never a silent pass.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn shared() -> PathBuf {
    kiln_model::hub::shared_dir().unwrap_or_else(|| {
        panic!("shared assets not found: set KILN_SHARED_DIR to the directory holding models/ and reference/ (CI has it beside the checkout)")
    })
}

pub fn minilm_dir() -> PathBuf {
    let (dir, _) =
        kiln_model::hub::locate_model(kiln_model::hub::DEFAULT_MODEL_ID, None).unwrap_or_else(|e| panic!("{e}"));
    dir
}

pub fn reference(rel: &str) -> PathBuf {
    let p = shared().join("reference").join(rel);
    assert!(p.exists(), "reference file {} is missing", p.display());
    p
}
