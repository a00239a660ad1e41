//! Tuning strategies as plug-ins: which parameters train, which modules are inserted, how the
//! learning rate and the gradients are shaped, and what is saved.
//!
//! Each strategy is one file in this folder: a config struct (its experiment-file fields) that
//! implements [`Strategy`]. [`StrategyConfig`] is the list of them, as written in experiment
//! files (`[[train.tuning]] kind = "lora"` + the struct's fields); a run's components compose
//! into one [`Tuning`] under the rules of [`compose`]. Adding a strategy is one new file and
//! one line in the `strategies!` list below (docs/extending.md walks through it).
//!
//! - **Selections** ([`Effect::Selects`]) restrict training to the parameters whose typed
//!   [`ParamRole`] they select: BitFit (biases), LNA (LayerNorms and attention), LoRA (its
//!   deltas), adapters … With several, a parameter trains when any selects it; with none,
//!   everything trains (full fine-tuning). The task head always trains.
//! - **Gradient masks** ([`Effect::MasksGradients`]): Child-Tuning_F and _D (Xu et al. 2021)
//!   mask the gradient of whatever trains, after clipping and before the AdamW moments.
//! - **Schedules** ([`Effect::Schedules`]): ULMFiT's learning rates and gradual unfreezing.
//!
//! Parameters are chosen by role (site, part, tensor kind: [`kiln_model::roles`]), never by
//! substrings of field paths, so renaming a model field cannot silently change training.

mod adapters;
mod bitfit;
mod child_tuning;
mod compacter;
pub mod compose;
mod full;
mod host;
mod ia3;
mod inserts;
mod ladder;
mod learned_mask;
mod lna;
mod lora;
mod prompt_tuning;
mod report;
pub mod targets;
mod tuned_io;
mod tuning;
mod ulmfit;

use std::fmt::Debug;

use kiln_model::roles::ParamRole;
use serde::{Deserialize, Serialize};

pub use adapters::{Houlsby, Pfeiffer};
pub use bitfit::BitFit;
pub use child_tuning::{child_d_eligible, child_tuning_d_mask, percentile, ChildMask, ChildTuningD, ChildTuningF};
pub use compacter::Compacter;
pub use full::Full;
pub use host::{PromptSlot, TunableModel};
pub use ia3::Ia3;
pub use inserts::{InsertSpec, ModelShape};
pub use ladder::Ladder;
pub use learned_mask::LearnedMask;
pub use lna::Lna;
pub use lora::Lora;
pub use prompt_tuning::PromptTuning;
pub use report::{trainable_report, TrainableReport};
pub use targets::{lora_targets, PathPattern};
pub use tuned_io::{load_tuned, read_tuning, save_tuned, tuned_bytes, TunedIoError};
pub use tuning::Tuning;
pub use ulmfit::{slanted_triangular, Ulmfit};

/// What a strategy component does to training (decides how components compose).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Trains every parameter (full fine-tuning).
    TrainsAll,
    /// Trains only what it selects (and inserts).
    Selects,
    /// Masks the gradients of whatever trains.
    MasksGradients,
    /// Changes learning rates and when parameters start training, not which.
    Schedules,
}

/// A gradient mask a [`Effect::MasksGradients`] strategy asks the trainer for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GradientMask {
    /// A fresh Bernoulli(`keep`) mask every step, kept elements scaled by `1/keep`.
    Bernoulli {
        /// Keep probability.
        keep: f64,
    },
    /// A fixed mask keeping the fraction `keep` of encoder-layer elements with the largest
    /// empirical Fisher information of the task loss (computed once by the trainer).
    Fisher {
        /// Fraction kept.
        keep: f64,
    },
}

/// One tuning strategy. Every method but [`Strategy::name`] and [`Strategy::effect`] has a
/// default that does nothing, so a strategy implements only what it changes.
pub trait Strategy: Debug + Send + Sync {
    /// Short name, as the `kind` of the experiment file (`lora`, `child_tuning_d` …).
    fn name(&self) -> &'static str;

    /// What it does to training.
    fn effect(&self) -> Effect;

    /// Checks the settings on their own (model-free).
    ///
    /// # Errors
    /// [`StrategyError::Invalid`] or [`StrategyError::NoMatch`] naming the setting.
    fn validate(&self) -> Result<(), StrategyError> {
        Ok(())
    }

    /// Checks the settings against the model's sizes, before anything is inserted.
    ///
    /// # Errors
    /// [`StrategyError::Invalid`] naming the value and the model's limit.
    fn check_fits(&self, _model: &ModelShape) -> Result<(), StrategyError> {
        Ok(())
    }

    /// The modules to insert into the model ([`InsertSpec`]s, applied by [`Tuning::insert`]).
    ///
    /// # Errors
    /// A target pattern that matches nothing.
    fn inserts(&self) -> Result<Vec<InsertSpec>, StrategyError> {
        Ok(Vec::new())
    }

    /// Whether this (selecting) strategy trains the parameter with `role`.
    fn selects(&self, _role: &ParamRole) -> bool {
        false
    }

    /// The learning rate at optimizer step `step` of `total`, when this strategy replaces the
    /// default linear warm-up and decay.
    fn learning_rate(&self, _base: f64, _step: usize, _total: usize) -> Option<f64> {
        None
    }

    /// Learning-rate multiplier of the parameter with `role` in a model of `num_layers` layers.
    fn lr_scale(&self, _role: &ParamRole, _num_layers: usize) -> f64 {
        1.0
    }

    /// Whether the parameter with `role` may train during `epoch` (gradual unfreezing).
    fn open_at(&self, _role: &ParamRole, _epoch: usize, _num_layers: usize) -> bool {
        true
    }

    /// Whether [`Strategy::open_at`] changes from epoch to epoch.
    fn unfreezes_gradually(&self) -> bool {
        false
    }

    /// The gradient mask this strategy applies, if any.
    fn gradient_mask(&self) -> Option<GradientMask> {
        None
    }

    /// Input positions this strategy adds in front of every sequence (a soft prompt's virtual
    /// tokens), which `max_length` must leave room for.
    fn extra_positions(&self) -> usize {
        0
    }
}

/// Declares the strategy list: the [`StrategyConfig`] enum (one variant per strategy file,
/// serialised with its `kind`) and its dispatch to [`Strategy`], with no wildcard arm.
macro_rules! strategies {
    ($($(#[$doc:meta])* $variant:ident($ty:ty),)*) => {
        /// One component of a tuning strategy, as written in an experiment file:
        /// `[[train.tuning]] kind = "lora"` + its fields.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        pub enum StrategyConfig {
            $($(#[$doc])* $variant($ty),)*
        }

        impl StrategyConfig {
            /// The component as a [`Strategy`].
            pub fn strategy(&self) -> &dyn Strategy {
                match self {
                    $(Self::$variant(s) => s,)*
                }
            }
        }
    };
}

strategies! {
    /// Every parameter trains (the default when no selection is given).
    Full(Full),
    /// Biases and the head only (Ben Zaken et al. 2022).
    BitFit(BitFit),
    /// LayerNorms and attention only (Li et al. 2021, "LNA").
    Lna(Lna),
    /// Child-Tuning_F: a fresh Bernoulli gradient mask every step.
    ChildTuningF(ChildTuningF),
    /// Child-Tuning_D: a fixed gradient mask from the empirical Fisher information.
    ChildTuningD(ChildTuningD),
    /// LoRA deltas on chosen linears (Hu et al. 2021).
    Lora(Lora),
    /// Houlsby adapters after the attention output and after the FFN output.
    Houlsby(Houlsby),
    /// Pfeiffer adapters after the FFN output only.
    Pfeiffer(Pfeiffer),
    /// Compacter (Karimi Mahabadi et al. 2021).
    Compacter(Compacter),
    /// Ladder side-tuning (Sung et al. 2022).
    Ladder(Ladder),
    /// Prompt tuning (Lester et al. 2021).
    PromptTuning(PromptTuning),
    /// (IA)³ (Liu et al. 2022).
    Ia3(Ia3),
    /// Learned binary weight masks (Zhao et al. 2020).
    LearnedMask(LearnedMask),
    /// ULMFiT (Howard & Ruder 2018).
    Ulmfit(Ulmfit),
}

impl StrategyConfig {
    /// Short name (`lora`, `child_tuning_d`, ...).
    pub fn name(&self) -> &'static str {
        self.strategy().name()
    }
}

/// Errors of building or applying a strategy.
#[derive(Debug, thiserror::Error)]
pub enum StrategyError {
    /// Components that cannot be combined.
    #[error("tuning strategies {0} and {1} cannot be combined: {2}")]
    Incompatible(&'static str, &'static str, &'static str),
    /// A bad setting.
    #[error("{strategy}: {message}")]
    Invalid {
        /// Component name.
        strategy: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A target pattern that is not a valid regular expression.
    #[error("{strategy}: target pattern {pattern:?}: {source}")]
    Pattern {
        /// Component name.
        strategy: &'static str,
        /// The pattern.
        pattern: String,
        /// The regex error.
        #[source]
        source: regex::Error,
    },
    /// A target pattern matched nothing.
    #[error("{strategy}: target pattern {pattern:?} matches none of {candidates:?}")]
    NoMatch {
        /// Component name.
        strategy: &'static str,
        /// The pattern.
        pattern: String,
        /// What it could have matched.
        candidates: Vec<String>,
    },
    /// The model has no slot for what a strategy inserts.
    #[error("{model} has no place for {place}: the strategy that inserts it cannot tune this model")]
    Unsupported {
        /// What would be inserted.
        place: &'static str,
        /// The model family.
        model: &'static str,
    },
}

/// `Err(StrategyError::Invalid)` for `strategy` with `message`.
pub(crate) fn invalid<T>(strategy: &'static str, message: impl Into<String>) -> Result<T, StrategyError> {
    Err(StrategyError::Invalid {
        strategy,
        message: message.into(),
    })
}
