//! Backend conformance: the same PyTorch parity checks (MiniLM sentences and pairs, tiny
//! GPT-2), the same three-step AdamW training parity, and element-wise agreement of a full
//! MiniLM gradient with the Flex backend's, on every backend compiled in. Adding a backend is
//! one `conformance!` line (behind its feature).
//!
//! Tolerances: forward and loss/gradient-norm checks use the reference tolerances on CPU
//! backends and [`GPU_SLACK`]× looser ones on GPUs. *Parameters after three AdamW steps* are
//! ill-conditioned: ~0.4 % of the gradient elements are below Adam's ε = 1e-8, where f32
//! rounding (≈ 1e-8 absolute here) decides their sign, and Adam turns each into an update of up
//! to `lr`. Flex lands within 3e-6 of PyTorch; NdArray differs by 1.0e-4 on two of nine
//! tensors. So backends other than Flex are held to `3·lr` there, and the element-wise
//! gradient check (`gradients_agree_with_flex`, every parameter of one MiniLM step, within
//! 2e-3 of each tensor's largest gradient) carries the precision. Measured NdArray vs Flex:
//! 9.0e-4 at worst (layer 2 key weights, whose gradient sums cancelling terms over queries) —
//! larger than f32 summation order alone explains; which backend is closer to
//! PyTorch element by element is not yet known (the reference stores norms, not gradients).
//!
//! The references are the committed slices under `fixtures/reference`; the model comes through
//! the demo's lookup and one-time fetch (`kiln::model::hub::locate_or_fetch`).

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use kiln::model::hub::{locate_or_fetch, DEFAULT_MODEL_ID};
use kiln::model::parity::{bert_parity, gpt2_parity, ReferenceFile, Tolerances};
use kiln::model::{BertModel, Gpt2Model};
use kiln::tune::train_parity::{train_step_parity, TrainParityConfig};

/// Tolerance multiplier for GPU backends.
#[allow(dead_code)]
const GPU_SLACK: f64 = 50.0;

fn reference(rel: &str) -> std::path::PathBuf {
    kiln_testkit::reference(rel)
}

fn model_dir() -> std::path::PathBuf {
    locate_or_fetch(DEFAULT_MODEL_ID, None, true).unwrap_or_else(|e| panic!("{e}"))
}

fn tolerances(slack: f64) -> Tolerances {
    let t = Tolerances::default();
    Tolerances {
        hidden: t.hidden * slack,
        attention: t.attention * slack,
        cosine: 1.0 - (1.0 - t.cosine) * slack,
    }
}

fn check_rows(what: &str, rows: &[kiln::model::parity::ParityRow], expected: usize) {
    assert_eq!(rows.len(), expected, "{what}: every reference tensor must be compared");
    let worst = rows
        .iter()
        .filter(|r| r.metric == "max_abs")
        .map(|r| r.value)
        .fold(0.0, f64::max);
    println!("{what}: {} tensors, worst max |diff| {worst:.2e}", rows.len());
    let bad: Vec<_> = rows.iter().filter(|r| !r.ok).collect();
    assert!(bad.is_empty(), "{what}: {bad:?}");
}

fn forward_parity<B: Backend>(device: &B::Device, slack: f64) {
    let model_dir = model_dir();
    let (bert, _) = BertModel::<B>::from_pretrained(&model_dir, false, device).unwrap();
    for file in ["minilm/reference.safetensors", "minilm/reference_pairs.safetensors"] {
        let reference = ReferenceFile::open(reference(file)).unwrap();
        let rows = bert_parity(&bert, &reference, tolerances(slack), device).unwrap();
        check_rows(file, &rows, 14);
    }
    let (gpt, _) = Gpt2Model::<B>::from_pretrained(reference("gpt2-tiny"), device).unwrap();
    let reference = ReferenceFile::open(reference("gpt2-tiny/reference.safetensors")).unwrap();
    let rows = gpt2_parity(&gpt, &reference, tolerances(slack), device).unwrap();
    check_rows("gpt2-tiny", &rows, 8);
}

fn training_parity<B: burn::tensor::backend::AutodiffBackend>(device: &B::Device, slack: f64, not_flex: bool) {
    let model_dir = model_dir();
    let reference = ReferenceFile::open(reference("minilm-train-step/reference.safetensors")).unwrap();
    let base = TrainParityConfig::default();
    let cfg = TrainParityConfig {
        tol_loss: base.tol_loss * slack,
        tol_grad_norm_rel: base.tol_grad_norm_rel * slack,
        tol_param: if not_flex {
            3.0 * base.lr
        } else {
            base.tol_param * slack
        },
        ..base
    };
    let rows = train_step_parity::<B>(&model_dir, &reference, cfg, device).unwrap();
    assert_eq!(rows.len(), 15);
    let bad: Vec<_> = rows.iter().filter(|r| !r.ok).collect();
    assert!(bad.is_empty(), "train-step parity: {bad:?}");
}

/// Every parameter's gradient of one MiniLM classification step (the train-step reference's
/// batch and head), by path.
fn step_gradients<B: burn::tensor::backend::AutodiffBackend>() -> Vec<(String, Vec<f32>)> {
    use burn::optim::GradientsParams;
    use burn::prelude::*;
    use burn::tensor::TensorData;
    use kiln::tune::classifier::{SequenceClassifier, Targets};
    let device = Default::default();
    let r = ReferenceFile::open(reference("minilm-train-step/reference.safetensors")).unwrap();
    let dir = model_dir();
    let tensor = |name: &str| {
        let (shape, values) = r.f32(name).unwrap();
        TensorData::new(values.to_vec(), shape.to_vec())
    };
    let (mut m, _) = SequenceClassifier::<B>::from_pretrained(&dir, 2, &device).unwrap();
    m.set_dropout(0.0);
    m.set_head(
        Tensor::from_data(tensor("init.pooler.dense.weight"), &device),
        Tensor::from_data(tensor("init.pooler.dense.bias"), &device),
        Tensor::from_data(tensor("init.classifier.weight"), &device),
        Tensor::from_data(tensor("init.classifier.bias"), &device),
    );
    let labels = r.i64("labels").unwrap().1.to_vec();
    let n = labels.len();
    let targets = Targets::Classes(Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [n]), &device));
    let ids = |name: &str| r.int_tensor::<B>(name, &device).unwrap();
    let logits = m.forward(ids("input_ids"), ids("token_type_ids"), ids("attention_mask"));
    let grads = GradientsParams::from_grads(m.loss(logits, &targets).backward(), &m);
    kiln::tune::params::param_infos(&m)
        .into_iter()
        .filter_map(|info| {
            let data = match info.shape.len() {
                1 => grads.get::<B::InnerBackend, 1>(info.id).map(|g| g.into_data()),
                2 => grads.get::<B::InnerBackend, 2>(info.id).map(|g| g.into_data()),
                _ => None,
            }?;
            Some((info.path, data.convert::<f32>().to_vec::<f32>().unwrap()))
        })
        .collect()
}

/// Max over tensors of `max |g − g_flex| / max |g_flex|` (tensors whose gradient is zero up
/// to rounding are skipped).
#[allow(dead_code)]
fn gradient_agreement<B: burn::tensor::backend::AutodiffBackend>() -> f64 {
    let reference = step_gradients::<Autodiff<burn::backend::Flex>>();
    let got = step_gradients::<B>();
    assert_eq!(got.len(), reference.len(), "same parameters with gradients");
    let mut worst = 0.0f64;
    for ((path, g), (_, want)) in got.iter().zip(&reference) {
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
        let diff = g.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        if scale < 1e-9 {
            // Mathematically zero (key biases: softmax ignores a shift of every score): noise.
            continue;
        }
        let rel = f64::from(diff / scale);
        if rel > worst {
            println!("{path}: max |g| {scale:.3e}, max |Δg| {diff:.3e}");
        }
        worst = worst.max(rel);
    }
    worst
}

macro_rules! parity_tests {
    ($backend:ty, $slack:expr, $not_flex:expr) => {
        #[test]
        fn forward_matches_pytorch() {
            forward_parity::<$backend>(&Default::default(), $slack);
        }

        #[test]
        fn three_adamw_steps_match_pytorch() {
            training_parity::<Autodiff<$backend>>(&Default::default(), $slack, $not_flex);
        }
    };
}

macro_rules! conformance {
    ($name:ident, $backend:ty, $slack:expr) => {
        mod $name {
            use super::*;
            parity_tests!($backend, $slack, false);
        }
    };
    ($name:ident, $backend:ty, $slack:expr, compare_gradients) => {
        mod $name {
            use super::*;
            parity_tests!($backend, $slack, true);

            #[test]
            fn gradients_agree_with_flex() {
                let worst = gradient_agreement::<Autodiff<$backend>>();
                println!(
                    "{}: worst per-tensor gradient difference {worst:.2e} of the tensor's max",
                    stringify!($name)
                );
                assert!(worst <= 2e-3, "{worst:e}");
            }
        }
    };
}

conformance!(flex, burn::backend::Flex, 1.0);
conformance!(ndarray, burn::backend::NdArray, 1.0, compare_gradients);
#[cfg(feature = "wgpu")]
conformance!(wgpu, burn::backend::Wgpu, GPU_SLACK, compare_gradients);
#[cfg(feature = "cuda")]
conformance!(cuda, burn::backend::Cuda, GPU_SLACK, compare_gradients);
