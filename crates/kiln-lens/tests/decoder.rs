//! The analyses that make sense for a decoder, on a small random GPT-2: causal attention maps,
//! attention rollout, gradient × input, integrated gradients and head importance (gate and
//! Taylor), each checked against an independent computation — a float64 rollout product,
//! finite differences along one token's embedding, the completeness axiom, the gate's
//! finite-difference slope, a host recomputation of the Taylor sums from the fused `c_attn`
//! columns — and against causality (a later token never attributes to an earlier output).

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::TensorData;
use kiln_lens::attribution::{gradient_x_input, integrated_gradients, rollout};
use kiln_lens::heads::{head_importance, set_head_gates, taylor_importance};
use kiln_model::{Capture, Gpt2Model, GptConfig};

type A = Autodiff<Flex>;
const D: usize = 16;
const H: usize = 4;
const S: usize = 6;

fn gpt2() -> Gpt2Model<A> {
    let device = Default::default();
    A::seed(&device, 21);
    let config: GptConfig = serde_json::from_str(
        r#"{"vocab_size": 40, "n_positions": 16, "n_embd": 16, "n_layer": 2, "n_head": 4,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}"#,
    )
    .unwrap();
    Gpt2Model::new(&config, &device)
}

fn ids() -> Tensor<A, 2, Int> {
    Tensor::from_data(
        TensorData::new(vec![3i64, 17, 9, 30, 2, 11], [1, S]),
        &Default::default(),
    )
}

/// Log-probability of token `target` at position `at`, from embeddings `[rows, S, D]`.
fn log_prob(m: &Gpt2Model<A>, emb: Tensor<A, 3>, at: usize, target: usize) -> Tensor<A, 1> {
    let rows = emb.dims()[0];
    let h = m.decode(emb, None, Capture::none()).last_hidden_state;
    let logits = m.lm_logits(h);
    let vocab = logits.dims()[2];
    burn::tensor::activation::log_softmax(logits.slice([0..rows, at..at + 1, 0..vocab]), 2)
        .slice([0..rows, 0..1, target..target + 1])
        .reshape([rows])
}

fn floats<const N: usize>(t: Tensor<Flex, N>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

#[test]
fn causal_attention_rolls_out_to_the_float64_product_and_never_looks_ahead() {
    let _rng = kiln_testkit::rng_lock();
    let m = gpt2();
    let capture = Capture {
        attention_probs: true,
        ..Capture::none()
    };
    let out = m.forward(ids(), None, capture);
    let attentions: Vec<Tensor<A, 4>> = out.layers.iter().map(|l| l.attention_probs.clone().unwrap()).collect();
    let mut want = vec![vec![0f64; S * S]; 1];
    want[0] = (0..S * S).map(|k| if k / S == k % S { 1.0 } else { 0.0 }).collect();
    for a in &attentions {
        let p: Vec<f32> = a.clone().into_data().to_vec().unwrap();
        // Causal softmax rows: nothing above the diagonal, each row a distribution.
        for row in p.chunks(S).enumerate() {
            let (i, r) = (row.0 % S, row.1);
            assert!(r[i + 1..].iter().all(|&v| v == 0.0), "row {i}: {r:?}");
            assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        // Host rollout step: mean over heads, 0.5·A + 0.5·I, product on the left.
        let mut layer = vec![0f64; S * S];
        for h in 0..H {
            for k in 0..S * S {
                layer[k] += f64::from(p[h * S * S + k]) / H as f64;
            }
        }
        let mut next = vec![0f64; S * S];
        for i in 0..S {
            for j in 0..S {
                next[i * S + j] = (0..S)
                    .map(|k| {
                        let mixed = 0.5 * layer[i * S + k] + if i == k { 0.5 } else { 0.0 };
                        mixed * want[0][k * S + j]
                    })
                    .sum();
            }
        }
        want[0] = next;
    }
    let mask = Tensor::<A, 2, Int>::ones([1, S], &Default::default());
    let got: Vec<f32> = rollout(&attentions, mask).into_data().to_vec().unwrap();
    for (k, (g, w)) in got.iter().zip(&want[0]).enumerate() {
        assert!((f64::from(*g) - w).abs() < 1e-6, "[{}][{}] {g} vs {w}", k / S, k % S);
        if k % S > k / S {
            assert_eq!(*g, 0.0);
        }
    }
}

#[test]
fn gradient_attributions_match_finite_differences_and_respect_causality() {
    let _rng = kiln_testkit::rng_lock();
    let m = gpt2();
    let emb = m.embed(ids()).detach();
    // The next-token log-probability at position 3: tokens 4 and 5 cannot contribute.
    let f = |e: Tensor<A, 3>| log_prob(&m, e, 3, 7);
    let (_, per_token) = gradient_x_input(emb.clone(), f);
    let per_token = floats(per_token);
    assert_eq!(&per_token[4..], &[0.0, 0.0]);
    // Σ_d g·x of token t is the derivative along token t's own embedding.
    let e: Vec<f32> = emb.clone().into_data().to_vec().unwrap();
    for (t, &attributed) in per_token.iter().enumerate().take(4) {
        let along = |sign: f32| {
            let scaled: Vec<f32> = e
                .iter()
                .enumerate()
                .map(|(k, &v)| if k / D == t { v * (1.0 + sign * 1e-2) } else { v })
                .collect();
            let x = Tensor::<A, 3>::from_data(TensorData::new(scaled, [1, S, D]), &Default::default());
            f64::from(f(x).into_scalar())
        };
        let fd = (along(1.0) - along(-1.0)) / 2e-2;
        let got = f64::from(attributed);
        assert!((got - fd).abs() < 2e-3 + 0.02 * fd.abs(), "token {t}: {got} vs {fd}");
    }
    // Integrated gradients from zero embeddings are complete and causal too.
    let (_, ig) = integrated_gradients(emb.clone(), None, 64, 16, f);
    let ig = floats(ig);
    assert_eq!(&ig[4..], &[0.0, 0.0]);
    let delta = f64::from(f(emb.clone()).into_scalar()) - f64::from(f(emb.zeros_like()).into_scalar());
    let sum: f64 = ig.iter().map(|&v| f64::from(v)).sum();
    assert!(
        (sum - delta).abs() < 0.01 * delta.abs() + 1e-4,
        "Σ IG {sum} vs f(x) − f(0) {delta}"
    );
}

fn loss(m: &Gpt2Model<A>) -> Tensor<A, 1> {
    log_prob(m, m.embed(ids()), S - 1, 5).neg()
}

fn gates(layer: usize, head: usize, value: f32) -> Vec<Vec<f32>> {
    common::one_gate(2, H, layer, head, value)
}

#[test]
fn decoder_head_importance_is_the_gate_slope_and_taylor_sums_the_fused_columns() {
    let _rng = kiln_testkit::rng_lock();
    let base = gpt2();
    // A zero gate equals deleting the head's rows of c_proj.
    let mut masked = base.clone();
    set_head_gates(&mut masked, Some(&gates(1, 2, 0.0)));
    let mut cut = base.clone();
    let proj = &mut cut.h[1].attn.c_proj;
    let mut w: Vec<f32> = proj.weight.val().into_data().to_vec().unwrap();
    let dh = D / H;
    w[2 * dh * D..3 * dh * D].iter_mut().for_each(|v| *v = 0.0);
    proj.weight = Param::from_tensor(Tensor::from_data(TensorData::new(w, [D, D]), &Default::default()));
    let (a, b) = (loss(&masked).into_scalar(), loss(&cut).into_scalar());
    assert!((a - b).abs() < 1e-5, "{a} vs {b}");

    let imp = head_importance(&base, 1, false, |m, _| loss(m));
    for (layer, head) in [(0, 1), (1, 0), (1, 3)] {
        let at = |v: f32| {
            let mut m = base.clone();
            set_head_gates(&mut m, Some(&gates(layer, head, v)));
            f64::from(loss(&m).into_scalar())
        };
        let slope = ((at(1.01) - at(0.99)) / 0.02).abs();
        let got = imp[layer][head];
        assert!(
            (got - slope).abs() < 1e-3 + 0.02 * slope,
            "[{layer}][{head}] {got} vs {slope}"
        );
    }

    // Taylor: c_attn's columns are [q | k | v], each [heads][d_head]; c_proj's rows [heads][d_head].
    let got = taylor_importance(&base, 1, |m, _| loss(m));
    let grads = loss(&base).backward();
    let host = |t: Tensor<A, 2>| -> (Vec<f32>, Vec<f32>) {
        let g = t.grad(&grads).unwrap().into_data().to_vec().unwrap();
        (t.into_data().to_vec().unwrap(), g)
    };
    for (l, block) in base.h.iter().enumerate() {
        let mut want = [0f64; H];
        let (w, g) = host(block.attn.c_attn.weight.val());
        for r in 0..D {
            for c in 0..3 * D {
                want[(c % D) / dh] += f64::from(w[r * 3 * D + c] * g[r * 3 * D + c]).powi(2);
            }
        }
        let b = block.attn.c_attn.bias.as_ref().unwrap().val();
        let gb: Vec<f32> = b.grad(&grads).unwrap().into_data().to_vec().unwrap();
        let b: Vec<f32> = b.into_data().to_vec().unwrap();
        for c in 0..3 * D {
            want[(c % D) / dh] += f64::from(b[c] * gb[c]).powi(2);
        }
        let (w, g) = host(block.attn.c_proj.weight.val());
        for r in 0..D {
            for c in 0..D {
                want[r / dh] += f64::from(w[r * D + c] * g[r * D + c]).powi(2);
            }
        }
        common::assert_taylor_row(l, &got[l], &want);
    }
}
