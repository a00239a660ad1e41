//! `cargo xtask bench matmul`: square-matmul throughput of each compiled CPU backend — the
//! measurement behind the default backend choice (docs/backends.md).

use std::time::Instant;

use kiln::backend::{BackendJob, DeviceKind};
use kiln::burn::prelude::*;
use kiln::burn::tensor::backend::AutodiffBackend;
use kiln::burn::tensor::Distribution;

pub struct MatmulJob {
    pub sizes: Vec<usize>,
    pub repeats: usize,
}

/// (size, GFLOP/s) per size: best of `repeats` timed runs after one warm-up.
impl BackendJob for MatmulJob {
    type Output = Vec<(usize, f64)>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _kind: DeviceKind) -> Self::Output {
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        self.sizes
            .iter()
            .map(|&n| {
                let a = Tensor::<I<B>, 2>::random([n, n], Distribution::Normal(0.0, 1.0), &device);
                let b = Tensor::<I<B>, 2>::random([n, n], Distribution::Normal(0.0, 1.0), &device);
                let _ = a.clone().matmul(b.clone()).into_data();
                let best = (0..self.repeats)
                    .map(|_| {
                        let t = Instant::now();
                        let c = a.clone().matmul(b.clone());
                        let _ = c.into_data();
                        t.elapsed().as_secs_f64()
                    })
                    .fold(f64::INFINITY, f64::min);
                (n, 2.0 * (n as f64).powi(3) / best / 1e9)
            })
            .collect()
    }
}

/// Median wall time of `iters` calls after one warm-up.
pub(crate) fn median_time(run: impl Fn(), iters: usize) -> f64 {
    run();
    let mut times: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// all-MiniLM-L6-v2's shape (for random-weight timing when the model is absent).
pub fn minilm_shaped_config() -> kiln::model::BertConfig {
    serde_json::from_value(serde_json::json!({
        "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
        "intermediate_size": 1536, "max_position_embeddings": 512
    }))
    .expect("valid config")
}

/// Wall time of the operations of one MiniLM layer at `[batch, seq]` (`cargo xtask bench ops`):
/// where the forward pass spends its time.
pub struct OpsJob {
    pub batch: usize,
    pub seq: usize,
    pub iters: usize,
}

impl BackendJob for OpsJob {
    type Output = Vec<(&'static str, f64)>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _kind: DeviceKind) -> Self::Output {
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        use kiln::attention::{Attention, AttentionKind, AttentionMask};
        use kiln::burn::tensor::activation::softmax;
        use kiln::model::activation::gelu_exact;
        use kiln::model::layers::{layer_norm, linear, linear_tokens};
        let (b, s, h, heads, ff) = (self.batch, self.seq, 384, 12, 1536);
        let normal = Distribution::Normal(0.0, 1.0);
        let x = Tensor::<I<B>, 3>::random([b, s, h], normal, &device);
        let inner = Tensor::<I<B>, 3>::random([b, s, ff], normal, &device);
        let q = Tensor::<I<B>, 4>::random([b, heads, s, h / heads], normal, &device);
        let scores = Tensor::<I<B>, 4>::random([b, heads, s, s], normal, &device);
        let lin_h = linear::<I<B>>(h, h, 0.02, &device);
        let lin_ff = linear::<I<B>>(h, ff, 0.02, &device);
        let ln = layer_norm::<I<B>>(h, 1e-12, &device);
        let mask = AttentionMask::<I<B>>::from_attention_mask(Tensor::ones([b, s], &device));
        let mech = AttentionKind::default();
        let time = |f: &dyn Fn()| {
            f();
            let t = Instant::now();
            for _ in 0..self.iters.max(1) {
                f();
            }
            t.elapsed().as_secs_f64() / self.iters.max(1) as f64
        };
        vec![
            (
                "linear h->h (x4/layer)",
                time(&|| drop(linear_tokens(&lin_h, x.clone()).into_data())),
            ),
            (
                "linear h->4h (x2/layer)",
                time(&|| drop(linear_tokens(&lin_ff, x.clone()).into_data())),
            ),
            (
                "linear h->4h, 3-D input",
                time(&|| drop(lin_ff.forward(x.clone()).into_data())),
            ),
            (
                "gelu_exact [b,s,4h]",
                time(&|| drop(gelu_exact(inner.clone()).into_data())),
            ),
            ("erf [b,s,4h]", time(&|| drop(inner.clone().erf().into_data()))),
            ("exp [b,s,4h]", time(&|| drop(inner.clone().exp().into_data()))),
            (
                "layer_norm [b,s,h] (x2)",
                time(&|| drop(ln.forward(x.clone()).into_data())),
            ),
            (
                "softmax [b,H,s,s]",
                time(&|| drop(softmax(scores.clone(), 3).into_data())),
            ),
            (
                "attention fused",
                time(&|| {
                    drop(
                        mech.attend(q.clone(), q.clone(), q.clone(), &mask, false)
                            .context
                            .into_data(),
                    )
                }),
            ),
            (
                "attention explicit",
                time(&|| {
                    drop(
                        mech.attend(q.clone(), q.clone(), q.clone(), &mask, true)
                            .context
                            .into_data(),
                    )
                }),
            ),
            ("add [b,s,h]", time(&|| drop((x.clone() + x.clone()).into_data()))),
            (
                "swap_dims+reshape [b,s,h]",
                time(&|| drop(x.clone().reshape([b, s, heads, h / heads]).swap_dims(1, 2).into_data())),
            ),
        ]
    }
}
