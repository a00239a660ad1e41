//! GFLOP/s of the `gemm` crate at MiniLM's Linear shapes, by parallelism setting.
use std::time::Instant;

fn main() {
    let shapes = [
        (4096usize, 384usize, 384usize),
        (4096, 384, 1536),
        (4096, 1536, 384),
        (384, 4096, 1536),
        (1024, 384, 1536),
    ];
    for (m, k, n) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c = vec![0.0f32; m * n];
        for (name, par) in [
            ("rayon(0)", gemm::Parallelism::Rayon(0)),
            ("rayon(2)", gemm::Parallelism::Rayon(2)),
            ("none", gemm::Parallelism::None),
        ] {
            let run = |c: &mut [f32]| unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                )
            };
            run(&mut c);
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = Instant::now();
                run(&mut c);
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{m}x{k}·{k}x{n} {name}: {:.1} GFLOP/s",
                2.0 * (m * k * n) as f64 / best / 1e9
            );
        }
    }
}
