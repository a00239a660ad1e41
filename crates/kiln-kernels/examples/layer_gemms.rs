//! The six Linear GEMMs of one MiniLM layer at 32×128 through `kiln_kernels::linear`, fresh
//! outputs each time as in the model (best and median of 9). `--retain` calls
//! `kiln_kernels::alloc::retain_freed_memory` first.
#[path = "common/mod.rs"]
mod common;

use kiln_kernels::linear::{forward, View2};

fn main() {
    if std::env::args().any(|a| a == "--retain") {
        assert!(kiln_kernels::alloc::retain_freed_memory());
        println!("retain_freed_memory: on");
    }
    let (m, h, f) = (4096usize, 384usize, 1536usize);
    let x: Vec<f32> = (0..m * h).map(|i| ((i % 13) as f32 - 6.0) * 0.1).collect();
    let xf: Vec<f32> = (0..m * f).map(|i| ((i % 11) as f32 - 5.0) * 0.1).collect();
    let w_hh: Vec<f32> = (0..h * h).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
    let w_hf: Vec<f32> = (0..h * f).map(|i| ((i % 5) as f32 - 2.0) * 0.01).collect();
    let w_fh: Vec<f32> = (0..f * h).map(|i| ((i % 3) as f32 - 1.0) * 0.01).collect();
    let (b_h, b_f) = (vec![0.1f32; h], vec![0.1f32; f]);
    let xv = View2::contiguous(&x, [m, h]).unwrap();
    let xfv = View2::contiguous(&xf, [m, f]).unwrap();
    let run = || {
        let mut outs = Vec::new();
        for _ in 0..4 {
            outs.push(forward(xv, View2::contiguous(&w_hh, [h, h]).unwrap(), Some(&b_h)));
        }
        outs.push(forward(xv, View2::contiguous(&w_hf, [h, f]).unwrap(), Some(&b_f)));
        outs.push(forward(xfv, View2::contiguous(&w_fh, [f, h]).unwrap(), Some(&b_h)));
        outs
    };
    let (best, median) = common::time_ms(9, &mut || drop(run()));
    let flop = 2.0 * m as f64 * (4.0 * (h * h) as f64 + 2.0 * (h * f) as f64);
    println!(
        "6 GEMMs of a layer: best {:.1} ms, median {:.1} ms ({:.0} GFLOP/s at the median)",
        best,
        median,
        flop / median / 1e6
    );
}
