//! A composed strategy: the run's components, asked together.

use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use kiln_model::roles::{ParamRole, Part, Site};

use super::{compose, Effect, GradientMask, ModelShape, Strategy, StrategyConfig, StrategyError, TunableModel};

/// A composed strategy: the configured components plus any plug-ins added in code.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// The configured components (what experiment files and tuned-part files hold).
    pub components: Vec<StrategyConfig>,
    /// Strategies added in code ([`Tuning::with`]): not in [`StrategyConfig`], so not
    /// written to files.
    plugins: Vec<Arc<dyn Strategy>>,
}

impl Tuning {
    /// Validates and composes `components` (empty = full fine-tuning).
    ///
    /// Applying LoRA + BitFit to a classifier: the components come from JSON (as in an
    /// experiment file), [`Tuning::insert`] adds the LoRA factors, and the report counts what
    /// trains — the inserts, every bias and the new head, nothing else:
    ///
    /// ```
    /// use burn::backend::{Autodiff, Flex};
    /// use kiln_model::roles::ModelRoles;
    /// use kiln_tune::classifier::SequenceClassifier;
    /// use kiln_tune::params::param_infos;
    /// use kiln_tune::strategy::{trainable_report, StrategyConfig, Tuning};
    ///
    /// type B = Autodiff<Flex>;
    /// let device = Default::default();
    /// let (model, _) = SequenceClassifier::<B>::from_pretrained("../../fixtures/tiny-bert-mlm", 2, &device)?;
    /// let components: Vec<StrategyConfig> =
    ///     serde_json::from_str(r#"[{"kind": "lora", "r": 2, "targets": ["query", "value"]}, {"kind": "bit_fit"}]"#)?;
    /// let tuning = Tuning::new(&components)?;
    /// let model = tuning.insert(model, &device)?;
    /// let report = trainable_report(&tuning, &param_infos(&model), &model.param_roles());
    /// assert_eq!(tuning.name(), "lora+bit_fit");
    /// assert!(report.trainable > 0 && report.trainable * 5 < report.total, "{report:?}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`StrategyError`] for an incompatible combination or a bad setting.
    pub fn new(components: &[StrategyConfig]) -> Result<Self, StrategyError> {
        let tuning = Self {
            components: components.to_vec(),
            plugins: Vec::new(),
        };
        compose::check(&tuning.parts().collect::<Vec<_>>())?;
        Ok(tuning)
    }

    /// Adds a strategy defined outside [`StrategyConfig`] (a library user's or a test's),
    /// under the same composition rules.
    ///
    /// # Errors
    /// As [`Tuning::new`].
    pub fn with(mut self, strategy: Arc<dyn Strategy>) -> Result<Self, StrategyError> {
        self.plugins.push(strategy);
        compose::check(&self.parts().collect::<Vec<_>>())?;
        Ok(self)
    }

    /// Every component, configured ones first.
    pub fn parts(&self) -> impl Iterator<Item = &dyn Strategy> {
        self.components
            .iter()
            .map(StrategyConfig::strategy)
            .chain(self.plugins.iter().map(|p| p.as_ref()))
    }

    /// A readable name: components joined by `+` (`full` when empty).
    pub fn name(&self) -> String {
        let names: Vec<&str> = self.parts().map(|p| p.name()).collect();
        if names.is_empty() {
            "full".into()
        } else {
            names.join("+")
        }
    }

    /// Whether some component restricts what trains (so checkpoints hold only the tuned part).
    pub fn restricts(&self) -> bool {
        self.parts().any(|p| p.effect() == Effect::Selects)
    }

    /// Whether the parameter with `role` trains. The head and the trainable parameters of
    /// converted attention (new feature maps, see `BertModel::convert_attention`) train
    /// under every strategy; fixed mechanism parameters never train.
    pub fn trains(&self, role: &ParamRole) -> bool {
        match role.part {
            Part::Mechanism { fixed: true } => return false,
            Part::Mechanism { fixed: false } => return true,
            Part::Embedding | Part::Linear(_) | Part::FusedQkv | Part::Norm | Part::Insert(_) | Part::Whole => {}
        }
        if role.site == Site::Head {
            return true;
        }
        let mut selections = self.parts().filter(|p| p.effect() == Effect::Selects).peekable();
        selections.peek().is_none() || selections.any(|p| p.selects(role))
    }

    /// Learning rate at optimizer step `step` of `total`: a component's schedule (ULMFiT's
    /// slanted triangular, whose `cut_frac` replaces `warmup`), else linear warm-up and decay.
    pub fn learning_rate(&self, base: f64, step: usize, warmup: usize, total: usize) -> f64 {
        self.parts()
            .find_map(|p| p.learning_rate(base, step, total))
            .unwrap_or_else(|| crate::optim::linear_schedule(base, step, warmup, total))
    }

    /// Learning-rate multiplier of the parameter with `role` (ULMFiT's discriminative rates).
    pub fn lr_scale(&self, role: &ParamRole, num_layers: usize) -> f64 {
        self.parts().map(|p| p.lr_scale(role, num_layers)).product()
    }

    /// Whether the parameter with `role` trains during `epoch` (gradual unfreezing).
    pub fn trains_at(&self, role: &ParamRole, epoch: usize, num_layers: usize) -> bool {
        self.parts().all(|p| p.open_at(role, epoch, num_layers)) && self.trains(role)
    }

    /// Whether what trains changes from epoch to epoch.
    pub fn unfreezes_gradually(&self) -> bool {
        self.parts().any(|p| p.unfreezes_gradually())
    }

    /// The run's gradient mask, if a component has one (at most one does).
    pub fn gradient_mask(&self) -> Option<GradientMask> {
        self.parts().find_map(|p| p.gradient_mask())
    }

    /// Checks that every component fits a model of `shape` before anything is inserted
    /// (LoRA's rank, an adapter's bottleneck, Compacter's `n`, the prompt length …).
    /// [`Tuning::insert`] calls it first; the trainer calls it before it writes anything.
    ///
    /// # Errors
    /// [`StrategyError::Invalid`] naming the component, the value and the model's limit.
    pub fn check_fits(&self, shape: &ModelShape) -> Result<(), StrategyError> {
        self.parts().try_for_each(|p| p.check_fits(shape))
    }

    /// Inserts the modules the components ask for, in component order, drawing their
    /// initialisation from the backend RNG.
    ///
    /// # Errors
    /// A setting that does not fit the model, or a slot the model lacks.
    pub fn insert<B: Backend, M: TunableModel<B>>(&self, mut model: M, device: &B::Device) -> Result<M, StrategyError> {
        self.check_fits(&model.shape())?;
        for part in self.parts() {
            for spec in part.inserts()? {
                model = spec.apply(model, device)?;
            }
        }
        Ok(model)
    }

    /// Marks frozen parameters `require_grad = false` so backward computes no gradient for
    /// them (less time and memory), and returns the model.
    pub fn freeze<B: AutodiffBackend, M: TunableModel<B>>(&self, model: M) -> M {
        let roles = model.param_roles();
        crate::params::set_trainable(model, |id| roles.get(id).is_some_and(|r| self.trains(r)))
    }

    /// [`Tuning::freeze`] for `epoch` of gradual unfreezing.
    pub fn freeze_at<B: AutodiffBackend, M: TunableModel<B>>(&self, model: M, epoch: usize) -> M {
        let layers = model.shape().layers;
        let roles = model.param_roles();
        crate::params::set_trainable(model, |id| {
            roles.get(id).is_some_and(|r| self.trains_at(r, epoch, layers))
        })
    }
}
