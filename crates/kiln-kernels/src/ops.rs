//! The kernels as burn operations: fast on `Flex` and `Autodiff<Flex>`, absent elsewhere.
//!
//! Each function returns `Ok(output)` when it ran a kernel and `Err(inputs)` otherwise, so the
//! caller falls back to its composed, exact burn code — NdArray, WGPU and CUDA run the same
//! graphs as before, and Flex with a dtype other than f32 does too.
//!
//! ## Why a `TypeId` check and not a backend-extension trait
//! burn's book extends a backend with a trait (`trait Backend: burn::tensor::backend::Backend
//! { fn fused(..) }`) that every backend implements and every caller names as its bound. kiln's
//! crates (and their users' code) are generic over plain `B: Backend`; that bound would have to
//! become `B: KilnBackend` on every generic item of seven crates, and every backend a user
//! brings would need an impl before kiln compiled for it. The check here is the same dispatch
//! resolved by monomorphisation instead: `TypeId::of::<B>()` is a constant per instantiation,
//! so each instantiation keeps exactly one path and the check costs nothing at run time. The
//! casts go through `Any` (no `unsafe`). On `Autodiff<Flex>` the functions register their own
//! `Backward` nodes, as the book's custom-backward chapter does, so training differentiates
//! the fused kernels, not burn's composed graph.

use std::any::Any;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::{DType, Distribution, TensorPrimitive};

use crate::attention::{self, Masking, View4};
use crate::linear::{self, View2};
use crate::math;

type Ad = Autodiff<Flex>;
type FloatPrim<B> = <B as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive;
type AdTensor = <Ad as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive;

/// Moves `a` into a `T` when they are the same type.
fn cast<A: 'static, T: 'static>(a: A) -> Result<T, A> {
    let mut slot = Some(a);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<T>>() {
        Some(t) => Ok(t.take().expect("just filled")),
        None => Err(slot.expect("not taken")),
    }
}

/// Moves `a` into `T`, which the caller's `TypeId` check has shown to be its own type.
fn same<A: 'static, T: 'static>(a: A) -> T {
    cast(a).unwrap_or_else(|_| unreachable!("checked to be the same type"))
}

/// Whether `B` is a backend these kernels serve.
pub fn accelerated<B: Backend>() -> bool {
    use std::any::TypeId;
    let id = TypeId::of::<B>();
    id == TypeId::of::<Flex>() || id == TypeId::of::<Ad>()
}

fn float<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatPrim<B> {
    t.into_primitive().tensor()
}

fn wrap<B: Backend, const D: usize>(p: FloatPrim<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

fn flex_from_vec(data: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape.to_vec()))
}

fn is_f32(t: &FlexTensor) -> bool {
    t.dtype() == DType::F32
}

// ---------------------------------------------------------------- GELU

fn gelu_flex(x: &FlexTensor) -> FlexTensor {
    let x = x.to_contiguous();
    let xs = x.as_slice::<f32>().expect("contiguous f32");
    let mut y = vec![0.0f32; xs.len()];
    math::gelu(xs, &mut y);
    flex_from_vec(y, x.layout().shape())
}

fn gelu_backward_flex(x: &FlexTensor, dy: &FlexTensor) -> FlexTensor {
    let (x, dy) = (x.to_contiguous(), dy.to_contiguous());
    let xs = x.as_slice::<f32>().expect("contiguous f32");
    let gs = dy.as_slice::<f32>().expect("contiguous f32");
    let mut dx = vec![0.0f32; xs.len()];
    math::gelu_backward(xs, gs, &mut dx);
    flex_from_vec(dx, x.layout().shape())
}

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        let [parent] = ops.parents;
        if let Some(parent) = parent {
            let dy = if is_f32(&dy) { dy } else { dy.to_contiguous() };
            grads.register::<Flex>(parent.id, gelu_backward_flex(&ops.state, &dy));
        }
    }
}

/// Exact GELU `x·Φ(x)` with the fused kernel (forward and backward) on Flex; `Err(x)` on other
/// backends or dtypes.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if x.dtype() != DType::F32 || !accelerated::<B>() {
        return Err(x);
    }
    let x = match cast::<Tensor<B, D>, Tensor<Flex, D>>(x) {
        Ok(x) => {
            let y = gelu_flex(&float(x));
            return Ok(same(wrap::<Flex, D>(y)));
        }
        Err(x) => x,
    };
    let x: AdTensor = float(same::<Tensor<B, D>, Tensor<Ad, D>>(x));
    let out = match GeluBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let y = gelu_flex(&x.primitive);
            prep.finish(x.primitive.clone(), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(gelu_flex(&x.primitive)),
    };
    Ok(same(wrap::<Ad, D>(out)))
}

// ---------------------------------------------------------------- attention

/// A `[batch, heads, seq, dim]` Flex tensor as a kernel view (`None`: not f32 or a negative
/// stride; the caller makes it contiguous).
fn view(t: &FlexTensor) -> Option<View4<'_>> {
    let layout = t.layout();
    if !is_f32(t) || layout.num_dims() != 4 || layout.strides().iter().any(|&s| s < 0) {
        return None;
    }
    let dims: [usize; 4] = layout.shape().dims();
    let s = layout.strides();
    View4::new(
        t.storage::<f32>(),
        layout.start_offset(),
        dims,
        [s[0] as usize, s[1] as usize, s[2] as usize, s[3] as usize],
    )
}

fn viewable(t: FlexTensor) -> FlexTensor {
    if view(&t).is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

/// A `[batch, seq, heads, dim]` buffer returned as the `[batch, heads, seq, dim]` tensor it is.
fn seq_major_tensor(data: Vec<f32>, [b, h, s, d]: [usize; 4]) -> FlexTensor {
    flex_from_vec(data, &[b, s, h, d]).permute(&[0, 2, 1, 3])
}

#[derive(Debug, Clone)]
struct AttnState {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    out: FlexTensor,
    stats: std::sync::Arc<Vec<f32>>,
    keep: Option<std::sync::Arc<Vec<bool>>>,
    causal: bool,
    dropout: f32,
    seed: u64,
}

impl AttnState {
    fn masking(&self) -> Masking<'_> {
        Masking {
            key_keep: self.keep.as_deref().map(|k| k.as_slice()),
            causal: self.causal,
            dropout: self.dropout,
            seed: self.seed,
        }
    }
}

fn attention_flex(
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    keep: Option<std::sync::Arc<Vec<bool>>>,
    causal: bool,
    dropout: f32,
    seed: u64,
) -> (FlexTensor, AttnState) {
    let (q, k, v) = (viewable(q), viewable(k), viewable(v));
    let (qv, kv, vv) = (
        view(&q).expect("viewable"),
        view(&k).expect("viewable"),
        view(&v).expect("viewable"),
    );
    let m = Masking {
        key_keep: keep.as_deref().map(|k| k.as_slice()),
        causal,
        dropout,
        seed,
    };
    let [b, h, sq, _] = qv.dims();
    let dv = vv.dims()[3];
    let f = attention::forward(qv, kv, vv, m);
    let out = seq_major_tensor(f.out, [b, h, sq, dv]);
    let state = AttnState {
        q,
        k,
        v,
        out: out.clone(),
        stats: std::sync::Arc::new(f.stats),
        keep,
        causal,
        dropout,
        seed,
    };
    (out, state)
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    type State = AttnState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dout = viewable(grads.consume::<Flex>(&ops.node));
        let s = &ops.state;
        let views = (view(&s.q), view(&s.k), view(&s.v), view(&s.out), view(&dout));
        let (Some(q), Some(k), Some(v), Some(out), Some(dov)) = views else {
            unreachable!("states are viewable by construction")
        };
        let g = attention::backward(q, k, v, out, &s.stats, dov, s.masking());
        let [b, h, sq, d] = q.dims();
        let sk = k.dims()[2];
        let dv_dim = v.dims()[3];
        let [pq, pk, pv] = ops.parents;
        if let Some(p) = pq {
            grads.register::<Flex>(p.id, seq_major_tensor(g.dq, [b, h, sq, d]));
        }
        if let Some(p) = pk {
            grads.register::<Flex>(p.id, seq_major_tensor(g.dk, [b, h, sk, d]));
        }
        if let Some(p) = pv {
            grads.register::<Flex>(p.id, seq_major_tensor(g.dv, [b, h, sk, dv_dim]));
        }
    }
}

/// Inputs handed back by [`attention`] when it has no kernel for the backend.
pub type AttentionInputs<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>);

/// `softmax(q kᵀ/√d + mask)·v` with dropout `dropout` on the probabilities, as the fused
/// kernel on Flex and `Autodiff<Flex>` (custom backward); `Err((q, k, v))` elsewhere.
///
/// `q` `[batch, heads, seq_q, d]`, `k` `[batch, heads, seq_k, d]`, `v` `[batch, heads, seq_k,
/// d_v]` (any strides); `key_keep` `[batch, seq_k]`, true at real keys. The result is a
/// `[batch, heads, seq_q, d_v]` view of a `[batch, seq_q, heads, d_v]` buffer, so merging the
/// heads afterwards is free. The dropout seed is drawn from the backend's RNG.
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    key_keep: Option<&Tensor<B, 2, Bool>>,
    causal: bool,
    dropout: f64,
) -> Result<Tensor<B, 4>, AttentionInputs<B>> {
    let ok = accelerated::<B>()
        && [q.dtype(), k.dtype(), v.dtype()].iter().all(|d| *d == DType::F32)
        && (0.0..1.0).contains(&dropout);
    if !ok {
        return Err((q, k, v));
    }
    let keep =
        key_keep.map(|m| std::sync::Arc::new(m.to_data().convert::<bool>().into_vec::<bool>().expect("bool mask")));
    let seed = if dropout > 0.0 { draw_seed() } else { 0 };
    let dropout = dropout as f32;
    let q = match cast::<Tensor<B, 4>, Tensor<Flex, 4>>(q) {
        Ok(q) => {
            let k = same::<Tensor<B, 4>, Tensor<Flex, 4>>(k);
            let v = same::<Tensor<B, 4>, Tensor<Flex, 4>>(v);
            let (out, _) = attention_flex(float(q), float(k), float(v), keep, causal, dropout, seed);
            return Ok(same(wrap::<Flex, 4>(out)));
        }
        Err(q) => q,
    };
    let ad = |t: Tensor<B, 4>| -> AdTensor { float(same::<Tensor<B, 4>, Tensor<Ad, 4>>(t)) };
    let (q, k, v) = (ad(q), ad(k), ad(v));
    let nodes = [q.node.clone(), k.node.clone(), v.node.clone()];
    let out = match AttentionBackward
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (out, state) = attention_flex(q.primitive, k.primitive, v.primitive, keep, causal, dropout, seed);
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => {
            let (out, _) = attention_flex(q.primitive, k.primitive, v.primitive, keep, causal, dropout, seed);
            prep.finish(out)
        }
    };
    Ok(same(wrap::<Ad, 4>(out)))
}

// ---------------------------------------------------------------- linear

/// A 2-D f32 Flex tensor as a kernel view (`None`: other dtype or a negative stride).
fn view2(t: &FlexTensor) -> Option<View2<'_>> {
    let layout = t.layout();
    if !is_f32(t) || layout.num_dims() != 2 || layout.strides().iter().any(|&s| s < 0) {
        return None;
    }
    let dims: [usize; 2] = layout.shape().dims();
    let s = layout.strides();
    View2::new(
        t.storage::<f32>(),
        layout.start_offset(),
        dims,
        [s[0] as usize, s[1] as usize],
    )
}

fn viewable2(t: FlexTensor) -> FlexTensor {
    if view2(&t).is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

fn linear_flex(x: &FlexTensor, w: &FlexTensor, b: Option<&FlexTensor>) -> FlexTensor {
    let (xv, wv) = (view2(x).expect("viewable"), view2(w).expect("viewable"));
    let b = b.map(|b| b.to_contiguous());
    let bias = b.as_ref().map(|b| b.as_slice::<f32>().expect("contiguous f32 bias"));
    let y = linear::forward(xv, wv, bias);
    flex_from_vec(y, &[xv.dims()[0], wv.dims()[1]])
}

/// Backward of `x·W (+ b)`: parents `[x, W]` or `[x, W, b]`.
#[derive(Debug)]
struct LinearBackward;

impl<const N: usize> Backward<Flex, N> for LinearBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = viewable2(grads.consume::<Flex>(&ops.node));
        let dyv = view2(&dy).expect("viewable");
        let (x, w) = &ops.state;
        for (i, parent) in ops.parents.into_iter().enumerate() {
            let Some(parent) = parent else { continue };
            let grad = match i {
                0 => {
                    let wv = view2(w).expect("viewable");
                    flex_from_vec(linear::backward_x(dyv, wv), &[dyv.dims()[0], wv.dims()[0]])
                }
                1 => {
                    let xv = view2(x).expect("viewable");
                    flex_from_vec(linear::backward_w(xv, dyv), &[xv.dims()[1], dyv.dims()[1]])
                }
                _ => flex_from_vec(linear::backward_b(dyv), &[dyv.dims()[1]]),
            };
            grads.register::<Flex>(parent.id, grad);
        }
    }
}

/// Inputs handed back by [`linear`] when it has no kernel for the backend.
pub type LinearInputs<B> = (Tensor<B, 2>, Tensor<B, 2>, Option<Tensor<B, 1>>);

/// `x·W + b` for `x` `[m, k]`, `W` `[k, n]` (burn's layout), `b` `[n]`: one multi-threaded
/// GEMM with the bias folded in on Flex, and on `Autodiff<Flex>` a custom backward (`dx =
/// dy·Wᵀ`, `dW = xᵀ·dy`, `db = Σ dy`, each only for inputs that require a gradient);
/// `Err(inputs)` on other backends and dtypes.
pub fn linear<B: Backend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    b: Option<Tensor<B, 1>>,
) -> Result<Tensor<B, 2>, LinearInputs<B>> {
    let f32s = x.dtype() == DType::F32 && w.dtype() == DType::F32 && b.as_ref().is_none_or(|b| b.dtype() == DType::F32);
    if !f32s || !accelerated::<B>() {
        return Err((x, w, b));
    }
    let x = match cast::<Tensor<B, 2>, Tensor<Flex, 2>>(x) {
        Ok(x) => {
            let w = same::<Tensor<B, 2>, Tensor<Flex, 2>>(w);
            let b = b.map(|b| float(same::<Tensor<B, 1>, Tensor<Flex, 1>>(b)));
            let (x, w) = (viewable2(float(x)), viewable2(float(w)));
            let y = linear_flex(&x, &w, b.as_ref());
            return Ok(same(wrap::<Flex, 2>(y)));
        }
        Err(x) => x,
    };
    let ad2 = |t: Tensor<B, 2>| -> AdTensor { float(same::<Tensor<B, 2>, Tensor<Ad, 2>>(t)) };
    let (x, w) = (ad2(x), ad2(w));
    let b: Option<AdTensor> = b.map(|b| float(same::<Tensor<B, 1>, Tensor<Ad, 1>>(b)));
    let (xp, wp) = (viewable2(x.primitive.clone()), viewable2(w.primitive.clone()));
    let y = linear_flex(&xp, &wp, b.as_ref().map(|b| &b.primitive));
    let out = match &b {
        Some(b) => {
            let nodes = [x.node.clone(), w.node.clone(), b.node.clone()];
            match <LinearBackward as Backward<Flex, 3>>::prepare::<NoCheckpointing>(LinearBackward, nodes)
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((xp, wp), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            }
        }
        None => {
            let nodes = [x.node.clone(), w.node.clone()];
            match <LinearBackward as Backward<Flex, 2>>::prepare::<NoCheckpointing>(LinearBackward, nodes)
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((xp, wp), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            }
        }
    };
    Ok(same(wrap::<Ad, 2>(out)))
}

// ---------------------------------------------------------------- dropout

fn dropout_flex(x: &FlexTensor, seed: u64, p: f32) -> FlexTensor {
    let x = x.to_contiguous();
    let mut y = x.as_slice::<f32>().expect("contiguous f32").to_vec();
    math::dropout(&mut y, seed, p);
    flex_from_vec(y, x.layout().shape())
}

#[derive(Debug)]
struct DropoutBackward;

impl Backward<Flex, 1> for DropoutBackward {
    /// `(seed, p)`: the mask is regenerated, never stored.
    type State = (u64, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        let [parent] = ops.parents;
        if let Some(parent) = parent {
            let (seed, p) = ops.state;
            grads.register::<Flex>(parent.id, dropout_flex(&dy, seed, p));
        }
    }
}

/// A seed for a counter-based stream, drawn from the backend's RNG (so `B::seed` makes runs
/// reproducible and a resumed run that restores it draws the same masks).
fn draw_seed() -> u64 {
    let u = Tensor::<Flex, 1>::random([3], Distribution::Uniform(0.0, 1.0), &Default::default())
        .into_data()
        .into_vec::<f32>()
        .expect("f32");
    u.iter()
        .fold(0u64, |acc, x| (acc << 21) ^ ((x * (1u32 << 21) as f32) as u64))
}

/// Inverted dropout with probability `p` as one parallel pass on `Autodiff<Flex>` (mask from a
/// counter-based stream, regenerated in the backward rather than stored); `Err(x)` on other
/// backends, for `p` outside (0, 1), and where autodiff is off (dropout is then the identity
/// and the caller's burn `Dropout` returns `x` itself).
pub fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, p: f64) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if x.dtype() != DType::F32 || !(p > 0.0 && p < 1.0) {
        return Err(x);
    }
    let x: AdTensor = match cast::<Tensor<B, D>, Tensor<Ad, D>>(x) {
        Ok(x) => float(x),
        Err(x) => return Err(x),
    };
    let (seed, p) = (draw_seed(), p as f32);
    let y = dropout_flex(&x.primitive, seed, p);
    let out = match DropoutBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((seed, p), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Ok(same(wrap::<Ad, D>(out)))
}

// ---------------------------------------------------------------- AdamW

/// An owned contiguous f32 Flex tensor whose storage is not shared (copied if it was).
fn unique_contiguous(t: FlexTensor) -> FlexTensor {
    let c = t.to_contiguous();
    drop(t);
    c
}

/// `(p, m, v)` after an [`adamw`] update.
pub type AdamWOutputs<B> = (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>);

/// Inputs handed back by [`adamw`] when it has no kernel for the backend.
pub type AdamWInputs<B> = (Tensor<B, 1>, Tensor<B, 1>, Option<(Tensor<B, 1>, Tensor<B, 1>)>);

/// One AdamW update of a flattened parameter `p` with gradient `g` and moments `(m, v)`
/// (`None`: zeros, the first step) as one parallel pass on Flex ([`crate::adamw`]); returns
/// `(p, m, v)`, or `Err(inputs)` on other backends and dtypes.
pub fn adamw<B: Backend>(
    p: Tensor<B, 1>,
    g: Tensor<B, 1>,
    moments: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
    h: crate::adamw::AdamWStep,
) -> Result<AdamWOutputs<B>, AdamWInputs<B>> {
    let f32s = p.dtype() == DType::F32
        && g.dtype() == DType::F32
        && moments
            .as_ref()
            .is_none_or(|(m, v)| m.dtype() == DType::F32 && v.dtype() == DType::F32);
    if !f32s {
        return Err((p, g, moments));
    }
    let p = match cast::<Tensor<B, 1>, Tensor<Flex, 1>>(p) {
        Ok(p) => p,
        Err(p) => return Err((p, g, moments)),
    };
    let flex = |t: Tensor<B, 1>| unique_contiguous(float(same::<Tensor<B, 1>, Tensor<Flex, 1>>(t)));
    let n = p.dims()[0];
    let mut p = unique_contiguous(float(p));
    let g = flex(g);
    let (mut m, mut v) = match moments {
        Some((m, v)) => (flex(m), flex(v)),
        None => (flex_from_vec(vec![0.0; n], &[n]), flex_from_vec(vec![0.0; n], &[n])),
    };
    crate::adamw::update(
        p.storage_mut::<f32>(),
        g.as_slice::<f32>().expect("contiguous f32"),
        m.storage_mut::<f32>(),
        v.storage_mut::<f32>(),
        h,
    );
    let back = |t: FlexTensor| -> Tensor<B, 1> { same(wrap::<Flex, 1>(t)) };
    Ok((back(p), back(m), back(v)))
}

/// `Σ g²` of an f32 Flex tensor in f64 (parallel), `None` on other backends and dtypes.
pub fn sum_sq<B: Backend, const D: usize>(g: &Tensor<B, D>) -> Option<f64> {
    if g.dtype() != DType::F32 {
        return None;
    }
    let g = cast::<Tensor<B, D>, Tensor<Flex, D>>(g.clone()).ok()?;
    let g = float(g).to_contiguous();
    Some(crate::adamw::sum_sq(g.as_slice::<f32>()?))
}

// ---------------------------------------------------------------- LayerNorm

fn layer_norm_flex(x: &FlexTensor, gamma: &FlexTensor, beta: Option<&FlexTensor>, eps: f32) -> (FlexTensor, Vec<f32>) {
    let (x, gamma) = (x.to_contiguous(), gamma.to_contiguous());
    let beta = beta.map(FlexTensor::to_contiguous);
    let f = crate::layer_norm::forward(
        x.as_slice::<f32>().expect("contiguous f32"),
        gamma.as_slice::<f32>().expect("contiguous f32"),
        beta.as_ref().map(|b| b.as_slice::<f32>().expect("contiguous f32")),
        eps,
    );
    (flex_from_vec(f.y, x.layout().shape()), f.stats)
}

/// Backward of LayerNorm: parents `[x, γ]` or `[x, γ, β]`.
#[derive(Debug)]
struct LayerNormBackward;

impl<const N: usize> Backward<Flex, N> for LayerNormBackward {
    /// `(x, γ, per-row (μ, r))`.
    type State = (FlexTensor, FlexTensor, std::sync::Arc<Vec<f32>>);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (x, gamma, stats) = &ops.state;
        let (x, gamma) = (x.to_contiguous(), gamma.to_contiguous());
        let g = crate::layer_norm::backward(
            x.as_slice::<f32>().expect("contiguous f32"),
            gamma.as_slice::<f32>().expect("contiguous f32"),
            stats,
            dy.as_slice::<f32>().expect("contiguous f32"),
        );
        let d = gamma.layout().shape()[0];
        let mut outs = [Some(g.dx), Some(g.dgamma), Some(g.dbeta)];
        for (i, parent) in ops.parents.into_iter().enumerate() {
            let (Some(parent), Some(grad)) = (parent, outs[i].take()) else {
                continue;
            };
            let shape: Vec<usize> = if i == 0 { x.layout().shape().to_vec() } else { vec![d] };
            grads.register::<Flex>(parent.id, flex_from_vec(grad, &shape));
        }
    }
}

/// Inputs handed back by [`layer_norm`] when it has no kernel for the backend.
pub type LayerNormInputs<B, const D: usize> = (Tensor<B, D>, Tensor<B, 1>, Option<Tensor<B, 1>>);

/// LayerNorm of `x` over its last dimension with weight `gamma`, optional bias `beta` and
/// `eps`, as burn's `LayerNorm` computes it (biased variance): one parallel pass forward and
/// one backward on Flex / `Autodiff<Flex>`; `Err(inputs)` on other backends and dtypes.
pub fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    eps: f64,
) -> Result<Tensor<B, D>, LayerNormInputs<B, D>> {
    let f32s = x.dtype() == DType::F32
        && gamma.dtype() == DType::F32
        && beta.as_ref().is_none_or(|b| b.dtype() == DType::F32)
        && x.dims()[D - 1] == gamma.dims()[0];
    if !f32s || !accelerated::<B>() {
        return Err((x, gamma, beta));
    }
    let eps = eps as f32;
    let x = match cast::<Tensor<B, D>, Tensor<Flex, D>>(x) {
        Ok(x) => {
            let g = float(same::<Tensor<B, 1>, Tensor<Flex, 1>>(gamma));
            let b = beta.map(|b| float(same::<Tensor<B, 1>, Tensor<Flex, 1>>(b)));
            let (y, _) = layer_norm_flex(&float(x), &g, b.as_ref(), eps);
            return Ok(same(wrap::<Flex, D>(y)));
        }
        Err(x) => x,
    };
    let x: AdTensor = float(same::<Tensor<B, D>, Tensor<Ad, D>>(x));
    let g: AdTensor = float(same::<Tensor<B, 1>, Tensor<Ad, 1>>(gamma));
    let b: Option<AdTensor> = beta.map(|b| float(same::<Tensor<B, 1>, Tensor<Ad, 1>>(b)));
    let (y, stats) = layer_norm_flex(&x.primitive, &g.primitive, b.as_ref().map(|b| &b.primitive), eps);
    let state = (x.primitive.clone(), g.primitive.clone(), std::sync::Arc::new(stats));
    let out = match &b {
        Some(b) => {
            let nodes = [x.node.clone(), g.node.clone(), b.node.clone()];
            match <LayerNormBackward as Backward<Flex, 3>>::prepare::<NoCheckpointing>(LayerNormBackward, nodes)
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(state, y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            }
        }
        None => {
            let nodes = [x.node.clone(), g.node.clone()];
            match <LayerNormBackward as Backward<Flex, 2>>::prepare::<NoCheckpointing>(LayerNormBackward, nodes)
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(state, y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            }
        }
    };
    Ok(same(wrap::<Ad, D>(out)))
}
