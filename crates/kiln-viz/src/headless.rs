//! Opening a report in headless Chromium, for the browser test and `cargo xtask bench report`:
//! where the browser is, the flags it runs with, and reading attributes back from the DOM it
//! dumps.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `$KILN_CHROMIUM`, else the first of `chromium`, `chromium-browser`, `google-chrome` on PATH.
pub fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = Command::new("which").arg(name).output().ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
}

/// `browser` headless, offline and sandbox-free, with a fresh profile in `profile`.
pub fn command(browser: &Path, profile: &Path) -> Command {
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// Attribute `name` of the first tag in `tag` (`<x a="1" …>`).
pub fn tag_attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let v = tag.find(&key)? + key.len();
    Some(tag[v..v + tag[v..].find('"')?].to_string())
}

/// Attribute `name` of the `<body>` element of a dumped DOM.
pub fn body_attr(dom: &str, name: &str) -> Option<String> {
    let at = dom.find("<body")?;
    tag_attr(&dom[at..at + dom[at..].find('>')?], name)
}
