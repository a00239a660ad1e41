//! `cargo xtask fuzz [--cases N] [--targets a,b]`: property-based fuzzing of every reader of
//! user-supplied files, on stable Rust (proptest's runner, no cargo-fuzz/nightly needed).
//!
//! Each target feeds its reader inputs drawn half from arbitrary bytes and half from
//! structured mutations of valid seeds (byte flips and overwrites, insertions of arbitrary or
//! "interesting" bytes — quotes, braces, huge numbers — deletions, truncation, duplicated
//! slices), runs the reader exactly as the CLI would (files written into a temporary
//! directory), and counts panics: a reader may reject an input with an error, never panic.
//! Panicking inputs are saved under `--failures` for replay; the command fails if any.
//!
//! Targets: `glue-tsv` (the GLUE TSV reader, every task), `model-config` (config.json →
//! validated config), `safetensors` (a model directory whose weights file is fuzzed, loaded
//! into a tiny BERT), `tokenizer` (tokenizer.json, then encoding a pair), `experiment-toml`
//! (experiment file → validated train config and strategy), `run-files` (`metrics.jsonl`,
//! `results.json`, `analysis/analysis.json`, `dynamics.jsonl`, `trainable.json`,
//! `transfer.jsonl` → the report's data), `plots` (the same files → SVG/PNG plots),
//! `peft-adapter` (a PEFT LoRA
//! adapter directory imported onto a tiny classifier).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Result};
use kiln::burn::backend::Flex;
use kiln::data::{GlueTask, OnMalformed, TextInput, TextTokenizer};
use kiln::model::{BertConfig, BertModel};
use kiln::tune::classifier::SequenceClassifier;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Arguments of `cargo xtask fuzz`.
#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Cases per target.
    #[arg(long, default_value_t = 100_000)]
    pub cases: u32,
    /// Targets to run (default: all).
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Where panicking inputs are saved.
    #[arg(long, default_value = "fuzz-failures")]
    pub failures: PathBuf,
    /// Seed of the case generator (same seed, same cases).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs a reader on one input inside a scratch directory.
type Reader = Box<dyn Fn(&[u8], &Path)>;

/// One reader under test: valid seeds to mutate, and the reader.
struct Target {
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    run: Reader,
}

const TINY_BERT: &str = r#"{"model_type": "bert", "vocab_size": 40, "hidden_size": 8, "num_hidden_layers": 1,
  "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 16, "type_vocab_size": 2}"#;

/// A tiny WordPiece tokenizer (BERT template) as tokenizer.json text.
fn tiny_tokenizer_json() -> String {
    let words = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "film", "good", "bad", "##s", "is",
    ];
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i.into()))
        .collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]}, "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": vocab}
    })
    .to_string()
}

fn tiny_bert() -> (BertModel<Flex>, BertConfig) {
    let config: BertConfig = serde_json::from_str(TINY_BERT).expect("valid tiny config");
    (BertModel::new(&config, true, &Default::default()), config)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("scratch dir");
    }
    std::fs::write(path, bytes).expect("scratch file");
}

/// A tiny classifier's weights in HF names (`bert.*`, `classifier.*`), as checkpoints hold them.
fn tiny_weights() -> Vec<u8> {
    let (bert, config) = tiny_bert();
    let model = SequenceClassifier::new_head(bert, &config, 2, &Default::default());
    kiln::tune::checkpoint::model_bytes(&model).expect("tiny weights")
}

fn targets() -> Vec<Target> {
    let weights = tiny_weights();
    let tokenizer = tiny_tokenizer_json();
    let mut out = vec![
        Target {
            name: "glue-tsv",
            seeds: vec![
                b"\x01index\tsentence1\tsentence2\tlabel\n0\ta b\tc d\tentailment\n1\te\tf\tnot_entailment\n".to_vec(),
                b"\x04Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said\tHi\n".to_vec(),
                b"\x03genre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n0\tg\tf\ty\to\ts\ts\ta\tb\t4.2\n".to_vec(),
                b"\x00gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n".to_vec(),
            ],
            run: Box::new(|bytes, _| {
                let tasks = GlueTask::ALL;
                let (task, text) = match bytes.split_first() {
                    Some((t, rest)) => (tasks[*t as usize % tasks.len()], rest),
                    None => (tasks[0], bytes),
                };
                let text = String::from_utf8_lossy(text);
                for on in [OnMalformed::Error, OnMalformed::Skip] {
                    let _ = task.parse_tsv(&text, Path::new("fuzz.tsv"), on);
                }
            }),
        },
        Target {
            name: "model-config",
            seeds: vec![
                TINY_BERT.as_bytes().to_vec(),
                br#"{"model_type": "gpt2", "vocab_size": 50, "n_embd": 8, "n_layer": 1, "n_head": 2, "n_positions": 16}"#.to_vec(),
            ],
            run: Box::new(|bytes, dir| {
                write(dir, "config.json", bytes);
                if let Ok(c) = BertConfig::from_file(dir.join("config.json")) {
                    let _ = c.validate();
                }
                if let Ok(c) = kiln::model::GptConfig::from_file(dir.join("config.json")) {
                    let _ = c.validate();
                }
            }),
        },
        Target {
            name: "safetensors",
            seeds: vec![weights],
            run: Box::new(|bytes, dir| {
                // The pretrained-model path and the checkpoint (resume) path.
                write(dir, "config.json", TINY_BERT.as_bytes());
                write(dir, "model.safetensors", bytes);
                let _ = BertModel::<Flex>::from_pretrained(dir, true, &Default::default());
                let (bert, config) = tiny_bert();
                let mut model = SequenceClassifier::new_head(bert, &config, 2, &Default::default());
                let _ = kiln::tune::checkpoint::load_model(&mut model, &dir.join("model.safetensors"));
            }),
        },
        Target {
            name: "tokenizer",
            seeds: vec![tokenizer.into_bytes()],
            run: Box::new(|bytes, dir| {
                write(dir, "tokenizer.json", bytes);
                if let Ok(tok) = TextTokenizer::from_file(dir.join("tokenizer.json"), 8) {
                    let _ = tok.encode_batch(&[
                        TextInput::Pair("the good films".into(), "a bad film is".into()),
                        TextInput::Single(String::new()),
                    ]);
                }
            }),
        },
        Target {
            name: "experiment-toml",
            seeds: vec![
                b"[experiment]\nname = \"x\"\ntask = \"rte\"\n[train]\nlr = 2e-5\nepochs = 3\nbatch_size = 16\nmax_length = 128\n[train.adamw]\nweight_decay = 0.01\n".to_vec(),
                b"[experiment]\nname = \"x\"\ntask = \"mrpc\"\n[[train.tuning]]\nkind = \"lora\"\nr = 8\nalpha = 16.0\ntargets = [\"query\", \"re:.*value\"]\n[[train.tuning]]\nkind = \"child_tuning_d\"\nreserve_p = 0.3\n".to_vec(),
            ],
            run: Box::new(|bytes, dir| {
                write(dir, "e.toml", bytes);
                if let Ok(e) = crate::experiment::load(&dir.join("e.toml"), &[]) {
                    let limits = kiln::tune::validate::ModelLimits {
                        max_positions: 512,
                        num_layers: 6,
                    };
                    let _ = kiln::tune::validate::validate_train(&e.train, &limits);
                    let _ = kiln::tune::strategy::Tuning::new(&e.train.tuning);
                }
            }),
        },
        Target {
            name: "run-files",
            seeds: vec![RUN_FILES_SEED.to_vec()],
            run: Box::new(|bytes, dir| {
                write_run_files(bytes, dir);
                let _ = kiln::viz::report_data(dir, None);
            }),
        },
        Target {
            name: "plots",
            seeds: vec![RUN_FILES_SEED.to_vec()],
            run: Box::new(|bytes, dir| {
                write_run_files(bytes, dir);
                let _ = kiln::viz::plots::write_plots(dir);
            }),
        },
    ];
    // A PEFT LoRA adapter written by kiln's own export, for the import path.
    let adapter = peft_seed();
    out.push(Target {
        name: "peft-adapter",
        seeds: vec![adapter],
        run: Box::new(|bytes, dir| {
            let mut parts = bytes.splitn(2, |b| *b == 0);
            write(dir, "adapter_config.json", parts.next().unwrap_or_default());
            write(dir, "adapter_model.safetensors", parts.next().unwrap_or_default());
            let (bert, config) = tiny_bert();
            let device = Default::default();
            let model = SequenceClassifier::new_head(bert, &config, 2, &device);
            let _ = kiln::tune::export::import_peft_lora(model, dir, &device);
        }),
    });
    out
}

/// `metrics.jsonl`, `results.json`, `analysis/analysis.json`, `dynamics.jsonl`,
/// `trainable.json`, `transfer.jsonl`, separated by NUL bytes.
const RUN_FILES_SEED: &[u8] = b"{\"kind\":\"train\",\"step\":1,\"epoch\":0,\"loss\":0.69,\"lr\":1e-5,\"grad_norm\":1.2,\"seq_per_s\":20.0}\n{\"kind\":\"train\",\"step\":2,\"epoch\":0,\"loss\":0.6,\"lr\":2e-5,\"grad_norm\":1.1,\"seq_per_s\":21.0}\n{\"kind\":\"eval\",\"step\":2,\"epoch\":0,\"metrics\":{\"accuracy\":0.5,\"f1\":0.6}}\n\x00{\"task\":\"rte\",\"final_metrics\":{\"primary\":\"accuracy\",\"values\":{\"accuracy\":0.5}},\"best\":[0.5,2],\"steps\":2,\"wall_time_s\":1.5,\"train_seq_per_s\":20.0,\"peak_rss_mb\":null,\"resumed\":false,\"strategy\":\"full\",\"trainable_params\":10,\"total_params\":10}\x00{\"format\":\"kiln.analysis.v1\",\"task\":\"rte\",\"strategy\":\"full\",\"checkpoint\":\"best\",\"regression\":false,\"num_labels\":2,\"split\":\"dev\",\"examples\":[],\"projection\":{\"of\":\"[CLS] hidden state\",\"k\":10,\"layers\":[]},\"heads\":{\"gate\":[[0.1,0.2],[0.3,0.4]],\"taylor\":[[0.1,0.2],[0.3,0.4]],\"examples\":8,\"pruning\":[{\"pruned\":0,\"share\":0.0,\"metric\":0.5},{\"pruned\":2,\"share\":0.5,\"metric\":0.4}],\"masked_metric\":null,\"metric\":\"accuracy\"},\"instances\":[]}\x00{\"epoch\":0,\"step\":2,\"p_gold\":[0.4,0.7],\"correct\":[false,true]}\n\x00{\"strategy\":\"full\",\"trainable\":10,\"total\":10,\"percent\":100.0,\"per_module\":[[\"embeddings\",10,10]]}\x00{\"kind\":\"transfer\",\"step\":0,\"loss\":1.5}\n";

/// Writes the six run files of a `run-files` / `plots` input (NUL-separated) and a config.
fn write_run_files(bytes: &[u8], dir: &Path) {
    let mut parts = bytes.split(|b| *b == 0);
    write(dir, "config.json", br#"{"task": "rte", "train": {}}"#);
    for name in [
        "metrics.jsonl",
        "results.json",
        "analysis/analysis.json",
        "dynamics.jsonl",
        "trainable.json",
        "transfer.jsonl",
    ] {
        write(dir, name, parts.next().unwrap_or_default());
    }
}

/// `adapter_config.json` NUL `adapter_model.safetensors` of a LoRA adapter on the tiny BERT.
fn peft_seed() -> Vec<u8> {
    use kiln::tune::strategy::Lora;
    use kiln::tune::strategy::{StrategyConfig, Tuning};
    let (bert, config) = tiny_bert();
    let device = Default::default();
    let tuning = Tuning::new(&[StrategyConfig::Lora(Lora {
        r: 2,
        alpha: 4.0,
        dropout: 0.0,
        targets: vec!["query".into(), "value".into()],
    })])
    .expect("valid LoRA");
    let model = tuning
        .insert(SequenceClassifier::new_head(bert, &config, 2, &device), &device)
        .expect("fits");
    let dir = tempfile::tempdir().expect("scratch");
    kiln::tune::export::export_peft_lora(&model, &tuning, "tiny-bert", dir.path()).expect("export");
    let mut bytes = std::fs::read(dir.path().join("adapter_config.json")).expect("written");
    bytes.push(0);
    bytes.extend(std::fs::read(dir.path().join("adapter_model.safetensors")).expect("written"));
    bytes
}

/// Byte strings a parser treats specially.
const INTERESTING: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\n",
    b"\t",
    b"\\",
    b"\x00",
    b"\xff",
    b"-1",
    b"1e309",
    b"18446744073709551616",
    b"NaN",
    b"inf",
    b"-0",
    b"9999999999",
    b"null",
    b"true",
    b"=",
    b"[[",
    b"\xef\xbb\xbf",
    b"\xf0\x9f\x98\x80",
];

#[derive(Debug, Clone)]
enum Op {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Interesting(usize, usize),
    Delete(usize, usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(p, m)| Op::Flip(p, m)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Op::Set(p, b)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(p, v)| Op::Insert(p, v)),
        (any::<usize>(), any::<usize>()).prop_map(|(p, i)| Op::Interesting(p, i)),
        (any::<usize>(), 1usize..64).prop_map(|(p, n)| Op::Delete(p, n)),
        any::<usize>().prop_map(Op::Truncate),
        (any::<usize>(), 1usize..64).prop_map(|(p, n)| Op::Duplicate(p, n)),
    ]
}

fn mutate(mut b: Vec<u8>, ops: &[Op]) -> Vec<u8> {
    for op in ops {
        let n = b.len();
        let at = |p: usize| if n == 0 { 0 } else { p % (n + 1) };
        match op {
            Op::Flip(p, m) if n > 0 => b[p % n] ^= m,
            Op::Set(p, v) if n > 0 => b[p % n] = *v,
            Op::Flip(..) | Op::Set(..) => {}
            Op::Insert(p, v) => {
                let i = at(*p);
                b.splice(i..i, v.iter().copied());
            }
            Op::Interesting(p, k) => {
                let i = at(*p);
                b.splice(i..i, INTERESTING[k % INTERESTING.len()].iter().copied());
            }
            Op::Delete(p, len) => {
                let i = at(*p);
                let end = (i + len).min(n);
                b.drain(i..end);
            }
            Op::Truncate(p) => b.truncate(at(*p)),
            Op::Duplicate(p, len) => {
                let i = at(*p);
                let end = (i + len).min(n);
                let slice = b[i..end].to_vec();
                b.splice(end..end, slice);
            }
        }
    }
    b
}

/// Runs one target; returns (cases, panics).
fn fuzz_target(t: &Target, cases: u32, seed: u64, failures: &Path) -> Result<(u32, u32)> {
    let seeds = t.seeds.clone();
    let n_seeds = seeds.len();
    let input = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        (0..n_seeds, proptest::collection::vec(op(), 1..8)).prop_map(move |(s, ops)| mutate(seeds[s].clone(), &ops)),
    ];
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    seed_bytes[8..16].copy_from_slice(&(t.name.len() as u64).to_le_bytes());
    for (i, b) in t.name.bytes().enumerate() {
        seed_bytes[16 + i % 16] ^= b;
    }
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 0,
            ..Config::default()
        },
        proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &seed_bytes),
    );
    let panics = std::cell::Cell::new(0u32);
    let done = std::cell::Cell::new(0u32);
    let scratch = tempfile::tempdir()?;
    let start = Instant::now();
    let result = runner.run(&input, |bytes| {
        let case_dir = scratch.path().join("case");
        let _ = std::fs::remove_dir_all(&case_dir);
        std::fs::create_dir_all(&case_dir).expect("scratch dir");
        if catch_unwind(AssertUnwindSafe(|| (t.run)(&bytes, &case_dir))).is_err() {
            let k = panics.get();
            panics.set(k + 1);
            if k < 20 {
                std::fs::create_dir_all(failures).expect("failures dir");
                let _ = std::fs::write(failures.join(format!("{}-{k}.bin", t.name)), &bytes);
            }
        }
        let d = done.get() + 1;
        done.set(d);
        if d.is_multiple_of(10_000) {
            eprintln!(
                "  {}: {d}/{cases} cases, {} panics, {:.0} s",
                t.name,
                panics.get(),
                start.elapsed().as_secs_f64()
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        bail!("{}: runner failed: {e}", t.name);
    }
    Ok((done.get(), panics.get()))
}

/// `cargo xtask fuzz`.
pub fn fuzz(args: FuzzArgs) -> Result<()> {
    let all = targets();
    let chosen: Vec<&Target> = if args.targets.is_empty() {
        all.iter().collect()
    } else {
        let mut v = Vec::new();
        for name in &args.targets {
            match all.iter().find(|t| t.name == name) {
                Some(t) => v.push(t),
                None => bail!(
                    "unknown fuzz target {name:?} (targets: {})",
                    all.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
                ),
            }
        }
        v
    };
    // Panics are counted, not printed: keep the last message for the summary.
    let last_panic = Arc::new(Mutex::new(None::<String>));
    let sink = Arc::clone(&last_panic);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        *sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(info.to_string());
    }));
    println!("| target | cases | panics | seconds |\n|---|---|---|---|");
    let mut total_panics = 0;
    for t in chosen {
        let start = Instant::now();
        let (cases, panics) = fuzz_target(t, args.cases, args.seed, &args.failures)?;
        println!(
            "| {} | {cases} | {panics} | {:.0} |",
            t.name,
            start.elapsed().as_secs_f64()
        );
        total_panics += panics;
    }
    std::panic::set_hook(previous);
    if total_panics > 0 {
        let last = last_panic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default();
        bail!(
            "{total_panics} panicking inputs (saved under {}); last: {last}",
            args.failures.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds themselves load cleanly (else mutating them explores only error paths).
    #[test]
    fn seeds_are_valid_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let (bert, config) = tiny_bert();
        write(dir.path(), "model.safetensors", &tiny_weights());
        let mut model = SequenceClassifier::new_head(bert, &config, 2, &Default::default());
        kiln::tune::checkpoint::load_model(&mut model, &dir.path().join("model.safetensors")).unwrap();
        write(dir.path(), "tokenizer.json", tiny_tokenizer_json().as_bytes());
        let tok = TextTokenizer::from_file(dir.path().join("tokenizer.json"), 8).unwrap();
        let enc = tok
            .encode_batch(&[TextInput::Pair("the good films".into(), "a bad film".into())])
            .unwrap();
        assert_eq!(&enc.input_ids[..4], &[2, 5, 8, 7]);
        let peft = peft_seed();
        let mut parts = peft.splitn(2, |b| *b == 0);
        write(dir.path(), "adapter_config.json", parts.next().unwrap());
        write(dir.path(), "adapter_model.safetensors", parts.next().unwrap());
        let device = Default::default();
        let model = SequenceClassifier::<Flex>::new_head(BertModel::new(&config, true, &device), &config, 2, &device);
        kiln::tune::export::import_peft_lora(model, dir.path(), &device).unwrap();
        let run = tempfile::tempdir().unwrap();
        write_run_files(RUN_FILES_SEED, run.path());
        let data = kiln::viz::report_data(run.path(), None).unwrap();
        assert_eq!(data["train"].as_array().unwrap().len(), 2);
        let plots = kiln::viz::plots::write_plots(run.path()).unwrap();
        assert!(
            plots.len() >= 8,
            "loss, lr, dev metrics, pruning, head importance (svg + png): {plots:?}"
        );
    }

    /// 300 cases of every target: CI's share of the fuzzing (`cargo xtask fuzz` runs
    /// 100,000 cases per target).
    #[test]
    fn every_reader_survives_mutated_and_random_inputs_without_panicking() {
        let failures = tempfile::tempdir().unwrap();
        for t in targets() {
            let (cases, panics) = fuzz_target(&t, 300, 7, failures.path()).unwrap();
            assert_eq!((cases, panics), (300, 0), "{}", t.name);
        }
    }
}
