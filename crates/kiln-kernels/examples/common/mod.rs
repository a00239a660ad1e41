//! Timing shared by the examples.
#![allow(dead_code)]

use std::time::Instant;

/// Best and median wall time of `runs` calls of `f` after one warm-up, in ms.
pub fn time_ms(runs: usize, f: &mut dyn FnMut()) -> (f64, f64) {
    f();
    let mut ts: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    (ts[0], ts[ts.len() / 2])
}

/// Prints `name` and the best of 7 runs.
pub fn report(name: &str, f: &mut dyn FnMut()) {
    println!("{name:<44} {:8.2} ms", time_ms(7, f).0);
}
