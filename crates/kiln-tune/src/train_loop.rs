//! The fine-tuning loop of [`crate::trainer::train`]: epochs of micro-batches (forward,
//! backward, gradient accumulation), optimizer steps with the strategy's schedule and gradient
//! mask, logging, evaluation, the best and last checkpoints, and a stop step for tests of
//! resume. Setup (validation, the run directory, conversion, inserts) is `trainer`'s.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_data::batching::epoch_batches;
use kiln_data::metrics::TaskMetrics;
use kiln_data::TextTokenizer;
use kiln_model::roles::Roles;

use crate::checkpoint::{self, TrainState};
use crate::classifier::SequenceClassifier;
use crate::optim::{AdamW, GradientTransform, ParamGroup};
use crate::params::ParamInfo;
use crate::run_files::{DynamicsLine, MetricsLine};
use crate::strategy::{ChildMask, Tuning};
use crate::trainer::{
    evaluate, gold_probabilities, mix, targets, MetricsLog, RunDir, StopAt, TaskData, TrainConfig, TrainError, TrainSet,
};

/// What the loop needs and does not change.
pub(crate) struct Session<'a, B: AutodiffBackend> {
    pub tok: &'a TextTokenizer,
    pub data: &'a TaskData,
    pub cfg: &'a TrainConfig,
    pub set: &'a TrainSet<'a>,
    pub tuning: &'a Tuning,
    pub mask: Option<&'a ChildMask<B::InnerBackend>>,
    pub run: &'a RunDir,
    pub stop: StopAt,
    pub device: &'a B::Device,
}

/// What the loop returns besides the model.
pub(crate) struct Outcome {
    /// The last evaluation (or one after the loop when none ran).
    pub final_metrics: TaskMetrics,
    /// Step, epoch and best metric at the end.
    pub state: TrainState,
    /// Training throughput of this process.
    pub train_seq_per_s: f64,
}

/// What changes from step to step besides the model and the optimizer.
struct Progress<M> {
    state: TrainState,
    accumulator: GradientsAccumulator<M>,
    in_accum: usize,
    window_loss: f64,
    window_n: usize,
    seen_examples: usize,
    last_metrics: Option<TaskMetrics>,
    started: Instant,
}

impl<M> Progress<M> {
    fn window_mean(&self) -> f64 {
        self.window_loss / self.window_n.max(1) as f64
    }

    fn seq_per_s(&self) -> f64 {
        self.seen_examples as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }
}

/// Where the loop writes: metrics, training dynamics, the progress bar.
struct Outputs {
    log: MetricsLog,
    dynamics: Option<MetricsLog>,
    bar: ProgressBar,
}

impl<B: AutodiffBackend> Session<'_, B> {
    /// Trains `model` (inserts in place; `infos` and `roles` its parameters) from the start
    /// or, when `resumed`, from `checkpoints/last`'s optimizer and position.
    pub(crate) fn run(
        &self,
        model: SequenceClassifier<B>,
        infos: &[ParamInfo],
        roles: &Roles,
        resumed: bool,
    ) -> Result<(SequenceClassifier<B>, Outcome), TrainError> {
        let num_layers = model.bert.num_layers();
        let mut model = self.tuning.freeze(model);
        let mut opt =
            AdamW::<B::InnerBackend>::new(self.cfg.adamw, infos, |info| self.group(roles, info, 0, num_layers));
        let mut state = TrainState {
            global_step: 0,
            epoch: 0,
            next_batch: 0,
            best: None,
            seed: self.cfg.seed,
        };
        if resumed {
            state = checkpoint::load_optimizer_and_state(&self.run.last(), &mut opt, self.device)?;
            tracing::info!(
                step = state.global_step,
                epoch = state.epoch,
                "resuming from {}",
                self.run.last().display()
            );
        }
        let out = self.outputs(&state, resumed)?;
        let mut progress = Progress {
            state,
            accumulator: GradientsAccumulator::new(),
            in_accum: 0,
            window_loss: 0.0,
            window_n: 0,
            seen_examples: 0,
            last_metrics: None,
            started: Instant::now(),
        };
        'epochs: for epoch in progress.state.epoch..self.cfg.epochs {
            if self.tuning.unfreezes_gradually() {
                model = self.tuning.freeze_at(model, epoch);
                for info in infos {
                    opt.set_group(info.id, self.group(roles, info, epoch, num_layers));
                }
                tracing::info!(epoch, "gradual unfreezing: depth {epoch} and above train");
            }
            let batches = epoch_batches(&self.set.plan, &self.set.lengths, epoch as u64);
            let first = if epoch == progress.state.epoch {
                progress.state.next_batch
            } else {
                0
            };
            for (bi, batch) in batches.iter().enumerate().skip(first) {
                self.backward(&model, &mut progress, batch, epoch, bi)?;
                let last_of_epoch = bi + 1 == batches.len();
                if progress.in_accum < self.set.accum && !last_of_epoch {
                    continue;
                }
                model = self.update(model, &mut opt, &mut progress, &out, (epoch, bi, last_of_epoch))?;
                let stopping = self.stop.step == Some(progress.state.global_step);
                let eval_now = last_of_epoch
                    || self
                        .cfg
                        .eval_every
                        .is_some_and(|n| progress.state.global_step.is_multiple_of(n.max(1)));
                if eval_now {
                    self.evaluate(&model, &mut progress, &out, epoch, last_of_epoch)?;
                }
                if eval_now || stopping {
                    checkpoint::save(&self.run.last(), &model, self.tuning, &opt, &progress.state)?;
                }
                if stopping {
                    break 'epochs;
                }
            }
        }
        out.bar.finish_and_clear();
        let final_metrics = match progress.last_metrics.take() {
            Some(m) => m,
            None => self.dev_metrics(&model)?,
        };
        let train_seq_per_s = progress.seq_per_s();
        Ok((
            model,
            Outcome {
                final_metrics,
                state: progress.state,
                train_seq_per_s,
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
        let dynamics = match self.cfg.data_map {
            true => Some(MetricsLog::open(self.run.0.join("dynamics.jsonl"), keep)?),
            false => None,
        };
        let bar = ProgressBar::new(self.set.total_steps as u64).with_style(
            ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len} steps  {msg}  ETA {eta}")
                .expect("template")
                .progress_chars("=> "),
        );
        bar.set_prefix(self.data.task.short_name());
        bar.set_position(state.global_step as u64);
        Ok(Outputs {
            log: MetricsLog::open(self.run.metrics(), keep)?,
            dynamics,
            bar,
        })
    }

    /// Forward and backward of micro-batch `bi` of `epoch` (dropout seeded by its position, so
    /// resume is exact), accumulating its gradients.
    fn backward(
        &self,
        model: &SequenceClassifier<B>,
        progress: &mut Progress<SequenceClassifier<B>>,
        batch: &[usize],
        epoch: usize,
        bi: usize,
    ) -> Result<(), TrainError> {
        let micro = (epoch * self.set.batches_per_epoch + bi) as u64;
        B::seed(self.device, mix(self.cfg.seed, micro));
        let [ids, types, mask] = self.set.tensors::<B>(self.tok, batch, self.device)?;
        let logits = model.forward(ids, types, mask);
        let loss = model.loss(logits, &targets::<B>(self.set.examples, batch, self.device)?);
        let loss_value = loss.clone().into_scalar().elem::<f64>();
        if !loss_value.is_finite() {
            return Err(self.non_finite("loss", &progress.state, epoch));
        }
        let accum = self.set.accum;
        let loss = if accum > 1 { loss.div_scalar(accum as f64) } else { loss };
        let grads = GradientsParams::from_grads(loss.backward(), model);
        progress.accumulator.accumulate(model, grads);
        progress.in_accum += 1;
        progress.window_loss += loss_value;
        progress.window_n += 1;
        progress.seen_examples += batch.len();
        Ok(())
    }

    /// One optimizer step on the accumulated gradients, the position advanced, the bar and
    /// (every `log_every` steps) `metrics.jsonl` updated.
    fn update(
        &self,
        model: SequenceClassifier<B>,
        opt: &mut AdamW<B::InnerBackend>,
        progress: &mut Progress<SequenceClassifier<B>>,
        out: &Outputs,
        (epoch, bi, last_of_epoch): (usize, usize, bool),
    ) -> Result<SequenceClassifier<B>, TrainError> {
        progress.in_accum = 0;
        let state = &mut progress.state;
        let lr = self
            .tuning
            .learning_rate(self.cfg.lr, state.global_step, self.set.warmup, self.set.total_steps);
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
        let seq_per_s = progress.seq_per_s();
        let loss = progress.window_mean();
        out.bar.set_position(step as u64);
        out.bar
            .set_message(format!("loss {loss:.4}  lr {lr:.2e}  {seq_per_s:.1} seq/s"));
        if step.is_multiple_of(self.cfg.log_every.max(1)) {
            if out.bar.is_hidden() {
                // No terminal (a log file, CI): the bar is invisible, so log the window instead.
                let total = self.set.total_steps;
                tracing::info!(step, total, epoch, loss, lr, seq_per_s, "train");
            }
            out.log.write(MetricsLine::Train {
                step,
                epoch,
                loss,
                lr,
                grad_norm: stats.grad_norm,
                seq_per_s,
            })?;
            progress.window_loss = 0.0;
            progress.window_n = 0;
        }
        Ok(model)
    }

    /// Dev metrics now: logged, the best checkpoint replaced when they improve, and at the end
    /// of an epoch the training examples' gold probabilities for the data map.
    fn evaluate(
        &self,
        model: &SequenceClassifier<B>,
        progress: &mut Progress<SequenceClassifier<B>>,
        out: &Outputs,
        epoch: usize,
        last_of_epoch: bool,
    ) -> Result<(), TrainError> {
        let (task, step) = (self.data.task, progress.state.global_step);
        let metrics = self.dev_metrics(model)?;
        let value = metrics.primary_value();
        out.bar.println(format!(
            "{} step {step} epoch {epoch}: dev {} = {value:.4}",
            task.short_name(),
            metrics.primary,
        ));
        tracing::info!(step, epoch, metric = %metrics.primary, value, "evaluation");
        out.log.write(MetricsLine::Eval {
            step,
            epoch,
            metrics: metrics.values.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        })?;
        if let (Some(d), true, false) = (&out.dynamics, last_of_epoch, task.is_regression()) {
            let (p_gold, correct) = gold_probabilities(
                &model.valid(),
                self.tok,
                self.set.examples,
                self.cfg.eval_batch_size,
                self.device,
            )?;
            d.write_value(
                serde_json::to_value(DynamicsLine {
                    epoch,
                    step,
                    p_gold,
                    correct,
                })
                .expect("a dynamics line serialises"),
            )?;
        }
        if progress.state.best.is_none_or(|(b, _)| value > b) {
            progress.state.best = Some((value, step));
            checkpoint::write_weights(&self.run.best(), model, self.tuning)?;
        }
        progress.last_metrics = Some(metrics);
        Ok(())
    }

    fn dev_metrics(&self, model: &SequenceClassifier<B>) -> Result<TaskMetrics, TrainError> {
        evaluate(
            &model.valid(),
            self.tok,
            self.data.task,
            &self.data.dev,
            self.cfg.eval_batch_size,
            self.device,
        )
    }

    /// The error of a non-finite loss or gradient norm at the next step: training stops and
    /// the last checkpoint (named when one exists) is left as it was.
    fn non_finite(&self, what: &'static str, state: &TrainState, epoch: usize) -> TrainError {
        let last = self.run.last();
        TrainError::NonFinite {
            what,
            step: state.global_step + 1,
            epoch,
            checkpoint: last.join("state.json").exists().then_some(last),
        }
    }
}
