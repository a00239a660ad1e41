//! The trainable-parameter report a run writes to `trainable.json`.

use kiln_model::roles::Roles;
use serde::{Deserialize, Serialize};

use super::Tuning;
use crate::params::ParamInfo;

/// Trainable-parameter report: counts per top-level module group and in total.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainableReport {
    /// Strategy name.
    pub strategy: String,
    /// Trainable parameters.
    pub trainable: usize,
    /// All parameters (including inserted ones).
    pub total: usize,
    /// `trainable / total · 100`.
    pub percent: f64,
    /// `(module, trainable, total)` per module group (`embeddings`, `layer.N.attention`, ...).
    pub per_module: Vec<(String, usize, usize)>,
}

impl TrainableReport {
    /// Counts `params` (with their `roles`) under `tuning`.
    pub fn new(tuning: &Tuning, params: &[ParamInfo], roles: &Roles) -> Self {
        let mut per: Vec<(String, usize, usize)> = Vec::new();
        let (mut trainable, mut total) = (0, 0);
        for p in params {
            let group = module_group(&p.path);
            let n = p.numel();
            let t = if roles.get(p.id).is_some_and(|r| tuning.trains(r)) {
                n
            } else {
                0
            };
            trainable += t;
            total += n;
            match per.iter_mut().find(|(g, _, _)| *g == group) {
                Some(entry) => {
                    entry.1 += t;
                    entry.2 += n;
                }
                None => per.push((group, t, n)),
            }
        }
        Self {
            strategy: tuning.name(),
            trainable,
            total,
            percent: 100.0 * trainable as f64 / total.max(1) as f64,
            per_module: per,
        }
    }
}

/// Display group of a parameter path (grouping only; nothing is selected by it):
/// `bert.encoder.layer.3.attention.output.dense.weight` → `layer.3.attention`;
/// `bert.embeddings.*` → `embeddings`; else the first two path components.
fn module_group(path: &str) -> String {
    let parts: Vec<&str> = path.split('.').collect();
    match parts.as_slice() {
        ["bert", "encoder", "layer", i, "inserts", kind, ..] => format!("layer.{i}.inserts.{kind}"),
        ["bert", "encoder", "layer", i, block, ..] => format!("layer.{i}.{block}"),
        ["bert", module, ..] => (*module).to_string(),
        [first, ..] => (*first).to_string(),
        [] => String::new(),
    }
}
