//! The trainable-parameter report a run writes to `trainable.json`.

use kiln_model::roles::Roles;

use super::Tuning;
use crate::params::ParamInfo;

/// Trainable-parameter report (`trainable.json`): counts per top-level module group and in
/// total. The type is the run-file type of `kiln-format`, which the report reads.
pub use kiln_format::run::Trainable as TrainableReport;

/// Counts `params` (with their `roles`) under `tuning`.
pub fn trainable_report(tuning: &Tuning, params: &[ParamInfo], roles: &Roles) -> TrainableReport {
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
    TrainableReport {
        strategy: tuning.name(),
        trainable,
        total,
        percent: 100.0 * trainable as f64 / total.max(1) as f64,
        per_module: per,
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
