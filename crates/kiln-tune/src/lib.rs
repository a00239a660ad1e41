//! # kiln-tune
//!
//! Fine-tuning: task heads ([`classifier::SequenceClassifier`]), tuning strategies (what trains,
//! inserted modules, gradient masks: [`strategy`], one file per strategy behind the
//! [`strategy::Strategy`] trait, choosing parameters by typed role), the run files
//! ([`run_files`]: `kiln-format`'s types, `config.json` with kiln-tune's `TrainConfig`
//! inside, and restoring a run's model), a PyTorch-exact AdamW with
//! per-parameter groups and gradient access ([`optim`]), learning-rate schedules, one
//! training loop over objectives ([`objective`]: classification/regression, causal LM, masked
//! LM; any model that is a strategy host, [`strategy::TunableModel`]), the classification run
//! with its run directory and checkpoints ([`trainer`]; who may write a run
//! directory and what happens to an existing one: [`run_dir`]; every `[train]` value checked
//! before anything runs: [`validate`]), and the exactness
//! check against PyTorch's training step ([`train_parity`]), the ladder side network
//! ([`ladder`]), interop with PEFT and Hugging Face layouts ([`export`]), attention transfer
//! for converted models ([`transfer`]), and language modelling from a token stream (GPT-2's
//! causal LM and BERT's masked LM with any strategy, perplexity: [`lm`]).
//!
//! **Owns:** what trains, how, and what is saved. **Must not touch:** model architecture
//! (`kiln-model`; the modules strategies insert — LoRA deltas, adapters, (IA)³, masks, soft
//! prompts — are defined there in `kiln_model::peft` and only instantiated here), attention
//! mechanisms (`kiln-attention`), data parsing and metrics (`kiln-data`), the layout of run
//! files (`kiln-format`).
//!
//! The optimizer is kiln's own rather than `burn::optim::AdamW`: see [`optim`] for why.
#![warn(missing_docs)]

pub mod callbacks;
pub mod checkpoint;
pub mod classifier;
pub mod export;
pub mod ladder;
pub mod lm;
pub mod objective;
pub mod optim;
pub mod params;
pub mod run_dir;
pub mod run_files;
pub mod strategy;
mod train_loop;
pub mod train_parity;
pub mod trainer;
pub mod transfer;
pub mod validate;
