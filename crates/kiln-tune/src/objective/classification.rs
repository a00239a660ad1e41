//! Sequence classification and regression (`BertForSequenceClassification`): cross-entropy
//! or MSE on GLUE-style examples, batched by the run's plan, evaluated with the task's GLUE
//! metrics on the dev set; with `data_map`, each epoch ends with the training examples' gold
//! probabilities (Swayamdipta et al. 2020).

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use kiln_data::batching::epoch_batches;
use kiln_data::metrics::TaskMetrics;
use kiln_data::TextTokenizer;

use super::{Inner, Objective, Steps};
use crate::classifier::SequenceClassifier;
use crate::run_files::DynamicsLine;
use crate::trainer::{evaluate, gold_probabilities, targets, TaskData, TrainConfig, TrainError, TrainSet};

/// The classification/regression objective of a GLUE-style task.
pub struct Classification<'a> {
    /// Tokenizer of the inputs.
    pub tok: &'a TextTokenizer,
    /// The task and its dev set.
    pub data: &'a TaskData,
    /// Batch sizes and the data map switch.
    pub cfg: &'a TrainConfig,
    /// The training examples and their batching.
    pub set: &'a TrainSet<'a>,
}

impl<B: AutodiffBackend> Objective<B> for Classification<'_> {
    type Model = SequenceClassifier<B>;

    fn label(&self) -> String {
        self.data.task.short_name().to_string()
    }

    fn steps(&self) -> Steps {
        self.set.steps
    }

    fn batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        epoch_batches(&self.set.plan, &self.set.lengths, epoch as u64)
    }

    fn loss(&self, model: &Self::Model, batch: &[usize], device: &B::Device) -> Result<Tensor<B, 1>, TrainError> {
        let [ids, types, mask] = self.set.tensors::<B>(self.tok, batch, device)?;
        let logits = model.forward(ids, types, mask);
        Ok(model.loss(logits, &targets::<B>(self.set.examples, batch, device)?))
    }

    fn evaluate(&self, model: &Inner<B, Self>, _last: bool, device: &B::Device) -> Result<TaskMetrics, TrainError> {
        evaluate(
            model,
            self.tok,
            self.data.task,
            &self.data.dev,
            self.cfg.eval_batch_size,
            device,
        )
    }

    fn dynamics(
        &self,
        model: &Inner<B, Self>,
        epoch: usize,
        step: usize,
        device: &B::Device,
    ) -> Result<Option<DynamicsLine>, TrainError> {
        if self.data.task.is_regression() {
            return Ok(None);
        }
        let (p_gold, correct) =
            gold_probabilities(model, self.tok, self.set.examples, self.cfg.eval_batch_size, device)?;
        Ok(Some(DynamicsLine {
            epoch,
            step,
            p_gold,
            correct,
        }))
    }
}
