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
