//! GPT-2 pre-LayerNorm causal decoder (Radford et al. 2019), laid out as Hugging Face's
//! `GPT2Model` (+ tied LM head).
//!
//! Per block: `a = x + c_proj(Attn(ln_1(x)))`, `y = a + mlp.c_proj(act(mlp.c_fc(ln_2(a))))`;
//! the stack ends with `ln_f`, and logits are `h · wteᵀ`. HF's `Conv1D` stores weights as
//! `[in, out]`, which is burn's `Linear` layout, so these load without transposition.

use burn::nn::{Dropout, DropoutConfig, Embedding, LayerNorm, Linear};
use burn::prelude::*;
pub use kiln_attention::LayerState;
use kiln_attention::{Attention, AttentionKind, AttentionMask, SoftmaxAttention};
use rand_xoshiro::rand_core::{RngCore, SeedableRng};
use rand_xoshiro::SplitMix64;

use crate::activation::Activation;
use crate::capture::{Capture, LayerCapture, ModelOutput};
use crate::config::GptConfig;
use crate::error::ModelError;
use crate::layers::{
    dropout, embedding, layer_norm, linear, linear_tokens, merge_heads, norm, position_ids, split_heads,
};
use crate::peft::{LayerInserts, LinearWeights, Sublayer};
use crate::roles::LinearSlot;

const INIT_STD: f64 = 0.02;

/// Causal self-attention with fused QKV projection (HF `attn`).
#[derive(Module, Debug)]
pub struct Gpt2Attention<B: Backend> {
    /// Fused Q, K, V projection `[n_embd, 3·n_embd]`.
    pub c_attn: Linear<B>,
    /// Output projection.
    pub c_proj: Linear<B>,
    /// The mechanism (softmax for pretrained GPT-2).
    pub mechanism: AttentionKind<B>,
    /// Residual dropout.
    pub resid_dropout: Dropout,
    /// Number of heads.
    pub num_heads: usize,
}

/// Feed-forward network (HF `mlp`).
#[derive(Module, Debug)]
pub struct Gpt2Mlp<B: Backend> {
    /// Up projection.
    pub c_fc: Linear<B>,
    /// Down projection.
    pub c_proj: Linear<B>,
    /// Activation.
    #[module(skip)]
    pub activation: Activation,
    /// Dropout on the output.
    pub dropout: Dropout,
}

/// One decoder block (HF `h.{i}`).
#[derive(Module, Debug)]
pub struct Gpt2Block<B: Backend> {
    /// Pre-attention LayerNorm.
    pub ln_1: LayerNorm<B>,
    /// Attention.
    pub attn: Gpt2Attention<B>,
    /// Pre-MLP LayerNorm.
    pub ln_2: LayerNorm<B>,
    /// MLP.
    pub mlp: Gpt2Mlp<B>,
    /// ε of `ln_1` and `ln_2` (for the fused LayerNorm kernel).
    #[module(skip)]
    pub ln_eps: f64,
    /// Modules inserted by tuning strategies; empty for a pretrained model. The query, key and
    /// value slots are the column blocks of `c_attn`; `attn.c_proj`, `mlp.c_fc` and
    /// `mlp.c_proj` are the attention-output, intermediate and output slots.
    pub inserts: LayerInserts<B>,
}

/// GPT-2 with its tied language-modelling head.
#[derive(Module, Debug)]
pub struct Gpt2Model<B: Backend> {
    /// Token embeddings, also the LM head's weight.
    pub wte: Embedding<B>,
    /// Position embeddings.
    pub wpe: Embedding<B>,
    /// Embedding dropout.
    pub drop: Dropout,
    /// Blocks.
    pub h: Vec<Gpt2Block<B>>,
    /// Final LayerNorm.
    pub ln_f: LayerNorm<B>,
    /// ε of `ln_f` (for the fused LayerNorm kernel).
    #[module(skip)]
    pub ln_eps: f64,
}

impl<B: Backend> Gpt2Block<B> {
    fn new(config: &GptConfig, device: &B::Device) -> Self {
        let d = config.n_embd;
        let eps = config.layer_norm_epsilon;
        let inner = config.inner_size();
        // GPT-2 scales residual projections by 1/√(2·n_layer) at init.
        let proj_std = INIT_STD / (2.0 * config.n_layer as f64).sqrt();
        Self {
            ln_1: layer_norm(d, eps, device),
            attn: Gpt2Attention {
                c_attn: linear(d, 3 * d, INIT_STD, device),
                c_proj: linear(d, d, proj_std, device),
                mechanism: AttentionKind::Softmax(SoftmaxAttention::new(config.attn_pdrop)),
                resid_dropout: DropoutConfig::new(config.resid_pdrop).init(),
                num_heads: config.n_head,
            },
            ln_2: layer_norm(d, eps, device),
            mlp: Gpt2Mlp {
                c_fc: linear(d, inner, INIT_STD, device),
                c_proj: linear(inner, d, proj_std, device),
                activation: config.activation_function,
                dropout: DropoutConfig::new(config.resid_pdrop).init(),
            },
            ln_eps: eps,
            inserts: LayerInserts::empty(),
        }
    }

    /// The pretrained linear in `slot`: for the query, key and value, the fused `attn.c_attn`
    /// whose column blocks they are.
    pub fn linear(&self, slot: LinearSlot) -> &Linear<B> {
        match slot {
            LinearSlot::Query | LinearSlot::Key | LinearSlot::Value => &self.attn.c_attn,
            LinearSlot::AttentionOutput => &self.attn.c_proj,
            LinearSlot::Intermediate => &self.mlp.c_fc,
            LinearSlot::Output => &self.mlp.c_proj,
        }
    }

    /// Per-head queries, keys and values of `ln_1(x)`, each `[batch, heads, seq, d_head]`.
    fn qkv(&self, x: Tensor<B, 3>) -> [Tensor<B, 4>; 3] {
        let heads = self.attn.num_heads;
        let h = norm(&self.ln_1, self.ln_eps, x);
        let slots = [LinearSlot::Query, LinearSlot::Key, LinearSlot::Value];
        let c_attn = &self.attn.c_attn;
        let d = c_attn.weight.dims()[0];
        if slots.iter().any(|&slot| self.inserts.touches(slot)) {
            // Something is inserted on a column block: project each block on its own.
            let (w, b) = (c_attn.weight.val(), c_attn.bias.as_ref().map(|b| b.val()));
            return [0, 1, 2].map(|i| {
                let cols = i * d..(i + 1) * d;
                let weights = LinearWeights {
                    weight: w.clone().slice([0..d, cols.clone()]),
                    bias: b.clone().map(|b| b.slice([cols])),
                };
                split_heads(self.inserts.project_parts(slots[i], weights, h.clone()), heads)
            });
        }
        let qkv = linear_tokens(c_attn, h);
        let [batch, seq, _] = qkv.dims();
        [0, 1, 2].map(|i| split_heads(qkv.clone().slice([0..batch, 0..seq, i * d..(i + 1) * d]), heads))
    }

    /// Output projection of the per-head context (head gates, `resid_dropout`, then what is
    /// inserted after attention).
    fn attention_output(&self, context: Tensor<B, 4>) -> Tensor<B, 3> {
        let context = merge_heads(self.inserts.gate_heads(context));
        let out = dropout(
            &self.attn.resid_dropout,
            self.inserts
                .project(LinearSlot::AttentionOutput, &self.attn.c_proj, context),
        );
        self.inserts.after(Sublayer::Attention, out, None)
    }

    /// `a + mlp(ln_2(a))` (with what is inserted in and after the MLP).
    fn mlp_residual(&self, a: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = norm(&self.ln_2, self.ln_eps, a.clone());
        let inner = self
            .mlp
            .activation
            .forward(self.inserts.project(LinearSlot::Intermediate, &self.mlp.c_fc, h));
        let inner = self.inserts.scale_ffn(inner);
        let out = dropout(
            &self.mlp.dropout,
            self.inserts.project(LinearSlot::Output, &self.mlp.c_proj, inner),
        );
        a + self.inserts.after(Sublayer::Ffn, out, None)
    }

    /// One block on `[batch, seq, n_embd]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        mask: &AttentionMask<B>,
        capture: Capture,
    ) -> (Tensor<B, 3>, LayerCapture<B>) {
        let mut rec = LayerCapture::empty();
        if capture.block_input {
            rec.block_input = Some(x.clone());
        }
        let [q, k, v] = self.qkv(x.clone());
        if capture.values {
            rec.values = Some(v.clone());
        }
        let out = self.attn.mechanism.attend(q, k, v, mask, capture.attention_probs);
        rec.attention_probs = out.weights;
        let attn_out = self.attention_output(out.context);
        if capture.attention_output {
            rec.attention_output = Some(attn_out.clone());
        }
        let a = x + attn_out;
        if capture.pre_ln_sum {
            rec.pre_ln_sum = Some(a.clone());
        }
        (self.mlp_residual(a), rec)
    }

    /// Processes a prompt `[batch, n, n_embd]` causally and returns the output with the
    /// state decoding continues from.
    pub fn prefill(&self, x: Tensor<B, 3>) -> (Tensor<B, 3>, LayerState<B>) {
        let [q, k, v] = self.qkv(x.clone());
        let mask = AttentionMask::none().with_causal(true);
        let context = self
            .attn
            .mechanism
            .attend(q, k.clone(), v.clone(), &mask, false)
            .context;
        let state = self.attn.mechanism.prefill_state(k, v);
        let a = x + self.attention_output(context);
        (self.mlp_residual(a), state)
    }

    /// One new position `[batch, 1, n_embd]` given the layer's state: softmax appends to its
    /// key/value cache (sliding window keeps the last `w`), linear attention updates its
    /// recurrent state in O(1).
    pub fn step(&self, x: Tensor<B, 3>, state: LayerState<B>) -> (Tensor<B, 3>, LayerState<B>) {
        let [q, k, v] = self.qkv(x.clone());
        let (context, state) = self.attn.mechanism.step(state, q, k, v);
        let a = x + self.attention_output(context);
        (self.mlp_residual(a), state)
    }
}

/// Incremental-decoding state of a whole model: one [`LayerState`] per block and the next
/// position.
#[derive(Debug, Clone)]
pub struct DecodeState<B: Backend> {
    /// Per block.
    pub layers: Vec<LayerState<B>>,
    /// Position of the next token.
    pub position: usize,
}

impl<B: Backend> DecodeState<B> {
    /// Empty state for a model of `num_layers` blocks (linear layers create their recurrent
    /// state on the first step).
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| LayerState::empty()).collect(),
            position: 0,
        }
    }

    /// Bytes of attention state held (f32): grows with the position under softmax, constant
    /// under linear attention.
    pub fn state_bytes(&self) -> usize {
        self.layers.iter().map(LayerState::numel).sum::<usize>() * std::mem::size_of::<f32>()
    }
}

/// How [`Gpt2Model::generate`] picks each token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most probable token.
    Greedy,
    /// A draw from `softmax(logits / temperature)` with a seeded generator.
    Temperature {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Seed of the draws.
        seed: u64,
    },
}

impl<B: Backend> Gpt2Model<B> {
    /// A randomly initialised model (GPT-2 initialisation).
    pub fn new(config: &GptConfig, device: &B::Device) -> Self {
        Self {
            wte: embedding(config.vocab_size, config.n_embd, INIT_STD, device),
            wpe: embedding(config.n_positions, config.n_embd, 0.01, device),
            drop: DropoutConfig::new(config.embd_pdrop).init(),
            h: (0..config.n_layer).map(|_| Gpt2Block::new(config, device)).collect(),
            ln_f: layer_norm(config.n_embd, config.layer_norm_epsilon, device),
            ln_eps: config.layer_norm_epsilon,
        }
    }

    /// Number of blocks.
    pub fn num_layers(&self) -> usize {
        self.h.len()
    }

    /// Sets every dropout probability of the model (0 for analyses and exactness checks):
    /// embeddings, each block's residual and MLP dropout, its attention mechanism's and its
    /// inserts' (LoRA).
    pub fn set_dropout(&mut self, p: f64) {
        let d = || DropoutConfig::new(p).init();
        self.drop = d();
        for block in &mut self.h {
            block.attn.resid_dropout = d();
            block.mlp.dropout = d();
            block.attn.mechanism.set_dropout(p);
            block.inserts.set_dropout(p);
        }
    }

    /// `wte(ids) + wpe(positions)` → `[batch, seq, n_embd]` (HF `hidden_states[0]`).
    pub fn embed(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        dropout(
            &self.drop,
            self.wte.forward(input_ids) + self.wpe.forward(position_ids(batch, seq, 0, &device)),
        )
    }

    /// Blocks and final LayerNorm on embeddings. Hidden states follow HF: the embedding
    /// output, each block's output except the last, then the last *after* `ln_f`.
    pub fn decode(
        &self,
        embeddings: Tensor<B, 3>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        capture: Capture,
    ) -> ModelOutput<B> {
        let mask = attention_mask
            .map(AttentionMask::from_attention_mask)
            .unwrap_or_else(AttentionMask::none)
            .with_causal(true);
        let mut hidden_states = Vec::new();
        let mut layers = Vec::new();
        let mut x = embeddings;
        for block in &self.h {
            if capture.hidden_states {
                hidden_states.push(x.clone());
            }
            let (y, rec) = block.forward(x, &mask, capture);
            if capture.any_layer() {
                layers.push(rec);
            }
            x = y;
        }
        let x = norm(&self.ln_f, self.ln_eps, x);
        if capture.hidden_states {
            hidden_states.push(x.clone());
        }
        ModelOutput {
            last_hidden_state: x,
            hidden_states,
            layers,
        }
    }

    /// Checks host-side inputs against what this model can embed (at least one row,
    /// `seq ≤ n_positions`, ids in `[0, vocab)`), as [`crate::BertModel::check_input`] does.
    ///
    /// # Errors
    /// [`crate::ModelError::Input`] naming the first bad value and the model's limit.
    pub fn check_input(&self, batch: usize, seq: usize, ids: &[i64]) -> Result<(), crate::ModelError> {
        let positions = self.wpe.weight.dims()[0];
        let vocab = self.wte.weight.dims()[0];
        crate::error::check_ids(
            batch,
            seq,
            ids,
            positions,
            vocab,
            &format!("this model has {positions} positions"),
        )
    }

    /// Embeddings, blocks, `ln_f`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        capture: Capture,
    ) -> ModelOutput<B> {
        let embeddings = self.embed(input_ids);
        self.decode(embeddings, attention_mask, capture)
    }

    /// Replaces the attention mechanism of every block (or those listed) by `variant`,
    /// keeping all other weights; new feature-map parameters are drawn as the variant's
    /// paper does.
    ///
    /// # Panics
    /// When a listed block does not exist.
    pub fn convert_attention(
        &mut self,
        variant: &kiln_attention::AttentionVariant,
        layers: Option<&[usize]>,
        dropout: f64,
    ) {
        let slots = self
            .h
            .iter_mut()
            .map(|block| {
                let attn = &mut block.attn;
                crate::layers::MechanismSlot {
                    width: attn.c_attn.weight.dims()[0],
                    device: attn.c_attn.weight.device(),
                    num_heads: attn.num_heads,
                    mechanism: &mut attn.mechanism,
                }
            })
            .collect();
        crate::layers::convert_attention(slots, variant, layers, dropout);
    }

    /// Longest sequence the position embeddings cover.
    pub fn max_positions(&self) -> usize {
        self.wpe.weight.dims()[0]
    }

    fn check_positions(&self, end: usize) -> Result<(), ModelError> {
        let max = self.max_positions();
        if end > max {
            return Err(ModelError::Unsupported(format!(
                "decoding to position {end} needs more than the model's {max} position embeddings"
            )));
        }
        Ok(())
    }

    /// Runs a prompt `[batch, n]` in parallel form: logits `[batch, n, vocab]` and the state
    /// decoding continues from.
    ///
    /// # Errors
    /// When the prompt is longer than the position embeddings.
    pub fn prefill(&self, input_ids: Tensor<B, 2, Int>) -> Result<(Tensor<B, 3>, DecodeState<B>), ModelError> {
        let n = input_ids.dims()[1];
        self.check_positions(n)?;
        let mut x = self.embed(input_ids);
        let mut layers = Vec::with_capacity(self.h.len());
        for block in &self.h {
            let (y, state) = block.prefill(x);
            layers.push(state);
            x = y;
        }
        let logits = self.lm_logits(norm(&self.ln_f, self.ln_eps, x));
        Ok((logits, DecodeState { layers, position: n }))
    }

    /// One token per sequence (`[batch, 1]`) at `state.position`: logits `[batch, vocab]`.
    ///
    /// # Errors
    /// When the position is past the position embeddings.
    pub fn step(
        &self,
        input_ids: Tensor<B, 2, Int>,
        state: DecodeState<B>,
    ) -> Result<(Tensor<B, 2>, DecodeState<B>), ModelError> {
        let [batch, one] = input_ids.dims();
        assert_eq!(one, 1, "step takes one token per sequence");
        self.check_positions(state.position + 1)?;
        let device = input_ids.device();
        let mut x = dropout(
            &self.drop,
            self.wte.forward(input_ids) + self.wpe.forward(position_ids(batch, 1, state.position, &device)),
        );
        let mut layers = Vec::with_capacity(self.h.len());
        for (block, layer_state) in self.h.iter().zip(state.layers) {
            let (y, s) = block.step(x, layer_state);
            layers.push(s);
            x = y;
        }
        let vocab = self.wte.weight.dims()[0];
        let logits = self.lm_logits(norm(&self.ln_f, self.ln_eps, x)).reshape([batch, vocab]);
        Ok((
            logits,
            DecodeState {
                layers,
                position: state.position + 1,
            },
        ))
    }

    /// Continues `prompt` (non-empty) by `new_tokens` tokens: the prompt in parallel form,
    /// then one [`Self::step`] per token (KV cache under softmax, RNN mode under linear
    /// attention). Returns only the new tokens.
    ///
    /// # Errors
    /// When prompt + new tokens exceed the position embeddings, or the prompt is empty.
    pub fn generate(
        &self,
        prompt: &[u32],
        new_tokens: usize,
        sampling: Sampling,
        device: &B::Device,
    ) -> Result<Vec<u32>, ModelError> {
        if prompt.is_empty() {
            return Err(ModelError::Unsupported("generate needs a non-empty prompt".into()));
        }
        self.check_positions(prompt.len() + new_tokens)?;
        let ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, prompt.len()]), device);
        let (logits, mut state) = self.prefill(input)?;
        let [_, n, vocab] = logits.dims();
        let mut last = logits.slice([0..1, n - 1..n, 0..vocab]).reshape([1, vocab]);
        let mut rng = SplitMix64::seed_from_u64(match sampling {
            Sampling::Temperature { seed, .. } => seed,
            Sampling::Greedy => 0,
        });
        let mut out = Vec::with_capacity(new_tokens);
        for i in 0..new_tokens {
            let row: Vec<f32> = last.into_data().convert::<f32>().to_vec().expect("f32 logits");
            let token = pick(&row, sampling, &mut rng);
            out.push(token);
            if i + 1 == new_tokens {
                break;
            }
            let input = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![i64::from(token)], [1, 1]), device);
            let (logits, next) = self.step(input, state)?;
            last = logits;
            state = next;
        }
        Ok(out)
    }

    /// Tied LM head: `[batch, seq, n_embd]` → logits `[batch, seq, vocab]`.
    pub fn lm_logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, d] = hidden.dims();
        let wte = self.wte.weight.val();
        let vocab = wte.dims()[0];
        hidden
            .reshape([batch * seq, d])
            .matmul(wte.transpose())
            .reshape([batch, seq, vocab])
    }
}

/// Picks a token from one row of logits. The generator is kiln's one seeded generator
/// (SplitMix64, `rand_xoshiro`'s), so a seed gives the same text on every backend.
fn pick(logits: &[f32], sampling: Sampling, rng: &mut SplitMix64) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |best, (i, &x)| if x > best.1 { (i, x) } else { best },
            )
            .0
    };
    let index = match sampling {
        Sampling::Greedy => argmax(),
        Sampling::Temperature { temperature, .. } => {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let weights: Vec<f64> = logits
                .iter()
                .map(|&x| ((f64::from(x) - f64::from(max)) / temperature.max(1e-6)).exp())
                .collect();
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * weights.iter().sum::<f64>();
            let mut acc = 0.0;
            weights
                .iter()
                .position(|w| {
                    acc += w;
                    acc > u
                })
                .unwrap_or_else(argmax)
        }
    };
    u32::try_from(index).expect("vocabulary fits u32")
}
