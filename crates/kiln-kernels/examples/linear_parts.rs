//! Where burn-flex's Linear forward spends its time at MiniLM's shape.
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::Distribution;
use std::time::Instant;

fn time(name: &str, f: &dyn Fn()) {
    f();
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("{name:<40} {:8.2} ms", best * 1e3);
}

fn main() {
    let d = Default::default();
    let (m, k, n) = (4096, 384, 1536);
    let x = Tensor::<Flex, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &d);
    let w = Tensor::<Flex, 2>::random([k, n], Distribution::Normal(0.0, 1.0), &d);
    let b = Tensor::<Flex, 1>::random([n], Distribution::Normal(0.0, 1.0), &d);
    time("matmul", &|| drop(x.clone().matmul(w.clone())));
    time("matmul + into_data", &|| drop(x.clone().matmul(w.clone()).into_data()));
    time("linear (matmul + bias)", &|| {
        drop(burn::tensor::module::linear(x.clone(), w.clone(), Some(b.clone())))
    });
    let y = x.clone().matmul(w.clone());
    time("bias add alone", &|| drop(y.clone() + b.clone().unsqueeze::<2>()));
    time("alloc+zero 4096x1536", &|| drop(Tensor::<Flex, 2>::zeros([m, n], &d)));
    let xs = x.to_data().to_vec::<f32>().unwrap();
    let ws = w.to_data().to_vec::<f32>().unwrap();
    let bs = b.to_data().to_vec::<f32>().unwrap();
    time("gemm fresh Vec, bias folded", &|| {
        let mut out: Vec<f32> = Vec::with_capacity(m * n);
        for _ in 0..m {
            out.extend_from_slice(&bs);
        }
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                true,
                xs.as_ptr(),
                1,
                k as isize,
                ws.as_ptr(),
                1,
                n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
        drop(out)
    });
    time("gemm fresh Vec uninit-ish (zeros)", &|| {
        let mut out = vec![0f32; m * n];
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                xs.as_ptr(),
                1,
                k as isize,
                ws.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
        drop(out)
    });

    let xp = x.clone().into_primitive().tensor();
    let wp = w.clone().into_primitive().tensor();
    time("gemm on flex storage ptrs, Vec out", &|| {
        let mut out = vec![0f32; m * n];
        let (xs, ws) = (xp.storage::<f32>(), wp.storage::<f32>());
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                xs.as_ptr(),
                1,
                k as isize,
                ws.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
        drop(out)
    });
    time("gemm, u8 Vec out (as burn-flex)", &|| {
        let mut out = vec![0u8; m * n * 4];
        let (xs, ws) = (xp.storage::<f32>(), wp.storage::<f32>());
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr() as *mut f32,
                1,
                n as isize,
                false,
                xs.as_ptr(),
                1,
                k as isize,
                ws.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
        drop(out)
    });
    println!(
        "x ptr % 64 = {}, w ptr % 64 = {}",
        xp.storage::<f32>().as_ptr() as usize % 64,
        wp.storage::<f32>().as_ptr() as usize % 64
    );
    time("flex matmul direct", &|| {
        drop(burn::backend::flex::ops::matmul::matmul(xp.clone(), wp.clone()))
    });

    time("replica: FlexTensor::empty + storage_mut", &|| {
        let mut output =
            burn::backend::flex::FlexTensor::empty(burn::tensor::Shape::from(vec![m, n]), burn::tensor::DType::F32);
        let out: &mut [f32] = output.storage_mut();
        let (xs, ws) = (xp.storage::<f32>(), wp.storage::<f32>());
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                xs.as_ptr(),
                1,
                k as isize,
                ws.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
        drop(output)
    });
    println!(
        "x strides {:?} w strides {:?}",
        xp.layout().strides(),
        wp.layout().strides()
    );

    time("replica + fill(0) before gemm", &|| {
        let mut output =
            burn::backend::flex::FlexTensor::empty(burn::tensor::Shape::from(vec![m, n]), burn::tensor::DType::F32);
        let out: &mut [f32] = output.storage_mut();
        out.fill(0.0);
        let (xs, ws) = (xp.storage::<f32>(), wp.storage::<f32>());
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                xs.as_ptr(),
                1,
                k as isize,
                ws.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
        drop(output)
    });
    time("gemm into a reused buffer", &|| {
        static mut BUF: Vec<f32> = Vec::new();
        #[allow(static_mut_refs)]
        let out = unsafe {
            if BUF.is_empty() {
                BUF = vec![0.0; m * n];
            }
            &mut BUF
        };
        let (xs, ws) = (xp.storage::<f32>(), wp.storage::<f32>());
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                xs.as_ptr(),
                1,
                k as isize,
                ws.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
    });

    for _ in 0..3 {
        let mut output =
            burn::backend::flex::FlexTensor::empty(burn::tensor::Shape::from(vec![m, n]), burn::tensor::DType::F32);
        let out: &mut [f32] = output.storage_mut();
        let v = vec![0f32; m * n];
        println!(
            "flex out ptr % 4096 = {}, vec ptr % 4096 = {}",
            out.as_ptr() as usize % 4096,
            v.as_ptr() as usize % 4096
        );
    }

    let mut big = vec![0f32; m * n + 4096];
    for off_bytes in [0usize, 16, 32, 48, 64, 128, 256, 1024, 2048] {
        let base = big.as_mut_ptr() as usize;
        let aligned = base.div_ceil(4096) * 4096;
        let start = (aligned - base + off_bytes) / 4;
        let out = &mut big[start..start + m * n];
        let (xs, ws) = (xp.storage::<f32>(), wp.storage::<f32>());
        let t = Instant::now();
        for _ in 0..5 {
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    out.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    xs.as_ptr(),
                    1,
                    k as isize,
                    ws.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(0),
                );
            }
        }
        println!(
            "dst at page+{off_bytes}: {:.2} ms",
            t.elapsed().as_secs_f64() / 5.0 * 1e3
        );
    }
}
