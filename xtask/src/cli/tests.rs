//! Command-line behaviour tests.

use kiln::backend::{run_on, DeviceKind};

use super::common::*;
use crate::{demo, export, lens};
use kiln::tune::run_dir::DataSource;

#[test]
fn commands_on_a_missing_or_foreign_directory_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = require_run(&missing).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{} does not exist", missing.display())),
        "{err}"
    );
    let err = require_run(dir.path()).unwrap_err().to_string();
    assert!(err.contains("is not a run directory (no config.json)"), "{err}");
}

/// `lens mixing` on `[]` used to panic in a shape index.
#[test]
fn lens_mixing_on_an_empty_list_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.json"), "[]").unwrap();
    let job = lens::MixingJob {
        model: dir.path().join("no-model"),
        input: dir.path().join("t.json"),
        out: dir.path().join("m.safetensors"),
        max_length: 128,
    };
    let err = run_on(DeviceKind::Flex, job).unwrap().unwrap_err().to_string();
    assert!(err.ends_with("t.json: the list of texts is empty"), "{err}");
}

/// A demo run (SST-2 task, bundled fixture) is analysed on the fixture even where a GLUE
/// directory with SST-2 exists (it used to be analysed on GLUE SST-2); a GLUE run reads its
/// recorded directory; a run without data.json (older kiln) needs a GLUE directory.
#[test]
fn a_run_is_read_back_with_the_data_it_was_trained_on() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("config.json"), r#"{"task": "sst2", "train": {}}"#).unwrap();
    let glue = dir.path().join("glue");
    std::fs::create_dir_all(glue.join("SST-2")).unwrap();
    std::fs::write(glue.join("SST-2/train.tsv"), "sentence\tlabel\na b\t1\n").unwrap();
    std::fs::write(glue.join("SST-2/dev.tsv"), "sentence\tlabel\nc d\t0\n").unwrap();

    DataSource::Fixture {
        name: "sentiment".into(),
    }
    .write(&run)
    .unwrap();
    let data = run_data(&run, Some(glue.clone())).unwrap();
    assert_eq!(data.dev.len(), demo::fixture().unwrap().dev.len());
    assert!(data.dev.len() > 1);

    DataSource::Glue {
        dir: glue.clone(),
        task: "sst2".into(),
    }
    .write(&run)
    .unwrap();
    assert_eq!(run_data(&run, None).unwrap().dev.len(), 1);

    std::fs::remove_file(DataSource::file(&run)).unwrap();
    assert_eq!(run_data(&run, Some(glue)).unwrap().dev.len(), 1);
}

/// `lens analyse` / `export` load a run through `export::load_run`, which refuses a model
/// whose weights differ from the ones recorded in the run's provenance, naming both hashes,
/// before loading anything; an unversioned (format 1) run without provenance still loads.
#[test]
fn a_run_refuses_a_changed_model_naming_both_hashes() {
    use kiln::tune::run_files::{sha256_file, ModelRecord, Provenance, RunConfig};
    let dir = tempfile::tempdir().unwrap();
    let (model, run) = (dir.path().join("model"), dir.path().join("run"));
    std::fs::create_dir_all(&model).unwrap();
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(model.join("model.safetensors"), b"the weights trained from").unwrap();
    let record = ModelRecord::of_dir(&model, None).unwrap();
    let config = RunConfig::new(
        "sst2",
        kiln::tune::trainer::TrainConfig::default(),
        Some(Provenance::now(record.clone(), None, "flex", None)),
    );
    std::fs::write(run.join("config.json"), serde_json::to_string(&config).unwrap()).unwrap();
    std::fs::write(model.join("model.safetensors"), b"other weights").unwrap();
    let now = sha256_file(&model.join("model.safetensors")).unwrap();
    let Err(err) = export::load_run::<kiln::burn::backend::Flex>(&model, &run, "best", &Default::default()) else {
        panic!("a changed model is refused")
    };
    let err = err.to_string();
    assert!(err.contains(&record.sha256) && err.contains(&now), "{err}");
    assert!(err.contains("is not the model this run was trained from"), "{err}");
    // The default model directory of a run is the one it recorded.
    assert_eq!(export::run_model(&run, None).unwrap(), model);
}

/// An unknown attention variant is refused while the command line is parsed, naming the valid
/// ones (it used to pass clap and fail after setup); `softmax` is a bench baseline but not a
/// conversion target.
#[test]
fn variant_names_are_checked_at_parse_time() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Args {
        #[command(subcommand)]
        command: super::Command,
    }
    let parse = |args: &[&str]| Args::try_parse_from(std::iter::once("xtask").chain(args.iter().copied()));
    let err = parse(&["bench", "generate", "--variants", "t2r,linear"])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("unknown variant \"linear\"") && err.contains("window<N>"),
        "{err}"
    );
    let err = parse(&["lm", "decoder", "--variants", "softmax"])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("unknown variant \"softmax\""), "{err}");
    let err = parse(&["bench", "attention", "--variants", "window"])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("window<N>"), "{err}");
    let ok = parse(&["bench", "generate", "--variants", "softmax,window32,hybrid"]);
    assert!(ok.is_ok(), "{:?}", ok.err().map(|e| e.to_string()));
    assert_eq!(
        attention_variant("window32").unwrap().variant,
        kiln::attention::AttentionVariant::SlidingWindow { window: 32 }
    );
}

/// A causal-LM run (`kiln_tune::lm::train_lm_run`) is refused by the readers of
/// classification runs (`export`, `lens analyse`) with a message saying what it is, and the
/// report reads it: its task, its perplexity evaluations and the plots of its curves.
#[test]
fn a_causal_lm_run_is_refused_by_export_and_drawn_by_the_report() {
    use kiln::burn::backend::{Autodiff, Flex};
    use kiln::tune::lm::{train_lm_run, LmRun, LmTrainConfig, CAUSAL_LM_TASK};
    use kiln::tune::trainer::{RunDir, StopAt};
    type B = Autodiff<Flex>;
    let device = Default::default();
    let config: kiln::model::GptConfig =
        serde_json::from_str(r#"{"vocab_size": 256, "n_positions": 32, "n_embd": 16, "n_layer": 1, "n_head": 2}"#)
            .unwrap();
    let text: Vec<u32> = "to be or not to be, that is the question. "
        .bytes()
        .cycle()
        .take(2000)
        .map(u32::from)
        .collect();
    let (train, held_out) = text.split_at(1600);
    let cfg = LmTrainConfig {
        steps: 4,
        batch_size: 2,
        block_len: 16,
        eval_every: 2,
        eval_tokens: 0,
        ..LmTrainConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let spec = LmRun {
        dir: &run,
        on_existing: kiln::tune::run_dir::OnExisting::Refuse,
        stop: StopAt { step: None },
    };
    let tuning = kiln::tune::strategy::Tuning::new(&[]).unwrap();
    let model = kiln::model::Gpt2Model::<B>::new(&config, &device);
    train_lm_run(model, train, held_out, &cfg, &tuning, &spec, |_| {}, &device).unwrap();

    let err = export::run_config(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("a language-model run (task \"causal-lm\"")
            && err.contains("this command reads classification runs"),
        "{err}"
    );

    let data = kiln::viz::report_data(dir.path(), None).unwrap();
    assert_eq!(data["results"]["task"], CAUSAL_LM_TASK);
    assert_eq!(
        data["eval"].as_array().unwrap().len(),
        2,
        "evaluations at steps 2 and 4"
    );
    assert_eq!(data["train"].as_array().unwrap().len(), 4);
    let plots = kiln::viz::plots::write_plots(dir.path()).unwrap();
    assert!(!plots.is_empty() && plots.iter().all(|p| p.exists()), "{plots:?}");
    assert!(kiln::viz::write_report(dir.path(), None).unwrap().exists());
}

/// A random byte-level GPT-2 directory (config.json without dropout, model.safetensors) in
/// `dir/model`, as `lm decoder` writes one (the caller holds the RNG lock).
fn byte_level_decoder(dir: &std::path::Path) -> std::path::PathBuf {
    use kiln::burn::backend::{Autodiff, Flex};
    type B = Autodiff<Flex>;
    let model_dir = dir.join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    let config = r#"{"vocab_size": 256, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4,
                     "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}"#;
    std::fs::write(model_dir.join("config.json"), config).unwrap();
    <B as kiln::burn::tensor::backend::Backend>::seed(&Default::default(), 3);
    let model = kiln::model::Gpt2Model::<B>::new(&serde_json::from_str(config).unwrap(), &Default::default());
    std::fs::write(
        model_dir.join("model.safetensors"),
        kiln::model::gpt2_weights_bytes(&model).unwrap(),
    )
    .unwrap();
    model_dir
}

/// `lm finetune` on a byte-level decoder directory (as `lm decoder` writes it): BitFit + a
/// LoRA on every linear (a random decoder: the strategies' own effect on pretrained ones is
/// tested in kiln-tune) trains a fraction of the parameters, lowers held-out perplexity on a
/// repetitive text, and leaves a
/// run directory recording the text (path, hash, held-out tokens); a second run into the same
/// directory is refused; a model with neither tokenizer.json nor a byte vocabulary is refused.
#[test]
fn lm_finetune_writes_a_run_of_a_byte_level_decoder() {
    use kiln::tune::run_dir::OnExisting;
    let dir = tempfile::tempdir().unwrap();
    let _rng = kiln_testkit::rng_lock();
    let model_dir = byte_level_decoder(dir.path());
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "the cat sat on the mat. ".repeat(120)).unwrap();
    let job = |on_existing| {
        crate::lm_finetune::FinetuneJob {
        model: model_dir.clone(),
        text: text.clone(),
        tail: 0.2,
        out: dir.path().join("run"),
        tuning: serde_json::from_str(r#"[{"kind": "bit_fit"}, {"kind": "lora", "r": 2, "targets": ["query", "key", "value", "attention_output", "intermediate", "output"]}]"#).unwrap(),
        train: kiln::tune::lm::LmTrainConfig {
            steps: 30,
            batch_size: 4,
            block_len: 32,
            lr: 2e-2,
            warmup_steps: 3,
            eval_every: 15,
            eval_tokens: 0,
            ..Default::default()
        },
        mask_prob: 0.15,
        on_existing,
    }
    };
    let history = run_on(DeviceKind::Flex, job(OnExisting::Refuse)).unwrap().unwrap();
    let first = history.evals.first().unwrap().1.perplexity;
    let last = history.evals.last().unwrap().1.perplexity;
    assert!(
        last < first && last < 0.8 * history.steps[0].loss.exp(),
        "{first} → {last}, first loss {}",
        history.steps[0].loss
    );
    assert!(
        history.trainable * 10 < history.total,
        "{} of {}",
        history.trainable,
        history.total
    );

    let run = dir.path().join("run");
    let results = kiln::format::run::Results::read(&run).unwrap().unwrap();
    assert_eq!((results.steps, results.trainable_params), (30, history.trainable));
    let held_out = ("the cat sat on the mat. ".len() * 120) - ("the cat sat on the mat. ".len() * 120 * 4 / 5);
    match DataSource::read(&run).unwrap().unwrap() {
        DataSource::Text {
            path,
            sha256,
            held_out_tokens,
        } => {
            assert_eq!(path, std::path::absolute(&text).unwrap());
            assert_eq!(sha256, kiln::tune::run_files::sha256_file(&text).unwrap());
            assert!(
                held_out_tokens.abs_diff(held_out) <= 1,
                "{held_out_tokens} vs {held_out}"
            );
        }
        other => panic!("{other:?}"),
    }
    // TensorBoard: the run's event file has every logged step's loss and both evaluations.
    let events = kiln::format::tensorboard::event_files(&run);
    assert_eq!(events.len(), 1, "{events:?}");
    let scalars = kiln::format::tensorboard::read_scalars(&events[0]).unwrap();
    let steps_of = |tag: &str| {
        scalars
            .iter()
            .filter(|s| s.tag == tag)
            .map(|s| s.step)
            .collect::<Vec<_>>()
    };
    let logged: Vec<kiln::format::training::MetricsLine> =
        kiln::format::training::read_lines(&run.join("metrics.jsonl")).unwrap();
    let train_lines = logged
        .iter()
        .filter(|l| matches!(l, kiln::format::training::MetricsLine::Train { .. }))
        .count();
    assert_eq!(steps_of("train/loss").len(), train_lines);
    assert!(train_lines > 0 && steps_of("train/lr").len() == train_lines);
    assert_eq!(steps_of("eval/perplexity"), [15, 30], "{scalars:?}");
    // `runs` lists it, finished, with its task and held-out perplexity.
    let listing = super::runs::listing(dir.path()).unwrap();
    assert_eq!(listing.lines().count(), 3, "{listing}");
    let row = listing.lines().nth(2).unwrap();
    assert!(
        row.contains("causal-lm") && row.contains("finished") && row.contains("perplexity="),
        "{listing}"
    );

    let err = run_on(DeviceKind::Flex, job(OnExisting::Refuse)).unwrap().unwrap_err();
    assert!(format!("{err:#}").contains("already"), "{err:#}");

    let err = crate::lm_finetune::tokens(&model_dir, 50257, "text")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no tokenizer.json and a vocabulary of 50257"), "{err}");
}

/// `lm finetune` on a BERT checkpoint with its masked-LM head (the committed tiny fixture) is
/// masked-token fine-tuning: the run records task `masked-lm` and BERT's masking with the
/// tokenizer's `[MASK]` id, LoRA + BitFit lower held-out masked perplexity on a repetitive
/// text; a `model_type` this command cannot fine-tune is refused naming the ones it can.
#[test]
fn lm_finetune_runs_masked_lm_on_a_bert_checkpoint() {
    use kiln::tune::lm::{LmRunFile, MASKED_LM_TASK};
    use kiln::tune::run_dir::OnExisting;
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-bert-mlm");
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.txt");
    std::fs::write(
        &text,
        "paris is the capital of france . rome is the capital of italy . the sky is blue . ".repeat(60),
    )
    .unwrap();
    let _rng = kiln_testkit::rng_lock();
    let job = crate::lm_finetune::FinetuneJob {
        model: fixture.clone(),
        text: text.clone(),
        tail: 0.2,
        out: dir.path().join("run"),
        tuning: serde_json::from_str(r#"[{"kind": "bit_fit"}, {"kind": "lora", "r": 4, "targets": ["query", "value", "intermediate", "output"]}]"#).unwrap(),
        train: kiln::tune::lm::LmTrainConfig {
            steps: 40,
            batch_size: 8,
            block_len: 16,
            lr: 1e-2,
            warmup_steps: 4,
            eval_every: 20,
            eval_tokens: 0,
            ..Default::default()
        },
        mask_prob: 0.15,
        on_existing: OnExisting::Refuse,
    };
    let history = run_on(DeviceKind::Flex, job).unwrap().unwrap();
    let (first, last) = (
        history.evals[0].1.perplexity,
        history.evals.last().unwrap().1.perplexity,
    );
    assert!(
        last < first && last < 0.5 * history.steps[0].loss.exp(),
        "{first} → {last}, first loss {}",
        history.steps[0].loss
    );
    let config = LmRunFile::read(&dir.path().join("run")).unwrap();
    assert_eq!(config.task, MASKED_LM_TASK);
    let masking = config.train.masking.unwrap();
    assert_eq!((masking.prob, masking.mask_token, masking.vocab), (0.15, 4, 64));
    assert!(matches!(
        DataSource::read(&dir.path().join("run")).unwrap(),
        Some(DataSource::Text { .. })
    ));
    let err = export::run_config(&dir.path().join("run")).unwrap_err().to_string();
    assert!(err.contains("\"masked-lm\""), "{err}");

    let other = dir.path().join("t5");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("config.json"), r#"{"model_type": "t5"}"#).unwrap();
    let err = crate::lm_finetune::family(&other).unwrap_err().to_string();
    assert!(
        err.contains("\"t5\"") && err.contains("gpt2") && err.contains("bert"),
        "{err}"
    );
}

/// `lens analyse` on a causal-LM run (the decoder pipeline, same analysis format): the
/// pruning curve at 0 % equals the held-out perplexity the training loop evaluated at the same
/// checkpoint (another code path: the loop's evaluation vs the checkpoint reloaded here), each
/// example's loss is −ln p(gold), integrated gradients are complete, attention is causal and
/// rollout rows are distributions; the report reads it; a changed text is refused naming both
/// hashes.
#[test]
fn lens_analyse_runs_the_decoder_pipeline_on_a_causal_lm_run() {
    use kiln::format::analysis::{Analysis, Target};
    use kiln::tune::run_dir::OnExisting;
    let dir = tempfile::tempdir().unwrap();
    let _rng = kiln_testkit::rng_lock();
    let model_dir = byte_level_decoder(dir.path());
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "a stitch in time saves nine; ".repeat(60)).unwrap();
    let run = dir.path().join("run");
    let block = 16;
    let job = crate::lm_finetune::FinetuneJob {
        model: model_dir.clone(),
        text: text.clone(),
        tail: 0.5,
        out: run.clone(),
        // LoRA dropout: the analysis must switch it off (else its gradients are random).
        tuning: serde_json::from_str(r#"[{"kind": "lora", "r": 2, "dropout": 0.2, "targets": ["query", "value"]}]"#)
            .unwrap(),
        train: kiln::tune::lm::LmTrainConfig {
            steps: 10,
            batch_size: 4,
            block_len: block,
            lr: 1e-2,
            warmup_steps: 2,
            eval_every: 5,
            eval_tokens: 0,
            ..Default::default()
        },
        mask_prob: 0.15,
        on_existing: OnExisting::Refuse,
    };
    run_on(DeviceKind::Flex, job).unwrap().unwrap();
    let held_out = match DataSource::read(&run).unwrap().unwrap() {
        DataSource::Text { held_out_tokens, .. } => held_out_tokens,
        other => panic!("{other:?}"),
    };
    let windows = (held_out - 1) / block;
    let settings = kiln::lens::pipeline::AnalysisSettings {
        importance_examples: 1000,
        instances: 3,
        ig_steps: 64,
        tsne_epochs: 100,
        head_effects: true,
        ..Default::default()
    };
    let analyse = |checkpoint: &str| {
        let job = crate::analyse::DecoderAnalyseJob {
            model: model_dir.clone(),
            run: run.clone(),
            settings: settings.clone(),
            checkpoint: checkpoint.into(),
        };
        run_on(DeviceKind::Flex, job).unwrap()
    };
    let path = analyse("best").unwrap();
    let a = Analysis::read(&path).unwrap();
    assert_eq!(
        (a.task.as_str(), a.num_labels, a.examples.len()),
        ("causal-lm", 256, windows)
    );
    let results = kiln::format::run::Results::read(&run).unwrap().unwrap();
    let heads = a.heads.as_ref().unwrap();
    let (ours, loops) = (heads.pruning[0].metric, results.best.unwrap().0);
    assert!(
        (ours - loops).abs() < 1e-3 * loops,
        "perplexity {ours} vs the loop's {loops}"
    );
    assert_eq!(heads.examples, windows);
    assert_eq!(heads.masked_metric.as_ref().unwrap().len(), 2);
    for e in &a.examples {
        let p = e.p_gold.unwrap();
        assert!((p - (-e.loss).exp()).abs() < 1e-3, "{e:?}");
        assert!(matches!(e.label, Target::Class(c) if c < 256));
    }
    assert_eq!(a.instances.len(), 3);
    for inst in &a.instances {
        assert_eq!(inst.tokens.len(), block);
        let sal = inst.saliency.as_ref().unwrap();
        for c in &sal.per_class {
            let want = f64::from(c.ig_completeness.f_x - c.ig_completeness.f_baseline);
            let sum = f64::from(c.ig_completeness.sum);
            assert!((sum - want).abs() < 0.01 * want.abs() + 1e-4, "Σ IG {sum} vs {want}");
        }
        let rollout: f64 = inst.rollout.iter().sum();
        assert!((rollout - 1.0).abs() < 1e-3, "rollout row sums to {rollout}");
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&inst.attention.data)
            .unwrap();
        assert_eq!(bytes.len(), 2 * 4 * block * block);
        for (k, &b) in bytes.iter().enumerate() {
            let (query, key) = ((k / block) % block, k % block);
            if key > query {
                assert_eq!(b, 0, "attention above the diagonal at byte {k}");
            }
        }
        assert!(inst.mixing.is_empty() && inst.value_zeroing_rollout.is_empty());
    }
    // The report's views render the decoder analysis in a real browser (no script error,
    // the instance's tokens drawn, the decoder's output names offered).
    let page = kiln::viz::write_report(&run, None).unwrap();
    let chromium = kiln::viz::headless::chromium()
        .expect("no headless browser: install Debian's chromium (as .ci/run does) or set KILN_CHROMIUM");
    let profile = tempfile::tempdir().unwrap();
    let out = kiln::viz::headless::command(&chromium, profile.path())
        .arg("--virtual-time-budget=5000")
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        kiln::viz::headless::body_attr(&dom, "data-ready").as_deref(),
        Some("1"),
        "{dom:.2000}"
    );
    assert_eq!(kiln::viz::headless::body_attr(&dom, "data-errors"), None, "{dom:.2000}");
    assert!(
        dom.contains(&format!("data-tokens=\"{block}\"")),
        "instance tokens not drawn"
    );
    assert!(dom.contains(">gold next token</option>"));
    assert!(dom.contains(">rise of held-out perplexity when masked alone</option>"));

    std::fs::write(&text, "a stitch in time saves ten; ".repeat(60)).unwrap();
    let err = format!("{:#}", analyse("best").unwrap_err());
    assert!(err.contains("the text changed since the run"), "{err}");
}

/// `import-peft` on an adapter in PEFT's layout (written by kiln's exporter from a LoRA model
/// whose B factors are random, so the adapter changes the logits): the run it makes loads back
/// through `export::load_run` — as `lens analyse` and `export` load runs — with the adapter's
/// logits, records the strategy and provenance, refuses a second import into it, and the
/// report draws it.
#[test]
fn import_peft_makes_a_run_that_analyse_export_and_report_accept() {
    use kiln::burn::backend::{Autodiff, Flex};
    use kiln::burn::module::{AutodiffModule, Param};
    use kiln::burn::prelude::*;
    use kiln::tune::classifier::SequenceClassifier;
    use kiln::tune::strategy::{Lora, StrategyConfig, Tuning};
    type A = Autodiff<Flex>;
    let _rng = kiln_testkit::rng_lock();
    let device = Default::default();
    A::seed(&device, 5);
    let base = kiln_testkit::fixtures_dir().join("tiny-bert-mlm");
    let (model, _) = SequenceClassifier::<A>::from_pretrained(&base, 2, &device).unwrap();
    let tuning = Tuning::new(&[StrategyConfig::Lora(Lora {
        r: 2,
        alpha: 4.0,
        dropout: 0.0,
        targets: vec!["query".into(), "value".into()],
    })])
    .unwrap();
    let mut model = tuning.insert(model, &device).unwrap();
    for layer in &mut model.bert.encoder.layer {
        let lora = layer.inserts.lora.as_mut().unwrap();
        for d in [&mut lora.query, &mut lora.value].into_iter().flatten() {
            let dims = d.b.dims();
            d.b = Param::from_tensor(Tensor::random(
                dims,
                kiln::burn::tensor::Distribution::Normal(0.0, 0.2),
                &device,
            ));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("adapter");
    kiln::tune::export::export_peft_lora(&model, &tuning, "tiny-bert", &adapter).unwrap();
    let (data, source) = demo::demo_data(None, None).unwrap();
    let job = |out: std::path::PathBuf| crate::import_peft::ImportPeftJob {
        adapter: adapter.clone(),
        model: base.clone(),
        data: data.clone(),
        source: source.clone(),
        out,
    };
    let out = dir.path().join("run");
    let results = run_on(DeviceKind::Flex, job(out.clone())).unwrap().unwrap();
    assert_eq!((results.strategy.as_str(), results.steps), ("lora", 0));
    assert!(results.trainable_params > 0 && results.trainable_params < results.total_params);

    let (loaded, loaded_tuning, config, task) = export::load_run::<A>(&base, &out, "best", &device).unwrap();
    assert_eq!((loaded_tuning.name(), task.short_name()), ("lora".to_string(), "sst2"));
    assert!(config.provenance.is_some());
    let ids = Tensor::<Flex, 2, Int>::from_ints([[2, 11, 23, 37, 3], [2, 5, 8, 3, 0]], &device);
    let mask = Tensor::<Flex, 2, Int>::from_ints([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], &device);
    let logits = |m: &SequenceClassifier<A>| -> Vec<f32> {
        m.valid()
            .forward(ids.clone(), ids.zeros_like(), mask.clone())
            .into_data()
            .to_vec()
            .unwrap()
    };
    let (want, got) = (logits(&model), logits(&loaded));
    let diff = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-5, "{want:?} vs {got:?}");
    assert!(results.final_metrics.values.contains_key("accuracy"));

    let err = run_on(DeviceKind::Flex, job(out.clone())).unwrap().unwrap_err();
    assert!(format!("{err:#}").contains("already holds a run"), "{err:#}");
    let page = kiln::viz::write_report(&out, None).unwrap();
    assert!(std::fs::read_to_string(page).unwrap().contains("lora"));
}

/// A run's provenance names the hub id when its model directory is where the default model
/// is found by id (PEFT exports then name it as `base_model_name_or_path`), and no id for any
/// other directory.
#[test]
fn provenance_names_the_hub_id_of_a_model_found_by_id() {
    use kiln::model::hub::{locate_or_fetch, DEFAULT_MODEL_ID};
    let found = locate_or_fetch(DEFAULT_MODEL_ID, None, true).unwrap();
    let p = crate::experiment::provenance(&found, None, DeviceKind::Flex).unwrap();
    assert_eq!(p.model.id.as_deref(), Some(DEFAULT_MODEL_ID));
    let other = kiln_testkit::fixtures_dir().join("tiny-bert-mlm");
    let p = crate::experiment::provenance(&other, None, DeviceKind::Flex).unwrap();
    assert_eq!(p.model.id, None);
}
