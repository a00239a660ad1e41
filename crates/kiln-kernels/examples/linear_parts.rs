//! Where burn-flex's Linear forward spends its time at MiniLM's `[4096,384]·[384,1536]`: the
//! same `gemm` call into a burn-flex output, into a fresh `Vec`, into a reused buffer and at
//! several page offsets (best of 7). With glibc's defaults the burn-flex output is the slow
//! one: its pages are faulted in from inside the GEMM's threads (see `kiln_kernels::alloc`).
//! `--retain` calls `retain_freed_memory` first.
#[path = "common/mod.rs"]
mod common;

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::{DType, Distribution, Shape};

fn main() {
    if std::env::args().any(|a| a == "--retain") {
        assert!(kiln_kernels::alloc::retain_freed_memory());
    }
    let d = Default::default();
    let (m, k, n) = (4096, 384, 1536);
    let x = Tensor::<Flex, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &d);
    let w = Tensor::<Flex, 2>::random([k, n], Distribution::Normal(0.0, 1.0), &d);
    common::report("burn matmul", &mut || drop(x.clone().matmul(w.clone())));
    let (xp, wp) = (x.into_primitive().tensor(), w.into_primitive().tensor());
    let (xs, ws) = (xp.storage::<f32>().as_ptr(), wp.storage::<f32>().as_ptr());
    // SAFETY: `out` holds m·n floats; xs and ws are m×k and k×n row-major.
    let gemm_into = |out: *mut f32| unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            n as isize,
            false,
            xs,
            1,
            k as isize,
            ws,
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        )
    };
    common::report("gemm into a burn-flex output (FlexTensor::empty)", &mut || {
        let mut out = FlexTensor::empty(Shape::from(vec![m, n]), DType::F32);
        gemm_into(out.storage_mut::<f32>().as_mut_ptr());
    });
    common::report("gemm into a fresh Vec", &mut || {
        let mut out = vec![0f32; m * n];
        gemm_into(out.as_mut_ptr());
    });
    let mut reused = vec![0f32; m * n + 1024];
    common::report("gemm into a reused buffer", &mut || gemm_into(reused.as_mut_ptr()));
    let base = reused.as_ptr() as usize;
    for off in [0usize, 16, 32, 64, 2048] {
        let start = (base.div_ceil(4096) * 4096 - base + off) / 4;
        let ptr = reused[start..].as_mut_ptr();
        common::report(&format!("gemm into a reused buffer at page + {off} B"), &mut || {
            gemm_into(ptr)
        });
    }
}
