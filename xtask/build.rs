//! Records the git commit this binary is built from as `KILN_GIT_COMMIT`, so that runs it
//! trains name it in their provenance (`config.json`). Reads `.git` directly (no `git`
//! process); outside a git checkout, or when `KILN_GIT_COMMIT` is set by the caller, it
//! leaves that value alone. Reruns only when the checked-out commit changes.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=KILN_GIT_COMMIT");
    if std::env::var_os("KILN_GIT_COMMIT").is_some() {
        return;
    }
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let git = manifest.join("..").join(".git");
    if let Some(commit) = head_commit(&git) {
        println!("cargo:rustc-env=KILN_GIT_COMMIT={commit}");
    }
}

/// The commit `HEAD` points at, following one symbolic ref (loose or packed).
fn head_commit(git: &Path) -> Option<String> {
    let head_file = git.join("HEAD");
    let head = std::fs::read_to_string(&head_file).ok()?;
    watch(&head_file);
    let head = head.trim();
    let commit = match head.strip_prefix("ref: ") {
        None => head.to_string(),
        Some(name) => {
            let loose = git.join(name);
            let packed = git.join("packed-refs");
            watch(&packed);
            match std::fs::read_to_string(&loose) {
                Ok(text) => {
                    watch(&loose);
                    text.trim().to_string()
                }
                Err(_) => std::fs::read_to_string(&packed)
                    .ok()?
                    .lines()
                    .find_map(|l| l.strip_suffix(name).map(|c| c.trim().to_string()))?,
            }
        }
    };
    (commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit())).then_some(commit)
}

/// Reruns this script when `path` changes (only for files that exist: cargo reruns every
/// build for a missing one).
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
