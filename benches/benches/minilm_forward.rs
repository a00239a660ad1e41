//! MiniLM (all-MiniLM-L6-v2) forward pass, batch 32 × seq 128, on the default CPU backend:
//! throughput in sequences per second. The model is located like the rest of kiln
//! (KILN_MODEL_DIR, HF cache, kiln cache, shared/); random weights of the same shape are
//! used when it is absent (timing does not depend on the values).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln::backend::Cpu;
use kiln::burn::prelude::*;
use kiln::burn::tensor::Distribution;
use kiln::model::hub::{locate_model, DEFAULT_MODEL_ID};
use kiln::model::{BertConfig, BertModel, Capture};

fn model() -> BertModel<Cpu> {
    let device = Default::default();
    match locate_model(DEFAULT_MODEL_ID, None) {
        Ok((dir, _)) => BertModel::from_pretrained(dir, false, &device).expect("model loads").0,
        Err(e) => {
            eprintln!("{e}\nbenchmarking random weights of MiniLM's shape instead");
            let config: BertConfig = minilm_shaped_config();
            BertModel::new(&config, false, &device)
        }
    }
}

fn minilm_shaped_config() -> BertConfig {
    BertConfig {
        vocab_size: 30522,
        hidden_size: 384,
        num_hidden_layers: 6,
        num_attention_heads: 12,
        intermediate_size: 1536,
        max_position_embeddings: 512,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        hidden_act: kiln::model::activation::Activation::Gelu,
        hidden_dropout_prob: 0.1,
        attention_probs_dropout_prob: 0.1,
        position_embedding_type: "absolute".into(),
        pad_token_id: 0,
    }
}

fn bench_forward(c: &mut Criterion) {
    let model = model();
    let device = Default::default();
    let mut group = c.benchmark_group("minilm_forward");
    group.sample_size(10);
    for (batch, seq) in [(32usize, 128usize), (32, 32)] {
        let ids = Tensor::<Cpu, 2>::random([batch, seq], Distribution::Uniform(1000.0, 29000.0), &device).int();
        let mask = Tensor::<Cpu, 2, Int>::ones([batch, seq], &device);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("b{batch}_s{seq}"), |b| {
            b.iter(|| {
                let out = model.forward(ids.clone(), None, Some(mask.clone()), Capture::none());
                out.last_hidden_state.into_data()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_forward);
criterion_main!(benches);
