//! Each attention mechanism (causal, batch 1, 8 heads × 64) at sequence lengths 128 … 4096:
//! forward, and forward + backward of `mean(context²)`, on the default CPU backend.
//! `cargo xtask bench attention` measures the same workloads and writes a table.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln::attention::{Attention, AttentionMask, AttentionVariant};
use kiln::backend::Cpu;
use kiln::burn::backend::Autodiff;
use kiln::burn::prelude::*;
use kiln::burn::tensor::Distribution;

const HEADS: usize = 8;
const HEAD_DIM: usize = 64;
const LENGTHS: [usize; 6] = [128, 256, 512, 1024, 2048, 4096];

fn variants() -> Vec<(&'static str, AttentionVariant)> {
    vec![
        ("softmax", AttentionVariant::Softmax),
        ("window64", AttentionVariant::SlidingWindow { window: 64 }),
        ("elu", AttentionVariant::EluLinear),
        (
            "t2r",
            AttentionVariant::T2r {
                features: 32,
                eps: 1e-2,
            },
        ),
        ("performer", AttentionVariant::Performer { features: 64, seed: 0 }),
        ("hedgehog", AttentionVariant::Hedgehog { features: 64 }),
    ]
}

fn inputs<B: Backend>(n: usize) -> [Tensor<B, 4>; 3] {
    let device = Default::default();
    [0, 1, 2].map(|_| Tensor::random([1, HEADS, n, HEAD_DIM], Distribution::Normal(0.0, 1.0), &device))
}

fn bench_forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention_forward");
    group.sample_size(10);
    for (name, variant) in variants() {
        let mechanism = variant.build::<Cpu>(HEADS, HEAD_DIM, 0.0, &Default::default());
        for n in LENGTHS {
            let [q, k, v] = inputs::<Cpu>(n);
            let mask = AttentionMask::none().with_causal(true);
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    mechanism
                        .attend(q.clone(), k.clone(), v.clone(), &mask, false)
                        .context
                        .into_data()
                })
            });
        }
    }
    group.finish();
}

fn bench_backward(c: &mut Criterion) {
    type Ad = Autodiff<Cpu>;
    let mut group = c.benchmark_group("attention_forward_backward");
    group.sample_size(10);
    for (name, variant) in variants() {
        let mechanism = variant.build::<Ad>(HEADS, HEAD_DIM, 0.0, &Default::default());
        for n in LENGTHS {
            let [q, k, v] = inputs::<Ad>(n);
            let mask = AttentionMask::none().with_causal(true);
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    let out = mechanism.attend(
                        q.clone().require_grad(),
                        k.clone().require_grad(),
                        v.clone().require_grad(),
                        &mask,
                        false,
                    );
                    out.context.powi_scalar(2).mean().backward()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_forward, bench_backward);
criterion_main!(benches);
