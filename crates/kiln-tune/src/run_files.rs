//! The typed files of a run directory, shared by the code that writes them (training) and the
//! code that reads them back (`lens analyse`, `export`, `report`). The types live in the
//! burn-free `kiln-format` (the report reads them too) and are re-exported here; this module
//! adds what needs kiln-tune: [`RunConfig`] with kiln-tune's own [`TrainConfig`] inside, and
//! [`Restore`], which rebuilds a run's model from a checkpoint. docs/run-directory.md
//! describes every file.

use std::path::{Path, PathBuf};

use crate::trainer::TrainConfig;

pub use kiln_format::run::{
    sha256_file, write_atomic, AttentionSummary, DataSource, ModelRecord, Provenance, Results, RunFileError,
    TaskMetrics, Trainable, FORMAT_VERSION,
};
pub use kiln_format::training::{DynamicsLine, MetricsLine, TransferLine};

/// `config.json` of a classification run: the envelope of `kiln-format` around kiln-tune's
/// [`TrainConfig`].
pub type RunConfig = kiln_format::run::RunConfig<TrainConfig>;

/// Errors of restoring a run's model from its checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A run file.
    #[error(transparent)]
    RunFile(#[from] RunFileError),
    /// The checkpoint.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// The tuned part.
    #[error(transparent)]
    Tuned(#[from] crate::strategy::TunedIoError),
    /// The strategy.
    #[error(transparent)]
    Strategy(#[from] crate::strategy::StrategyError),
    /// Neither weights file.
    #[error("{0} has neither tuned.safetensors nor model.safetensors")]
    NoWeights(PathBuf),
}

/// Rebuilding a run's model from its saved checkpoint (on [`RunConfig`], whose type lives in
/// `kiln-format`).
pub trait Restore {
    /// Rebuilds the model a run saved in `run/checkpoints/<checkpoint>` on top of `base` (the
    /// pretrained model with a fresh head, loaded by the caller): converts the attention the
    /// run converted (same variant and layers), inserts the strategy's modules and loads the
    /// saved weights. Returns the model and its strategy.
    ///
    /// # Errors
    /// [`RestoreError`]: missing or mismatched checkpoint files.
    fn restore<B: burn::prelude::Backend>(
        &self,
        base: crate::classifier::SequenceClassifier<B>,
        run: &Path,
        checkpoint: &str,
        device: &B::Device,
    ) -> Result<(crate::classifier::SequenceClassifier<B>, crate::strategy::Tuning), RestoreError>;
}

impl Restore for RunConfig {
    /// Rebuilds the model a run saved in `run/checkpoints/<checkpoint>` on top of `base` (the
    /// pretrained model with a fresh head, loaded by the caller): converts the attention the
    /// run converted (same variant and layers), inserts the strategy's modules and loads the
    /// saved weights. Returns the model and its strategy.
    ///
    /// # Errors
    /// [`RestoreError`]: missing or mismatched checkpoint files.
    fn restore<B: burn::prelude::Backend>(
        &self,
        mut base: crate::classifier::SequenceClassifier<B>,
        run: &Path,
        checkpoint: &str,
        device: &B::Device,
    ) -> Result<(crate::classifier::SequenceClassifier<B>, crate::strategy::Tuning), RestoreError> {
        use crate::checkpoint::{load_model, MODEL_FILE, TUNED_FILE};
        if let Some(variant) = &self.train.attention {
            // Feature maps come from the checkpoint; fixed projections from the variant's seed.
            base.bert
                .convert_attention(variant, self.train.attention_layers.as_deref(), 0.0);
        }
        let dir = run.join("checkpoints").join(checkpoint);
        if dir.join(TUNED_FILE).exists() {
            let tuning = crate::strategy::read_tuning(&dir.join(TUNED_FILE))?;
            let model = tuning.insert(base, device)?;
            Ok((
                crate::strategy::load_tuned(model, &tuning, &dir.join(TUNED_FILE))?,
                tuning,
            ))
        } else if dir.join(MODEL_FILE).exists() {
            load_model(&mut base, &dir.join(MODEL_FILE))?;
            Ok((base, crate::strategy::Tuning::new(&[])?))
        } else {
            Err(RestoreError::NoWeights(dir))
        }
    }
}
