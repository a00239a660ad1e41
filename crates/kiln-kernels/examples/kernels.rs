//! Wall time of the slice kernels at MiniLM's 32×128 shapes (best of 7).
#[path = "common/mod.rs"]
mod common;
use kiln_kernels::attention::{self, Masking, View4};

fn main() {
    let n = 32 * 128 * 1536;
    let x: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32 - 500.0) / 100.0).collect();
    let mut y = vec![0.0f32; n];
    println!("avx2+fma: {}", kiln_kernels::math::avx2_fma());
    common::report("exp 6.3M", &mut || kiln_kernels::math::exp(&x, &mut y));
    common::report("gelu 6.3M", &mut || kiln_kernels::math::gelu(&x, &mut y));
    common::report("gelu fresh output 6.3M", &mut || {
        let mut y = vec![0.0f32; n];
        kiln_kernels::math::gelu(&x, &mut y);
    });
    let dy = x.clone();
    common::report("gelu backward 6.3M", &mut || {
        kiln_kernels::math::gelu_backward(&x, &dy, &mut y)
    });
    common::report("copy 6.3M", &mut || y.copy_from_slice(&x));
    let (b, h, s, d) = (32, 12, 128, 32);
    let q: Vec<f32> = (0..b * s * h * d)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
        .collect();
    let qv = View4::seq_major(&q, [b, h, s, d]).unwrap();
    common::report("attention fwd 32x12x128x32", &mut || {
        drop(attention::forward(qv, qv, qv, Masking::default()))
    });
    let qc = View4::contiguous(&q, [b, h, s, d]).unwrap();
    common::report("attention fwd, head-major input", &mut || {
        drop(attention::forward(qc, qc, qc, Masking::default()))
    });
    let m = Masking {
        dropout: 0.1,
        seed: 3,
        ..Masking::default()
    };
    let f = attention::forward(qv, qv, qv, m);
    common::report("attention fwd, dropout", &mut || {
        drop(attention::forward(qv, qv, qv, m))
    });
    let ov = View4::seq_major(&f.out, [b, h, s, d]).unwrap();
    common::report("attention bwd, dropout", &mut || {
        drop(attention::backward(qv, qv, qv, ov, &f.stats, qv, m))
    });
}
