//! GFLOP/s of `kiln_kernels::linear`'s forward and both backward products at MiniLM's shapes
//! (strides as the model has them), median of 7, after `retain_freed_memory`.
#[path = "common/mod.rs"]
mod common;

use kiln_kernels::linear::{backward_w, backward_x, forward, View2};

fn main() {
    kiln_kernels::alloc::retain_freed_memory();
    let m = 4096;
    for (k, n) in [(384usize, 384usize), (384, 1536), (1536, 384)] {
        let x: Vec<f32> = (0..m * k).map(|i| ((i % 13) as f32 - 6.0) * 0.1).collect();
        let w: Vec<f32> = (0..k * n).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
        let dy: Vec<f32> = (0..m * n).map(|i| ((i % 11) as f32 - 5.0) * 0.1).collect();
        let (xv, wv, dyv) = (
            View2::contiguous(&x, [m, k]).unwrap(),
            View2::contiguous(&w, [k, n]).unwrap(),
            View2::contiguous(&dy, [m, n]).unwrap(),
        );
        let flop = 2.0 * (m * k * n) as f64 / 1e9;
        let f = common::time_ms(7, &mut || drop(forward(xv, wv, None))).1 / 1e3;
        let dx = common::time_ms(7, &mut || drop(backward_x(dyv, wv))).1 / 1e3;
        let dw = common::time_ms(7, &mut || drop(backward_w(xv, dyv))).1 / 1e3;
        println!(
            "[{m},{k}]·[{k},{n}]: fwd {:.0}, dX {:.0}, dW {:.0} GFLOP/s",
            flop / f,
            flop / dx,
            flop / dw
        );
    }
}
