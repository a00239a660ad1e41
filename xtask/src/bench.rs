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
        let time = |f: &dyn Fn()| per_call(self.iters, f);
        let mut rows = vec![
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
            (
                "erf [b,s,4h] (burn op)",
                time(&|| drop(inner.clone().erf().into_data())),
            ),
            (
                "exp [b,s,4h] (burn op)",
                time(&|| drop(inner.clone().exp().into_data())),
            ),
            (
                "layer_norm [b,s,h] (x2)",
                time(&|| drop(ln.forward(x.clone()).into_data())),
            ),
            (
                "softmax [b,H,s,s] (burn op)",
                time(&|| drop(softmax(scores.clone(), 3).into_data())),
            ),
            (
                "attention fused + head merge",
                time(&|| {
                    let context = mech.attend(q.clone(), q.clone(), q.clone(), &mask, false).context;
                    drop(kiln::model::layers::merge_heads(context).into_data())
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
        ];
        rows.extend(train_rows::<B>(&x, &inner, &q, self.iters, &device));
        rows.push((
            "swap_dims+reshape [b,s,h]",
            time(&|| drop(x.clone().reshape([b, s, heads, h / heads]).swap_dims(1, 2).into_data())),
        ));
        rows
    }
}

/// Mean wall time of one call of `f` over `iters` calls, after one warm-up.
fn per_call(iters: usize, f: &dyn Fn()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..iters.max(1) {
        f();
    }
    t.elapsed().as_secs_f64() / iters.max(1) as f64
}

/// The training rows of `bench ops`: forward + backward of GELU, attention with dropout,
/// dropout, LayerNorm and the wide Linear, on the same inputs as the inference rows.
fn train_rows<B: AutodiffBackend>(
    x: &Tensor<B::InnerBackend, 3>,
    inner: &Tensor<B::InnerBackend, 3>,
    q: &Tensor<B::InnerBackend, 4>,
    iters: usize,
    device: &B::Device,
) -> Vec<(&'static str, f64)> {
    use kiln::attention::{Attention, AttentionKind, AttentionMask};
    use kiln::model::activation::gelu_exact;
    use kiln::model::layers::{layer_norm, linear, linear_tokens};
    let [b, s, h] = x.dims();
    let ff = inner.dims()[2];
    let ln_ad = layer_norm::<B>(h, 1e-12, device);
    let lin_ad = linear::<B>(h, ff, 0.02, device);
    let time = |f: &dyn Fn()| per_call(iters, f);
    vec![
        (
            "train: gelu_exact fwd+bwd [b,s,4h]",
            time(&|| {
                let xi = Tensor::<B, 3>::from_inner(inner.clone()).require_grad();
                let g = gelu_exact(xi.clone()).sum().backward();
                drop(xi.grad(&g).map(|t| t.into_data()));
            }),
        ),
        (
            "train: attention fwd+bwd, dropout 0.1",
            time(&|| {
                let mech = AttentionKind::Softmax(kiln::attention::SoftmaxAttention::new(0.1));
                let qi = Tensor::<B, 4>::from_inner(q.clone()).require_grad();
                let maskd = AttentionMask::<B>::from_attention_mask(Tensor::ones([b, s], device));
                let out = mech.attend(qi.clone(), qi.clone(), qi.clone(), &maskd, false).context;
                let g = out.sum().backward();
                drop(qi.grad(&g).map(|t| t.into_data()));
            }),
        ),
        (
            "train: dropout 0.1 [b,s,h]",
            time(&|| {
                let d = kiln::burn::nn::DropoutConfig::new(0.1).init();
                let y = kiln::model::layers::dropout(&d, Tensor::<B, 3>::from_inner(x.clone()));
                drop(y.into_data());
            }),
        ),
        (
            "train: layer_norm fwd+bwd [b,s,h]",
            time(&|| {
                let xi = Tensor::<B, 3>::from_inner(x.clone()).require_grad();
                let g = ln_ad.forward(xi.clone()).sum().backward();
                drop(xi.grad(&g).map(|t| t.into_data()));
            }),
        ),
        (
            "train: linear h->4h fwd+bwd",
            time(&|| {
                let xi = Tensor::<B, 3>::from_inner(x.clone()).require_grad();
                let g = linear_tokens(&lin_ad, xi.clone()).sum().backward();
                drop(xi.grad(&g).map(|t| t.into_data()));
            }),
        ),
    ]
}

/// PyTorch's time (ms) per row name of `bench ops`, from benches/python/bench_ops.py.
pub fn python_ops(
    python: &std::path::Path,
    batch: usize,
    seq: usize,
    iters: usize,
    threads: usize,
) -> anyhow::Result<std::collections::HashMap<String, f64>> {
    let out = std::process::Command::new(python)
        .arg(python_ops_script())
        .args(["--batch", &batch.to_string(), "--seq", &seq.to_string()])
        .args(["--iters", &iters.to_string(), "--threads", &threads.to_string()])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "bench_ops.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split('\t');
            let name = parts.next()?.to_string();
            let ms = parts.next()?.parse().ok()?;
            Some((name, ms))
        })
        .collect())
}

fn python_ops_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/python/bench_ops.py")
}

/// `bench gemm`: the Linear GEMMs of a MiniLM layer (forward `x·W`, `dX = dY·Wᵀ`,
/// `dW = Xᵀ·dY`) at `batch × seq` tokens through kiln-kernels and through burn-flex's matmul
/// (forward only), median of `iters`, beside torch.mm when `python` is given.
pub fn gemm_table(
    shapes: &[String],
    iters: usize,
    python: Option<&std::path::Path>,
    threads: usize,
) -> anyhow::Result<()> {
    use kiln::burn::backend::Flex;
    use kiln::kernels::linear::{backward_w, backward_x, forward, View2};
    println!("| tokens | GEMM (m×k·k×n) | kiln GFLOP/s | burn-flex matmul GFLOP/s | torch.mm GFLOP/s | kiln / torch |");
    println!("|---|---|---|---|---|---|");
    for shape in shapes {
        let (b, s) = shape
            .split_once('x')
            .and_then(|(b, s)| Some((b.parse::<usize>().ok()?, s.parse::<usize>().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("shape {shape:?} is not BATCHxSEQ"))?;
        let m = b * s;
        let torch = match python {
            Some(py) => python_ops(py, b, s, iters, threads)?,
            None => Default::default(),
        };
        for (din, dout) in [(384usize, 384usize), (384, 1536), (1536, 384)] {
            let x: Vec<f32> = (0..m * din).map(|i| ((i % 13) as f32 - 6.0) * 0.1).collect();
            let w: Vec<f32> = (0..din * dout).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
            let dy: Vec<f32> = (0..m * dout).map(|i| ((i % 11) as f32 - 5.0) * 0.1).collect();
            let xv = View2::contiguous(&x, [m, din]).expect("sized");
            let wv = View2::contiguous(&w, [din, dout]).expect("sized");
            let dyv = View2::contiguous(&dy, [m, dout]).expect("sized");
            let flop = 2.0 * (m * din * dout) as f64 / 1e9;
            let device = Default::default();
            let xt = Tensor::<Flex, 2>::from_data(TensorData::new(x.clone(), [m, din]), &device);
            let wt = Tensor::<Flex, 2>::from_data(TensorData::new(w.clone(), [din, dout]), &device);
            let rows = [
                (
                    format!("fwd {m}x{din}·{din}x{dout}"),
                    median_time(|| drop(forward(xv, wv, None)), iters),
                    Some(median_time(|| drop(xt.clone().matmul(wt.clone())), iters)),
                ),
                (
                    format!("dX {m}x{dout}·{dout}x{din}"),
                    median_time(|| drop(backward_x(dyv, wv)), iters),
                    None,
                ),
                (
                    format!("dW {din}x{m}·{m}x{dout}"),
                    median_time(|| drop(backward_w(xv, dyv)), iters),
                    None,
                ),
            ];
            for (name, kiln, flex) in rows {
                let t = torch.get(&format!("gemm {name}")).map(|ms| flop / (ms / 1e3));
                println!(
                    "| {m} | {name} | {:.0} | {} | {} | {} |",
                    flop / kiln,
                    flex.map_or("–".into(), |f| format!("{:.0}", flop / f)),
                    t.map_or("–".into(), |t| format!("{t:.0}")),
                    t.map_or("–".into(), |t| format!("{:.2}×", flop / kiln / t)),
                );
            }
        }
    }
    Ok(())
}
