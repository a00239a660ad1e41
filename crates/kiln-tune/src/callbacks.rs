//! What a library caller sees of a training run while it goes, and how it steers it: every
//! optimizer step, evaluation and checkpoint is a [`TrainEvent`] handed to the run's
//! [`Callback`]s, and any of them may answer [`Control::Stop`] (after an evaluation or a
//! step) to end the run cleanly — `checkpoints/last` written, `results.json` written, the run
//! resumable — as HF Trainer's `TrainerCallback` + `control.should_training_stop` do.
//! [`EarlyStopping`] is the callback users most often want; a closure
//! `FnMut(&TrainEvent) -> Control` is a callback too.

use std::path::Path;

use kiln_data::metrics::TaskMetrics;

/// One thing that happened in the training loop.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent<'a> {
    /// An optimizer step (1-based `step`) with the mean loss of its micro-batches.
    Step {
        /// Optimizer step.
        step: usize,
        /// Mean loss of the step's micro-batches.
        loss: f64,
        /// Learning rate used.
        lr: f64,
        /// Global gradient norm before clipping.
        grad_norm: f64,
    },
    /// An evaluation after `step`.
    Eval {
        /// Optimizer step.
        step: usize,
        /// Every metric, and which is primary.
        metrics: &'a TaskMetrics,
    },
    /// A checkpoint was written after `step` (`best` marks `checkpoints/best`).
    Checkpoint {
        /// Optimizer step.
        step: usize,
        /// The checkpoint directory.
        path: &'a Path,
        /// Whether it is the best-so-far checkpoint (else `checkpoints/last`).
        best: bool,
    },
}

/// What a callback asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Control {
    /// Go on.
    #[default]
    Continue,
    /// End the run after this event (the last checkpoint and results are still written).
    Stop,
}

/// Sees every [`TrainEvent`]; may stop the run.
pub trait Callback {
    /// Called for each event, in order.
    fn on_event(&mut self, event: &TrainEvent<'_>) -> Control;
}

impl<F: FnMut(&TrainEvent<'_>) -> Control> Callback for F {
    fn on_event(&mut self, event: &TrainEvent<'_>) -> Control {
        self(event)
    }
}

/// Whether a metric improves upwards (accuracy, F1, MCC, correlations) or downwards
/// (perplexity, loss).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Larger is better.
    Maximize,
    /// Smaller is better.
    Minimize,
}

impl Direction {
    /// The usual direction of a metric by name: `perplexity` and anything named `loss`
    /// decrease, the rest increase.
    pub fn of(metric: &str) -> Self {
        if metric.contains("perplexity") || metric.contains("loss") {
            Self::Minimize
        } else {
            Self::Maximize
        }
    }
}

/// Stops when a metric has not improved by more than `min_delta` for `patience` evaluations
/// in a row (HF's `EarlyStoppingCallback`: `early_stopping_patience`,
/// `early_stopping_threshold`).
#[derive(Debug, Clone, PartialEq)]
pub struct EarlyStopping {
    /// The metric watched; `None` = the task's primary metric.
    pub metric: Option<String>,
    /// Evaluations without improvement tolerated.
    pub patience: usize,
    /// The least change that counts as an improvement.
    pub min_delta: f64,
    /// Which way is better; `None` = [`Direction::of`] the metric's name.
    pub direction: Option<Direction>,
    best: Option<f64>,
    bad: usize,
    /// The step at which it stopped the run, if it did.
    pub stopped_at: Option<usize>,
}

impl EarlyStopping {
    /// Watches the primary metric with `patience` and no threshold.
    pub fn new(patience: usize) -> Self {
        Self {
            metric: None,
            patience,
            min_delta: 0.0,
            direction: None,
            best: None,
            bad: 0,
            stopped_at: None,
        }
    }

    /// Watches `metric` instead of the primary one.
    pub fn on(mut self, metric: &str) -> Self {
        self.metric = Some(metric.to_string());
        self
    }

    /// An improvement must exceed `min_delta`.
    pub fn min_delta(mut self, min_delta: f64) -> Self {
        self.min_delta = min_delta;
        self
    }
}

impl Callback for EarlyStopping {
    fn on_event(&mut self, event: &TrainEvent<'_>) -> Control {
        let TrainEvent::Eval { step, metrics } = event else {
            return Control::Continue;
        };
        let name = self.metric.as_deref().unwrap_or(&metrics.primary);
        let Some(&value) = metrics.values.get(name) else {
            tracing::warn!(metric = name, "early stopping: the evaluation has no such metric");
            return Control::Continue;
        };
        let sign = match self.direction.unwrap_or_else(|| Direction::of(name)) {
            Direction::Maximize => 1.0,
            Direction::Minimize => -1.0,
        };
        match self.best {
            Some(best) if sign * (value - best) <= self.min_delta => self.bad += 1,
            _ => {
                self.best = Some(value);
                self.bad = 0;
            }
        }
        if self.bad >= self.patience.max(1) {
            self.stopped_at = Some(*step);
            tracing::info!(step, metric = name, patience = self.patience, "early stopping");
            return Control::Stop;
        }
        Control::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn eval(cb: &mut EarlyStopping, step: usize, acc: f64, ppl: f64) -> Control {
        let metrics = TaskMetrics {
            primary: "accuracy".into(),
            values: BTreeMap::from([("accuracy".into(), acc), ("perplexity".into(), ppl)]),
        };
        cb.on_event(&TrainEvent::Eval {
            step,
            metrics: &metrics,
        })
    }

    #[test]
    fn early_stopping_waits_patience_evaluations_without_improvement() {
        let mut cb = EarlyStopping::new(2).min_delta(0.01);
        assert_eq!(eval(&mut cb, 1, 0.5, 0.0), Control::Continue);
        assert_eq!(eval(&mut cb, 2, 0.6, 0.0), Control::Continue); // improves
        assert_eq!(eval(&mut cb, 3, 0.605, 0.0), Control::Continue); // within min_delta: 1 bad
        assert_eq!(eval(&mut cb, 4, 0.62, 0.0), Control::Continue); // improves: reset
        assert_eq!(eval(&mut cb, 5, 0.3, 0.0), Control::Continue); // 1 bad
        assert_eq!(eval(&mut cb, 6, 0.62, 0.0), Control::Stop); // 2 bad
        assert_eq!(cb.stopped_at, Some(6));
    }

    #[test]
    fn a_decreasing_metric_is_watched_downwards() {
        let mut cb = EarlyStopping::new(1).on("perplexity");
        assert_eq!(eval(&mut cb, 1, 0.0, 30.0), Control::Continue);
        assert_eq!(eval(&mut cb, 2, 0.0, 20.0), Control::Continue);
        assert_eq!(eval(&mut cb, 3, 0.0, 25.0), Control::Stop);
        let steps_only = cb.on_event(&TrainEvent::Step {
            step: 4,
            loss: 1.0,
            lr: 1e-3,
            grad_norm: 1.0,
        });
        assert_eq!(steps_only, Control::Continue);
    }
}
