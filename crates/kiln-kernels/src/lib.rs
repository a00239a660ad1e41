//! # kiln-kernels
//!
//! Fused CPU kernels for the operations where burn-flex 0.21 spends kiln's time, and their
//! dispatch from burn.
//!
//! **Owns:** slice kernels ([`math`]: vectorised `exp`/`erf`, exact GELU forward/backward;
//! [`attention`]: strided flash-style softmax attention forward/backward with key padding,
//! causal masking and counter-based dropout; [`linear`], [`layer_norm`], [`adamw`]: Linear
//! with its bias folded into the GEMM, LayerNorm and one-pass AdamW; [`rng`]: the dropout
//! stream; [`alloc`]: keeping freed pages), and [`ops`]: the
//! burn-facing functions that run these kernels on `Flex` and register custom `Backward`
//! nodes on `Autodiff<Flex>`, falling back to burn's composed operations on every other
//! backend. **Must not touch:** model layout, weights, training policy.
//!
//! Measured effect (2 cores, MiniLM, against PyTorch eager in the same command): forward
//! 0.28–0.40× → 1.04–1.14×, training step 0.47–0.56× → 1.20–1.28× (medians of three runs),
//! activation memory of a training step less than half of PyTorch's (`docs/benchmarks.md`). Every kernel is tested
//! against a float64 loop or closed form, and every burn operation against the same function
//! composed from burn operations on `Autodiff<NdArray>` (`tests/ops.rs`).
//!
//! Written here rather than taken from a crate because the semantics must be exactly those of
//! the reference models (Hugging Face's `f32::MIN` masking, the exact-erf GELU and its exact gradient)
//! and the inputs are burn-flex's strided buffers; the GEMMs are the `gemm` crate burn-flex
//! itself uses, parallelism is rayon.
#![warn(missing_docs)]

pub mod adamw;
pub mod alloc;
pub mod attention;
pub mod layer_norm;
pub mod linear;
pub mod math;
mod mm;
pub mod ops;
pub mod rng;
