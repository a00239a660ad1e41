//! LoRA adapters in PEFT's layout (out and back in) and whole models in Hugging Face's layout.

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::TensorData;
use kiln_model::{BertConfig, BertModel};
use kiln_tune::checkpoint::load_model;
use kiln_tune::classifier::SequenceClassifier;
use kiln_tune::export::{export_hf_model, export_peft_lora, import_peft_lora, merge_lora, PeftLoraConfig};
use kiln_tune::strategy::Lora;
use kiln_tune::strategy::{StrategyConfig, Tuning};

type A = Autodiff<Flex>;

static BACKEND_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

const CONFIG: &str = r#"{"vocab_size": 100, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 32, "max_position_embeddings": 64, "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0, "model_type": "bert"}"#;

fn tiny(seed: u64) -> SequenceClassifier<A> {
    let device = Default::default();
    A::seed(&device, seed);
    let config: BertConfig = serde_json::from_str(CONFIG).unwrap();
    SequenceClassifier::new_head(BertModel::new(&config, true, &device), &config, 3, &device)
}

fn logits(m: &SequenceClassifier<A>) -> Vec<f32> {
    let device = Default::default();
    let m = m.valid();
    let ids: Vec<i64> = (0..12).map(|i| (i * 37 % 97 + 1) as i64).collect();
    let ids = Tensor::<Flex, 2, Int>::from_data(TensorData::new(ids, [2, 6]), &device);
    m.forward(ids.clone(), ids.zeros_like(), ids.ones_like())
        .into_data()
        .to_vec()
        .unwrap()
}

/// A LoRA model whose deltas are non-zero (B is zero at init: perturb it).
fn trained_lora(targets: &[&str]) -> (SequenceClassifier<A>, Tuning) {
    let device = Default::default();
    let tuning = Tuning::new(&[StrategyConfig::Lora(Lora {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: targets.iter().map(|s| s.to_string()).collect(),
    })])
    .unwrap();
    let mut m = tuning.insert(tiny(1), &device).unwrap();
    for layer in &mut m.bert.encoder.layer {
        let l = layer.inserts.lora.as_mut().unwrap();
        for d in [
            &mut l.query,
            &mut l.key,
            &mut l.value,
            &mut l.attention_output,
            &mut l.intermediate,
            &mut l.output,
        ]
        .into_iter()
        .flatten()
        {
            let dims = d.b.dims();
            d.b = burn::module::Param::from_tensor(Tensor::random(
                dims,
                burn::tensor::Distribution::Normal(0.0, 0.1),
                &device,
            ));
        }
    }
    (m, tuning)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn peft_round_trip_reproduces_logits_with_peft_key_names() {
    let _rng = kiln_testkit::rng_lock();
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    let (model, tuning) = trained_lora(&["query", "value", "re:.*intermediate.*"]);
    let dir = tempfile::tempdir().unwrap();
    export_peft_lora(&model, &tuning, "sentence-transformers/all-MiniLM-L6-v2", dir.path()).unwrap();

    let cfg: PeftLoraConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((cfg.peft_type.as_str(), cfg.r, cfg.lora_alpha), ("LORA", 4, 8.0));
    assert_eq!(
        cfg.target_modules,
        ["attention.self.query", "attention.self.value", "intermediate.dense"]
    );
    let bytes = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let a = st
        .tensor("base_model.model.bert.encoder.layer.1.attention.self.query.lora_A.weight")
        .unwrap();
    assert_eq!(a.shape(), [4, 16]);
    let b = st
        .tensor("base_model.model.bert.encoder.layer.0.intermediate.dense.lora_B.weight")
        .unwrap();
    assert_eq!(b.shape(), [32, 4]);
    assert_eq!(
        st.tensor("base_model.model.classifier.weight").unwrap().shape(),
        [3, 16]
    );
    // 2 layers × 3 targets × (A, B) + head and pooler, weight and bias each.
    assert_eq!(st.len(), 2 * 3 * 2 + 4);

    let (imported, stored) = import_peft_lora(tiny(1), dir.path(), &device).unwrap();
    assert_eq!(stored.name(), "lora");
    // Equal up to summation order (the transposed tensors take another GEMM layout).
    assert!(max_diff(&logits(&imported), &logits(&model)) < 1e-6);
    // A different base gives different logits: the adapter alone does not carry the model.
    let (other, _) = import_peft_lora(tiny(2), dir.path(), &device).unwrap();
    assert_ne!(logits(&other), logits(&model));
}

/// An adapter saved in half precision (PEFT from a `.half()` or bf16 model) imports: the
/// logits are those of the f32 adapter rounded to 11 (f16) or 8 (bf16) significant bits.
#[test]
fn half_precision_peft_adapters_import() {
    let _rng = kiln_testkit::rng_lock();
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    let (model, tuning) = trained_lora(&["query", "value"]);
    let dir = tempfile::tempdir().unwrap();
    export_peft_lora(&model, &tuning, "base", dir.path()).unwrap();
    let path = dir.path().join("adapter_model.safetensors");
    let f32_bytes = std::fs::read(&path).unwrap();
    let (f32_model, _) = import_peft_lora(tiny(1), dir.path(), &device).unwrap();
    let want = logits(&f32_model);
    let spread = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    for (dtype, to_bytes, tol) in [
        (
            safetensors::Dtype::F16,
            (|x: f32| half::f16::from_f32(x).to_le_bytes()) as fn(f32) -> [u8; 2],
            2e-3,
        ),
        (
            safetensors::Dtype::BF16,
            |x: f32| half::bf16::from_f32(x).to_le_bytes(),
            2e-2,
        ),
    ] {
        let st = safetensors::SafeTensors::deserialize(&f32_bytes).unwrap();
        let converted: Vec<(String, Vec<usize>, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let data = view
                    .data()
                    .chunks_exact(4)
                    .flat_map(|b| to_bytes(f32::from_le_bytes(b.try_into().unwrap())))
                    .collect();
                (name, view.shape().to_vec(), data)
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = converted
            .iter()
            .map(|(n, shape, data)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(dtype, shape.clone(), data).unwrap(),
                )
            })
            .collect();
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        let (half_model, _) = import_peft_lora(tiny(1), dir.path(), &device).unwrap();
        let got = logits(&half_model);
        let diff = max_diff(&got, &want);
        assert!(
            diff > 0.0 && diff < tol * spread.max(1.0),
            "{dtype:?}: {diff} (logits up to {spread})"
        );
    }
}

/// A restricted strategy's tuned file restores the run's pooler, which no such strategy
/// trains: on a checkpoint without one (all-MiniLM-L6-v2) the pooler is drawn fresh for the
/// run, so a restore onto a base with another pooler must still give the run's logits (before
/// the pooler was saved, `lens analyse` and `export` of a LoRA run saw a different one).
#[test]
fn a_tuned_checkpoint_restores_the_pooler_its_run_drew() {
    let _rng = kiln_testkit::rng_lock();
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    let (model, tuning) = trained_lora(&["query"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tuned.safetensors");
    kiln_tune::strategy::save_tuned(&model, &tuning, &file).unwrap();
    // The same encoder with another pooler and head, as a fresh process would draw them.
    let mut base = tiny(1);
    let random =
        |shape: [usize; 2]| Tensor::<A, 2>::random(shape, burn::tensor::Distribution::Normal(0.0, 0.5), &device);
    base.set_head(
        random([16, 16]),
        Tensor::zeros([16], &device),
        random([3, 16]),
        Tensor::zeros([3], &device),
    );
    let fresh = tuning.insert(base, &device).unwrap();
    assert_ne!(logits(&fresh), logits(&model));
    let restored = kiln_tune::strategy::load_tuned(fresh, &tuning, &file).unwrap();
    assert!(max_diff(&logits(&restored), &logits(&model)) < 1e-6);
}

#[test]
fn peft_import_rejects_what_it_cannot_represent() {
    let _rng = kiln_testkit::rng_lock();
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    let (model, tuning) = trained_lora(&["query"]);
    let dir = tempfile::tempdir().unwrap();
    export_peft_lora(&model, &tuning, "base", dir.path()).unwrap();
    let path = dir.path().join("adapter_config.json");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("\"use_rslora\": false", "\"use_rslora\": true")).unwrap();
    let err = import_peft_lora(tiny(1), dir.path(), &device).unwrap_err().to_string();
    assert!(err.contains("rsLoRA"), "{err}");
    // Rank in the config disagreeing with the tensors: a shape error naming the key.
    std::fs::write(&path, good.replace("\"r\": 4", "\"r\": 2")).unwrap();
    let err = import_peft_lora(tiny(1), dir.path(), &device).unwrap_err().to_string();
    assert!(err.contains("lora_A.weight") && err.contains("shape"), "{err}");
}

#[test]
fn merged_lora_exports_as_a_plain_hf_classifier() {
    let _rng = kiln_testkit::rng_lock();
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let (model, _) = trained_lora(&["re:.*"]);
    let want = logits(&model);
    let merged = merge_lora(model);
    assert!(merged.bert.encoder.layer.iter().all(|l| l.inserts.lora.is_none()));
    assert!(max_diff(&logits(&merged), &want) < 1e-5);

    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("config.json"), CONFIG).unwrap();
    std::fs::write(src.path().join("tokenizer.json"), "{}").unwrap();
    let out = tempfile::tempdir().unwrap();
    export_hf_model(merged, &src.path().join("config.json"), src.path(), out.path()).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "BertForSequenceClassification");
    assert_eq!(cfg["num_labels"], 3);
    assert!(out.path().join("tokenizer.json").exists());
    // Loading the exported weights into an unrelated model reproduces the logits.
    let mut fresh = tiny(77);
    load_model(&mut fresh, &out.path().join("model.safetensors")).unwrap();
    assert!(max_diff(&logits(&fresh), &want) < 1e-5);
}
