//! `demo`, `embed`, `fetch`: the quick start and the model cache.

use std::path::PathBuf;

use anyhow::Result;
use kiln::backend::run_on;
use kiln::model::hub::DEFAULT_MODEL_ID;

use super::common::*;
use crate::{analyse, demo, embed};

#[derive(clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// A GLUE task (cola, sst2, mrpc, stsb, rte, qnli, mnli, qqp, wnli) instead of the fixture.
    #[arg(long, value_parser = glue_task)]
    pub task: Option<kiln::data::GlueTask>,
    /// GLUE directory holding the task's folder (default: shared/data/glue when found).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Passes over the training data (default: 1 on the fixture, 3 on GLUE).
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Run directory (default: runs/demo or runs/demo-<task>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl DemoArgs {
    pub fn run(self) -> Result<()> {
        let Self {
            model,
            device,
            task,
            data,
            epochs,
            seed,
            out,
        } = self;
        let device = device.device;
        let model = model.resolve()?;
        let (data, source) = demo::demo_data(task, data.as_deref())?;
        let what = match task {
            None => format!(
                "the bundled sentiment fixture ({} train / {} dev sentences)",
                data.train.len(),
                data.dev.len()
            ),
            Some(t) => format!(
                "GLUE {} ({} train / {} dev)",
                t.short_name(),
                data.train.len(),
                data.dev.len()
            ),
        };
        let out = out.unwrap_or_else(|| match task {
            None => PathBuf::from("runs/demo"),
            Some(t) => PathBuf::from(format!("runs/demo-{}", t.short_name())),
        });
        let mut train = demo::demo_config(task.is_none(), epochs, seed);
        train.data_map = !task.is_some_and(|t| t.is_regression());
        let texts = train_texts(&data, train.max_train_examples);
        let dev = data.dev.clone();
        let outcome = run_on(
            device,
            demo::DemoJob {
                model: model.clone(),
                data,
                train,
                out: out.clone(),
                source: source.clone(),
            },
        )??;
        source.write(&out)?;
        demo::print_outcome(&out, &outcome, &what);
        let analysis = run_on(device, analyse::AnalyseJob::quick(model, out.clone(), dev))??;
        println!("Analysis: {}", analysis.display());
        println!("Report: {}", kiln::viz::write_report(&out, Some(texts))?.display());
        report_plots(&out);

        Ok(())
    }
}

#[derive(clap::Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Sentences to embed (default: a built-in set).
    #[arg(long = "sentence")]
    pub sentences: Vec<String>,
}

impl EmbedArgs {
    pub fn run(self) -> Result<()> {
        let Self {
            model,
            device,
            sentences,
        } = self;
        let device = device.device;
        let model = model.resolve()?;
        let sentences: Vec<String> = if sentences.is_empty() {
            embed::DEFAULT_SENTENCES.iter().map(|s| s.to_string()).collect()
        } else {
            sentences
        };
        let embeddings = run_on(
            device,
            embed::EmbedJob {
                model,
                sentences: sentences.clone(),
                batch_size: 32,
            },
        )??;
        embed::print_similarity(&sentences, &embed::similarity(&embeddings));

        Ok(())
    }
}

#[derive(clap::Args)]
pub struct FetchArgs {
    #[arg(long, default_value = DEFAULT_MODEL_ID)]
    pub model_id: String,
}

impl FetchArgs {
    pub fn run(self) -> Result<()> {
        let Self { model_id } = self;
        let dir = kiln::model::hub::fetch(&model_id)?;
        println!("{}", dir.display());

        Ok(())
    }
}
