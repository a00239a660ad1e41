//! Finding the model for a command: the library's lookup, fetched once into kiln's cache
//! when nothing else has it (`kiln::model::hub::locate_or_fetch`).

use std::path::{Path, PathBuf};

use anyhow::Result;
use kiln::model::hub;

/// Locates `model_id`; if it is nowhere and `allow_fetch`, fetches it into kiln's cache.
pub fn resolve_model(model_id: &str, explicit: Option<&Path>, allow_fetch: bool) -> Result<PathBuf> {
    Ok(hub::locate_or_fetch(model_id, explicit, allow_fetch)?)
}

/// Fetches `model_id` into kiln's cache unless it is already there.
pub fn fetch(model_id: &str) -> Result<PathBuf> {
    Ok(hub::fetch(model_id)?)
}
