//! Kernelised linear attention (Katharopoulos et al. 2020) with the feature maps of ELU+1,
//! T2R (Kasai et al. 2021) and Hedgehog (Zhang et al. 2024).
//!
//! `out_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / max(φ(q_i)ᵀ Σ_j φ(k_j), ε)`, the sums over visible keys.
//!
//! - Bidirectional: two matrix products, `O(n·k·d)`.
//! - Causal, training: chunked — within a chunk of `C` positions the masked `C × C` form,
//!   across chunks a running state — so memory is `O(n·C + k·d)`, never an `n × n` matrix.
//! - Causal, decoding: [`RecurrentState`] holds `S = Σ φ(k_j) v_jᵀ` (`[k, d_v]`) and
//!   `z = Σ φ(k_j)` per head: constant memory per generated token. Parallel and recurrent
//!   forms agree to float precision (tested).

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::{relu, softmax};
use burn::tensor::{Distribution, TensorData};

use crate::{Attention, AttentionMask, AttentionOutput};

/// Which feature map φ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// `elu(x) + 1` (no parameters).
    EluPlusOne,
    /// `ReLU(W x + b)`, one `W, b` per head shared by queries and keys; queries are scaled
    /// by `d_head^-½` before φ.
    T2r,
    /// `[softmax(W x + b), softmax(−W x − b)]` over the feature dimension (the Hedgehog code's
    /// feature map), trainable per head; `2k` features.
    Hedgehog,
    /// Performer's FAVOR+ (Choromanski et al. 2021): positive orthogonal random features
    /// `exp(ωx̂ − ‖x̂‖²/2 − c)/√m`, `x̂ = x·d^-¼`, fixed (not trained).
    Performer,
}

/// A feature map with its (optional) per-head parameters.
#[derive(Module, Debug)]
pub struct FeatureMap<B: Backend> {
    /// The map.
    #[module(skip)]
    pub kind: FeatureKind,
    /// `W`, `[heads, head_dim, k]` (learned maps only).
    pub weight: Option<Param<Tensor<B, 3>>>,
    /// `b`, `[heads, k]` (learned maps only).
    pub bias: Option<Param<Tensor<B, 2>>>,
    /// Performer's random projection `ω`, `[head_dim, m]` (fixed: never trained).
    pub projection: Option<Param<Tensor<B, 2>>>,
}

impl<B: Backend> FeatureMap<B> {
    /// ELU+1, parameter-free.
    pub fn elu_plus_one() -> Self {
        Self {
            kind: FeatureKind::EluPlusOne,
            weight: None,
            bias: None,
            projection: None,
        }
    }

    /// Performer's FAVOR+ with `m` positive orthogonal random features for `head_dim`-wide
    /// heads, drawn from `seed` (the redraw policy is the caller's: features stay fixed until
    /// [`FeatureMap::performer`] is called again, so one generation always uses one draw).
    pub fn performer(head_dim: usize, m: usize, seed: u64, device: &B::Device) -> Self {
        let omega = orthogonal_gaussian(head_dim, m, seed);
        let projection = Tensor::<B, 2>::from_data(TensorData::new(omega, [head_dim, m]), device);
        Self {
            kind: FeatureKind::Performer,
            weight: None,
            bias: None,
            projection: Some(Param::from_tensor(projection).set_require_grad(false)),
        }
    }

    /// A learned map (T2R or Hedgehog) with `k` features per head, initialised as PyTorch's
    /// `nn.Linear` (`U(±1/√head_dim)` for `W` and `b`), which is what the T2R code uses.
    /// Hedgehog starts from the identity where `k ≥ head_dim` (its authors initialise the
    /// projection to identity), with zero bias.
    pub fn learned(kind: FeatureKind, heads: usize, head_dim: usize, k: usize, device: &B::Device) -> Self {
        let bound = 1.0 / (head_dim as f64).sqrt();
        let (weight, bias) = match kind {
            FeatureKind::Hedgehog if k >= head_dim => {
                let eye = Tensor::<B, 2>::eye(head_dim, device);
                let w = Tensor::cat(vec![eye, Tensor::zeros([head_dim, k - head_dim], device)], 1)
                    .unsqueeze::<3>()
                    .expand([heads, head_dim, k]);
                (w, Tensor::zeros([heads, k], device))
            }
            // T2R, Hedgehog narrower than the head (and the parameter-free maps, which never
            // reach this constructor).
            FeatureKind::Hedgehog | FeatureKind::T2r | FeatureKind::EluPlusOne | FeatureKind::Performer => (
                Tensor::random([heads, head_dim, k], Distribution::Uniform(-bound, bound), device),
                Tensor::random([heads, k], Distribution::Uniform(-bound, bound), device),
            ),
        };
        Self {
            kind,
            weight: Some(Param::from_tensor(weight)),
            bias: Some(Param::from_tensor(bias)),
            projection: None,
        }
    }

    /// Number of features for inputs of `head_dim` dimensions.
    pub fn num_features(&self, head_dim: usize) -> usize {
        if let (FeatureKind::Performer, Some(p)) = (&self.kind, &self.projection) {
            return p.dims()[1];
        }
        match (&self.kind, &self.weight) {
            (FeatureKind::EluPlusOne | FeatureKind::Performer, _) | (_, None) => head_dim,
            (FeatureKind::T2r, Some(w)) => w.dims()[2],
            (FeatureKind::Hedgehog, Some(w)) => 2 * w.dims()[2],
        }
    }

    /// φ(x) for `x: [batch, heads, n, head_dim]` → `[batch, heads, n, features]`.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let project = |x: Tensor<B, 4>| {
            let w = self.weight.as_ref().expect("learned map has W").val();
            let b = self.bias.as_ref().expect("learned map has b").val();
            let [heads, _, k] = w.dims();
            x.matmul(w.unsqueeze::<4>()) + b.reshape([1, heads, 1, k])
        };
        match self.kind {
            FeatureKind::EluPlusOne => relu(x.clone()) + x.neg().clamp_min(0.0).neg().exp(),
            FeatureKind::T2r => relu(project(x)),
            FeatureKind::Hedgehog => {
                let u = project(x);
                Tensor::cat(vec![softmax(u.clone(), 3), softmax(u.neg(), 3)], 3)
            }
            FeatureKind::Performer => self.performer_features(x, false),
        }
    }

    /// FAVOR+ features. Stabilisers that stay valid for causal decoding: a query row may be
    /// shifted by its own maximum (the shift cancels between numerator and normaliser); keys
    /// are shifted by the data-independent bound `max_i ‖ω_i‖²/2 ≥ ω_i·x̂ − ‖x̂‖²/2`, so their
    /// exponent is ≤ 0 whatever the input and no future key is needed.
    fn performer_features(&self, x: Tensor<B, 4>, is_query: bool) -> Tensor<B, 4> {
        let omega = self.projection.as_ref().expect("performer has ω").val();
        let [d, m] = omega.dims();
        let x = x.mul_scalar((d as f64).powf(-0.25));
        let sq = x.clone().powi_scalar(2).sum_dim(3).div_scalar(2.0); // [b, h, n, 1]
        let proj = x.matmul(omega.clone().unsqueeze::<4>()) - sq; // [b, h, n, m]
        let shifted = if is_query {
            let max = proj.clone().max_dim(3).detach();
            proj - max
        } else {
            let bound = omega.powi_scalar(2).sum_dim(0).max().into_scalar().elem::<f64>() / 2.0;
            proj.sub_scalar(bound)
        };
        shifted.exp().div_scalar((m as f64).sqrt())
    }
}

/// Linear attention with a feature map.
#[derive(Module, Debug)]
pub struct LinearAttention<B: Backend> {
    /// φ.
    pub feature_map: FeatureMap<B>,
    /// Lower bound of the normaliser (T2R uses 1e-2: ReLU features can all be zero).
    pub eps: f64,
    /// Chunk length of the causal parallel form.
    pub chunk: usize,
}

/// The recurrent (RNN-mode) state of causal linear attention: per batch and head,
/// `S = Σ φ(k_j) v_jᵀ` `[batch, heads, k, d_v]` and `z = Σ φ(k_j)` `[batch, heads, k, 1]`.
#[derive(Debug, Clone)]
pub struct RecurrentState<B: Backend> {
    /// Key-value sum.
    pub s: Tensor<B, 4>,
    /// Key sum.
    pub z: Tensor<B, 4>,
}

impl<B: Backend> RecurrentState<B> {
    /// Number of values the state holds (`S` and `z`); independent of the sequence length.
    pub fn numel(&self) -> usize {
        self.s.shape().num_elements() + self.z.shape().num_elements()
    }
}

impl<B: Backend> LinearAttention<B> {
    /// A mechanism with feature map `feature_map`, normaliser floor `eps`, causal chunk 64.
    pub fn new(feature_map: FeatureMap<B>, eps: f64) -> Self {
        Self {
            feature_map,
            eps,
            chunk: 64,
        }
    }

    /// φ of queries (T2R scales them by `d^-½` first; Performer uses its query stabiliser).
    pub(crate) fn query_features(&self, q: Tensor<B, 4>) -> Tensor<B, 4> {
        let head_dim = q.dims()[3];
        match self.feature_map.kind {
            FeatureKind::Performer => self.feature_map.performer_features(q, true),
            FeatureKind::T2r => self.feature_map.apply(q.mul_scalar((head_dim as f64).powf(-0.5))),
            FeatureKind::EluPlusOne | FeatureKind::Hedgehog => self.feature_map.apply(q),
        }
    }

    /// φ of keys.
    pub(crate) fn key_features(&self, k: Tensor<B, 4>) -> Tensor<B, 4> {
        match self.feature_map.kind {
            FeatureKind::Performer => self.feature_map.performer_features(k, false),
            FeatureKind::EluPlusOne | FeatureKind::T2r | FeatureKind::Hedgehog => self.feature_map.apply(k),
        }
    }

    pub(crate) fn features_of(&self, q: Tensor<B, 4>, k: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        (self.query_features(q), self.key_features(k))
    }

    /// An empty state for `batch × heads` with `d_v`-dimensional values.
    pub fn initial_state(
        &self,
        batch: usize,
        heads: usize,
        head_dim: usize,
        d_v: usize,
        device: &B::Device,
    ) -> RecurrentState<B> {
        let f = self.feature_map.num_features(head_dim);
        RecurrentState {
            s: Tensor::zeros([batch, heads, f, d_v], device),
            z: Tensor::zeros([batch, heads, f, 1], device),
        }
    }

    /// The state after keys `k` and values `v` (`[batch, heads, n, ·]`) — a prompt processed
    /// in parallel form — so that decoding can continue from it with [`Self::step`].
    pub fn state_of(&self, k: Tensor<B, 4>, v: Tensor<B, 4>) -> RecurrentState<B> {
        let fk = self.key_features(k).swap_dims(2, 3); // [b, h, f, n]
        RecurrentState {
            s: fk.clone().matmul(v),
            z: fk.sum_dim(3),
        }
    }

    /// One decoding step: `q, k, v` are `[batch, heads, 1, ·]`; returns the output
    /// `[batch, heads, 1, d_v]` and the updated state.
    pub fn step(
        &self,
        state: RecurrentState<B>,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, RecurrentState<B>) {
        let (fq, fk) = self.features_of(q, k);
        let s = state.s + fk.clone().swap_dims(2, 3).matmul(v);
        let z = state.z + fk.swap_dims(2, 3);
        let num = fq.clone().matmul(s.clone());
        let den = fq.matmul(z.clone()).clamp_min(self.eps);
        (num / den, RecurrentState { s, z })
    }

    /// Causal output for `seq_q == seq_k`, chunk by chunk.
    fn causal(&self, fq: Tensor<B, 4>, fk: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, heads, n, f] = fq.dims();
        let d_v = v.dims()[3];
        let device = fq.device();
        let mut s = Tensor::<B, 4>::zeros([batch, heads, f, d_v], &device);
        let mut z = Tensor::<B, 4>::zeros([batch, heads, f, 1], &device);
        let c = self.chunk.max(1);
        let mut outs = Vec::with_capacity(n.div_ceil(c));
        for start in (0..n).step_by(c) {
            let end = (start + c).min(n);
            let len = end - start;
            let qc = fq.clone().slice([0..batch, 0..heads, start..end, 0..f]);
            let kc = fk.clone().slice([0..batch, 0..heads, start..end, 0..f]);
            let vc = v.clone().slice([0..batch, 0..heads, start..end, 0..d_v]);
            let future = AttentionMask::<B>::causal_fill_mask(len, len, &device).expand([batch, heads, len, len]);
            let intra = qc.clone().matmul(kc.clone().swap_dims(2, 3)).mask_fill(future, 0.0);
            let num = qc.clone().matmul(s.clone()) + intra.clone().matmul(vc.clone());
            let den = (qc.matmul(z.clone()) + intra.sum_dim(3)).clamp_min(self.eps);
            outs.push(num / den);
            s = s + kc.clone().swap_dims(2, 3).matmul(vc);
            z = z + kc.swap_dims(2, 3).sum_dim(3);
        }
        Tensor::cat(outs, 2)
    }
}

impl<B: Backend> Attention<B> for LinearAttention<B> {
    fn attend(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        mask: &AttentionMask<B>,
        need_weights: bool,
    ) -> AttentionOutput<B> {
        let (fq, mut fk) = self.features_of(q, k);
        if let Some(keep) = &mask.key_padding {
            let [batch, seq_k] = keep.dims();
            fk = fk * keep.clone().float().reshape([batch, 1, seq_k, 1]);
        }
        if need_weights {
            // The quadratic form, for analysis and attention transfer: a_ij = φq_i·φk_j / Σ_j.
            let mut scores = fq.matmul(fk.swap_dims(2, 3));
            if mask.causal {
                let [_, _, n_q, n_k] = scores.dims();
                let future = AttentionMask::<B>::causal_fill_mask(n_q, n_k, &scores.device());
                let shape = scores.shape();
                scores = scores.mask_fill(future.expand(shape), 0.0);
            }
            let weights = scores.clone() / scores.sum_dim(3).clamp_min(self.eps);
            let context = weights.clone().matmul(v);
            return AttentionOutput {
                context,
                weights: Some(weights),
            };
        }
        let context = if mask.causal {
            assert_eq!(
                fq.dims()[2],
                fk.dims()[2],
                "causal linear attention in parallel form needs seq_q == seq_k; decode with step()"
            );
            self.causal(fq, fk, v)
        } else {
            let kv = fk.clone().swap_dims(2, 3).matmul(v);
            let z = fk.swap_dims(2, 3).sum_dim(3);
            let num = fq.clone().matmul(kv);
            num / fq.matmul(z).clamp_min(self.eps)
        };
        AttentionOutput { context, weights: None }
    }

    fn name(&self) -> &'static str {
        match self.feature_map.kind {
            FeatureKind::EluPlusOne => "elu_linear",
            FeatureKind::T2r => "t2r",
            FeatureKind::Hedgehog => "hedgehog",
            FeatureKind::Performer => "performer",
        }
    }
}

/// `[d, m]` (column-major blocks of `d` orthogonal directions): Performer's orthogonal random
/// features. Each block of up to `d` columns is a Gram–Schmidt-orthonormalised Gaussian block;
/// each column is then scaled to the norm of an independent `d`-dimensional Gaussian vector,
/// so columns are marginally `N(0, I)` but orthogonal within a block. Written here (no
/// random-matrix crate in the tree) with kiln's one seeded generator (SplitMix64,
/// `rand_xoshiro`'s) and Box–Muller on uniforms in the open interval `(0, 1)`, so a seed gives
/// the same features on every backend.
pub fn orthogonal_gaussian(d: usize, m: usize, seed: u64) -> Vec<f32> {
    use rand_xoshiro::rand_core::{RngCore, SeedableRng};
    let mut rng = rand_xoshiro::SplitMix64::seed_from_u64(seed ^ 0x5DEE_CE66_D1CE_4E5B);
    let mut uniform = move || ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let mut normal = move || {
        let (u1, u2) = (uniform(), uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    };
    let mut columns: Vec<Vec<f64>> = Vec::with_capacity(m);
    while columns.len() < m {
        let block_start = columns.len();
        for _ in 0..d.min(m - block_start) {
            let mut v: Vec<f64> = (0..d).map(|_| normal()).collect();
            for u in &columns[block_start..] {
                let dot: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
            }
            let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            v.iter_mut().for_each(|a| *a /= norm);
            columns.push(v);
        }
    }
    for c in &mut columns {
        let chi = (0..d).map(|_| normal().powi(2)).sum::<f64>().sqrt();
        c.iter_mut().for_each(|a| *a *= chi);
    }
    let mut out = vec![0f32; d * m];
    for (j, c) in columns.iter().enumerate() {
        for (i, v) in c.iter().enumerate() {
            out[i * m + j] = *v as f32;
        }
    }
    out
}
