//! The one training loop, over any [`Objective`]: epochs of micro-batches (forward, backward,
//! gradient accumulation), optimizer steps with the strategy's freezing, schedule and gradient
//! mask, logging, evaluation, the best and last checkpoints, and a stop step for tests of
//! resume. Setup (validation, the run directory, conversion, inserts) is the caller's
//! ([`crate::trainer::train`], [`crate::lm::train_lm`]).
//!
//! Each micro-batch seeds the backend from `(seed, position)`, so dropout is a function of
//! the position and a resumed run ends bit-identical to an uninterrupted one.

use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_data::metrics::TaskMetrics;
use kiln_model::roles::Roles;

use crate::callbacks::{Control, TrainEvent};
use crate::checkpoint::{self, TrainState};
use crate::objective::{Inner, Objective};
use crate::optim::{AdamW, AdamWConfig, GradientTransform, ParamGroup};
use crate::params::ParamInfo;
use crate::run_files::MetricsLine;
use crate::strategy::{ChildMask, TunableModel, Tuning};
use crate::trainer::{mix, MetricsLog, RunDir, StopAt, TrainError};

/// The loop's own settings (the objective holds the data-side ones).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LoopSettings<'a> {
    pub adamw: AdamWConfig,
    pub lr: f64,
    pub seed: u64,
    pub eval_every: Option<usize>,
    pub log_every: usize,
    pub data_map: bool,
    /// The metric that picks `checkpoints/best` (`None`: the objective's primary metric).
    pub best_metric: Option<&'a str>,
    /// Whether the loop draws a progress bar (a run directory's command-line default).
    pub progress_bar: bool,
}

/// What the loop needs and does not change.
pub(crate) struct Session<'a, B: AutodiffBackend, O: Objective<B>> {
    pub objective: &'a O,
    pub settings: LoopSettings<'a>,
    pub tuning: &'a Tuning,
    pub mask: Option<&'a ChildMask<B::InnerBackend>>,
    /// Where metrics and checkpoints go; `None` trains in memory.
    pub run: Option<&'a RunDir>,
    pub stop: StopAt,
    pub device: &'a B::Device,
}

/// What the loop returns besides the model.
pub(crate) struct Outcome {
    /// The last evaluation (or one after the loop when none ran).
    pub final_metrics: TaskMetrics,
    /// Step, epoch and best metric at the end.
    pub state: TrainState,
    /// Training throughput of this process (micro-batch rows per second).
    pub train_seq_per_s: f64,
    /// Time spent in forward, backward and optimizer steps (evaluations excluded).
    pub train_time: Duration,
}

impl Outcome {
    /// `results.json` of a run that ended with this outcome, started at `started`.
    pub(crate) fn into_results(
        self,
        task: String,
        report: &crate::strategy::TrainableReport,
        started: Instant,
        resumed: bool,
        attention: Option<kiln_format::run::AttentionSummary>,
    ) -> kiln_format::run::Results {
        kiln_format::run::Results {
            task,
            final_metrics: self.final_metrics,
            best: self.state.best,
            steps: self.state.global_step,
            wall_time_s: started.elapsed().as_secs_f64(),
            train_seq_per_s: self.train_seq_per_s,
            peak_rss_mb: crate::trainer::peak_rss_mb(),
            resumed,
            strategy: report.strategy.clone(),
            trainable_params: report.trainable,
            total_params: report.total,
            attention,
        }
    }
}

/// What changes from step to step besides the model and the optimizer.
struct Progress<'e, M> {
    state: TrainState,
    accumulator: GradientsAccumulator<M>,
    in_accum: usize,
    step_loss: f64,
    window_loss: f64,
    window_n: usize,
    seen_examples: usize,
    last_metrics: Option<TaskMetrics>,
    started: Instant,
    train_time: Duration,
    observe: &'e mut dyn FnMut(&TrainEvent<'_>) -> Control,
    /// A callback asked the run to end.
    stop_requested: bool,
}

impl<M> Progress<'_, M> {
    /// Hands `event` to the callbacks; a `Stop` ends the run after the current step.
    fn tell(&mut self, event: &TrainEvent<'_>) {
        if (self.observe)(event) == Control::Stop {
            self.stop_requested = true;
        }
    }

    fn window_mean(&self) -> f64 {
        self.window_loss / self.window_n.max(1) as f64
    }

    fn seq_per_s(&self) -> f64 {
        self.seen_examples as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }
}

/// Where the loop writes: metrics, training dynamics (both only with a run directory), the
/// progress bar.
struct Outputs {
    log: Option<MetricsLog>,
    dynamics: Option<MetricsLog>,
    bar: ProgressBar,
}

impl<B: AutodiffBackend, O: Objective<B>> Session<'_, B, O> {
    /// Trains `model` (inserts in place; `infos` and `roles` its parameters) from the start
    /// or, when `resumed`, from `checkpoints/last`'s optimizer and position. `observe` sees
    /// every step and evaluation.
    pub(crate) fn run(
        &self,
        model: O::Model,
        infos: &[ParamInfo],
        roles: &Roles,
        resumed: bool,
        observe: &mut dyn FnMut(&TrainEvent<'_>) -> Control,
    ) -> Result<(O::Model, Outcome), TrainError> {
        let num_layers = model.shape().layers;
        let mut model = self.tuning.freeze(model);
        let mut opt = AdamW::<B::InnerBackend>::new(self.settings.adamw, infos, |info| {
            self.group(roles, info, 0, num_layers)
        });
        let mut state = TrainState {
            global_step: 0,
            epoch: 0,
            next_batch: 0,
            best: None,
            seed: self.settings.seed,
        };
        if let (true, Some(run)) = (resumed, self.run) {
            state = checkpoint::load_optimizer_and_state(&run.last(), &mut opt, self.device)?;
            tracing::info!(
                step = state.global_step,
                epoch = state.epoch,
                "resuming from {}",
                run.last().display()
            );
        }
        let out = self.outputs(&state, resumed)?;
        let mut progress = Progress {
            state,
            accumulator: GradientsAccumulator::new(),
            in_accum: 0,
            step_loss: 0.0,
            window_loss: 0.0,
            window_n: 0,
            seen_examples: 0,
            last_metrics: None,
            started: Instant::now(),
            train_time: Duration::ZERO,
            observe,
            stop_requested: false,
        };
        let steps = self.objective.steps();
        'epochs: for epoch in progress.state.epoch..steps.epochs {
            if self.tuning.unfreezes_gradually() {
                model = self.tuning.freeze_at(model, epoch);
                for info in infos {
                    opt.set_group(info.id, self.group(roles, info, epoch, num_layers));
                }
                tracing::info!(epoch, "gradual unfreezing: depth {epoch} and above train");
            }
            let batches = self.objective.batches(epoch);
            let first = if epoch == progress.state.epoch {
                progress.state.next_batch
            } else {
                0
            };
            for (bi, batch) in batches.iter().enumerate().skip(first) {
                let started = Instant::now();
                self.backward(&model, &mut progress, batch, epoch, bi)?;
                let last_of_epoch = bi + 1 == batches.len();
                if progress.in_accum < steps.accum && !last_of_epoch {
                    progress.train_time += started.elapsed();
                    continue;
                }
                model = self.update(model, &mut opt, &mut progress, &out, (epoch, bi, last_of_epoch))?;
                progress.train_time += started.elapsed();
                let step = progress.state.global_step;
                let eval_now = last_of_epoch || self.settings.eval_every.is_some_and(|n| step.is_multiple_of(n.max(1)));
                if eval_now {
                    self.evaluate(&model, &mut progress, &out, epoch, last_of_epoch)?;
                }
                let stopping = self.stop.step == Some(step) || progress.stop_requested;
                if let (true, Some(run)) = (eval_now || stopping, self.run) {
                    checkpoint::save(&run.last(), &model, self.tuning, &opt, &progress.state)?;
                    progress.tell(&TrainEvent::Checkpoint {
                        step,
                        path: &run.last(),
                        best: false,
                    });
                }
                if stopping {
                    break 'epochs;
                }
            }
        }
        out.bar.finish_and_clear();
        let final_metrics = match progress.last_metrics.take() {
            Some(m) => m,
            None => self.objective.evaluate(&model.valid(), true, self.device)?,
        };
        let train_seq_per_s = progress.seq_per_s();
        Ok((
            model,
            Outcome {
                final_metrics,
                state: progress.state,
                train_seq_per_s,
                train_time: progress.train_time,
            },
        ))
    }

    /// The optimizer group of a parameter in `epoch` (gradual unfreezing, discriminative
    /// rates); a parameter without a role never trains.
    fn group(&self, roles: &Roles, info: &ParamInfo, epoch: usize, num_layers: usize) -> ParamGroup {
        match roles.get(info.id) {
            Some(role) => ParamGroup {
                trainable: self.tuning.trains_at(role, epoch, num_layers),
                lr_scale: self.tuning.lr_scale(role, num_layers),
                ..ParamGroup::hf_default(info)
            },
            None => ParamGroup {
                trainable: false,
                ..ParamGroup::hf_default(info)
            },
        }
    }

    /// Opens `metrics.jsonl` (and `dynamics.jsonl`), cut back to the resumed step, and the bar.
    fn outputs(&self, state: &TrainState, resumed: bool) -> Result<Outputs, TrainError> {
        let keep = Some(state.global_step).filter(|_| resumed);
        let (log, dynamics) = match self.run {
            Some(run) => (
                Some(MetricsLog::open_with_events(run, keep)?),
                match self.settings.data_map {
                    true => Some(MetricsLog::open(run.0.join("dynamics.jsonl"), keep)?),
                    false => None,
                },
            ),
            None => (None, None),
        };
        // The bar is the command line's default; a library caller follows the run through its
        // callbacks (and `tracing`).
        let bar = match self.settings.progress_bar {
            true => ProgressBar::new(self.objective.steps().total as u64),
            false => ProgressBar::hidden(),
        };
        let bar = bar.with_style(
            ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len} steps  {msg}  ETA {eta}")
                .expect("template")
                .progress_chars("=> "),
        );
        bar.set_prefix(self.objective.label());
        bar.set_position(state.global_step as u64);
        Ok(Outputs { log, dynamics, bar })
    }

    /// Forward and backward of micro-batch `bi` of `epoch` (dropout seeded by its position, so
    /// resume is exact), accumulating its gradients.
    fn backward(
        &self,
        model: &O::Model,
        progress: &mut Progress<'_, O::Model>,
        batch: &[usize],
        epoch: usize,
        bi: usize,
    ) -> Result<(), TrainError> {
        let micro = (epoch * self.objective.steps().batches_per_epoch + bi) as u64;
        B::seed(self.device, mix(self.settings.seed, micro));
        let loss = self.objective.loss(model, batch, self.device)?;
        let loss_value = loss.clone().into_scalar().elem::<f64>();
        if !loss_value.is_finite() {
            return Err(self.non_finite("loss", &progress.state, epoch));
        }
        let accum = self.objective.steps().accum;
        let loss = if accum > 1 { loss.div_scalar(accum as f64) } else { loss };
        let grads = GradientsParams::from_grads(loss.backward(), model);
        progress.accumulator.accumulate(model, grads);
        progress.in_accum += 1;
        progress.step_loss += loss_value;
        progress.window_loss += loss_value;
        progress.window_n += 1;
        progress.seen_examples += batch.len();
        Ok(())
    }

    /// One optimizer step on the accumulated gradients, the position advanced, the bar and
    /// (every `log_every` steps) `metrics.jsonl` updated.
    fn update(
        &self,
        model: O::Model,
        opt: &mut AdamW<B::InnerBackend>,
        progress: &mut Progress<'_, O::Model>,
        out: &Outputs,
        (epoch, bi, last_of_epoch): (usize, usize, bool),
    ) -> Result<O::Model, TrainError> {
        let steps = self.objective.steps();
        let micro_batches = std::mem::take(&mut progress.in_accum);
        let state = &mut progress.state;
        let lr = self
            .tuning
            .learning_rate(self.settings.lr, state.global_step, steps.warmup, steps.total);
        let mask = self.mask.map(|m| m as &dyn GradientTransform<B::InnerBackend>);
        let (model, stats) = opt.step_masked(model, progress.accumulator.grads(), lr, mask);
        if !stats.grad_norm.is_finite() {
            return Err(self.non_finite("gradient norm", state, epoch));
        }
        state.global_step += 1;
        state.epoch = epoch;
        state.next_batch = bi + 1;
        if last_of_epoch {
            state.epoch = epoch + 1;
            state.next_batch = 0;
        }
        let step = state.global_step;
        let step_loss = std::mem::take(&mut progress.step_loss) / micro_batches.max(1) as f64;
        progress.tell(&TrainEvent::Step {
            step,
            loss: step_loss,
            lr,
            grad_norm: stats.grad_norm,
        });
        let seq_per_s = progress.seq_per_s();
        let loss = progress.window_mean();
        out.bar.set_position(step as u64);
        out.bar
            .set_message(format!("loss {loss:.4}  lr {lr:.2e}  {seq_per_s:.1} seq/s"));
        if step.is_multiple_of(self.settings.log_every.max(1)) {
            if out.bar.is_hidden() && self.run.is_some() {
                // No terminal (a log file, CI): the bar is invisible, so log the window instead.
                tracing::info!(step, total = steps.total, epoch, loss, lr, seq_per_s, "train");
            }
            if let Some(log) = &out.log {
                log.write(MetricsLine::Train {
                    step,
                    epoch,
                    loss,
                    lr,
                    grad_norm: stats.grad_norm,
                    seq_per_s,
                })?;
            }
            progress.window_loss = 0.0;
            progress.window_n = 0;
        }
        Ok(model)
    }

    /// Held-out metrics now: logged, the best checkpoint replaced when they improve, and at
    /// the end of an epoch the objective's training dynamics (data maps).
    fn evaluate(
        &self,
        model: &O::Model,
        progress: &mut Progress<'_, O::Model>,
        out: &Outputs,
        epoch: usize,
        last_of_epoch: bool,
    ) -> Result<(), TrainError> {
        let step = progress.state.global_step;
        let inner: Inner<B, O> = model.valid();
        let last = step == self.objective.steps().total;
        let metrics = self.objective.evaluate(&inner, last, self.device)?;
        let value = match self.settings.best_metric {
            None => metrics.primary_value(),
            Some(name) => *metrics.values.get(name).ok_or_else(|| {
                TrainError::Invalid(format!(
                    "best_metric `{name}` is not among this task's metrics ({})",
                    metrics.values.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?,
        };
        if self.settings.progress_bar {
            out.bar.println(format!(
                "{} step {step} epoch {epoch}: {} = {value:.4}",
                self.objective.label(),
                metrics.primary,
            ));
        }
        tracing::info!(step, epoch, metric = %metrics.primary, value, "evaluation");
        progress.tell(&TrainEvent::Eval {
            step,
            metrics: &metrics,
        });
        if let Some(log) = &out.log {
            log.write(MetricsLine::Eval {
                step,
                epoch,
                metrics: metrics.values.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            })?;
        }
        if let (Some(d), true) = (&out.dynamics, last_of_epoch) {
            if let Some(line) = self.objective.dynamics(&inner, epoch, step, self.device)? {
                d.write_value(serde_json::to_value(line).expect("a dynamics line serialises"))?;
            }
        }
        if progress
            .state
            .best
            .is_none_or(|(b, _)| self.objective.improves(value, b))
        {
            progress.state.best = Some((value, step));
            if let Some(run) = self.run {
                checkpoint::write_weights(&run.best(), model, self.tuning)?;
                progress.tell(&TrainEvent::Checkpoint {
                    step,
                    path: &run.best(),
                    best: true,
                });
            }
        }
        progress.last_metrics = Some(metrics);
        Ok(())
    }

    /// The error of a non-finite loss or gradient norm at the next step: training stops and
    /// the last checkpoint (named when one exists) is left as it was.
    fn non_finite(&self, what: &'static str, state: &TrainState, epoch: usize) -> TrainError {
        let last = self.run.map(RunDir::last);
        TrainError::NonFinite {
            what,
            step: state.global_step + 1,
            epoch,
            checkpoint: last.filter(|l| l.join("state.json").exists()),
        }
    }
}
