//! kiln-lens's norm analysis on the real all-MiniLM-L6-v2 against a float64 implementation
//! written from the definitions (explicit loops over i, j, h; values recomputed from the
//! layer input and the weights), to ≤ 1e-4 absolute.

mod common;

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::TensorData;
use kiln_data::{TextInput, TextTokenizer};
use kiln_lens::norm::{analyse_layer, capture};
use kiln_model::hub::{locate_or_fetch, DEFAULT_MODEL_ID};
use kiln_model::BertModel;

type B = Flex;

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[test]
fn mixing_ratios_match_a_float64_implementation_on_minilm() {
    let dir = locate_or_fetch(DEFAULT_MODEL_ID, None, true).unwrap_or_else(|e| panic!("{e}"));
    let device = Default::default();
    let (model, config) = BertModel::<B>::from_pretrained(&dir, false, &device).unwrap();
    let tok = TextTokenizer::from_file(dir.join("tokenizer.json"), 64).unwrap();
    let texts = [
        "The cat sat on the mat because it was tired.",
        "Attention is not only a weight.",
        "Residual connections and layer normalisation matter.",
    ];
    let inputs: Vec<TextInput> = texts.iter().map(|t| TextInput::Single(t.to_string())).collect();
    let enc = tok.encode_batch(&inputs).unwrap();
    let shape = [enc.batch, enc.seq];
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(enc.input_ids.clone(), shape), &device);
    let mask = Tensor::<B, 2, Int>::from_data(TensorData::new(enc.attention_mask.clone(), shape), &device);
    let out = model.forward(ids, None, Some(mask.clone()), capture());
    let (n, s) = (enc.batch, enc.seq);
    assert!(enc.attention_mask.contains(&0), "the batch must contain padding");
    let heads = config.num_attention_heads;
    let d = config.hidden_size;
    let dh = d / heads;
    let real = |b: usize, i: usize| enc.attention_mask[b * s + i] == 1;
    let mut worst = 0f64;
    let mut identity_worst = 0f64;
    for (l, layer) in model.encoder.layer.iter().enumerate() {
        let got = analyse_layer(layer, &out.layers[l], mask.clone(), config.layer_norm_eps);
        let x = common::vec64(out.layers[l].block_input.clone().unwrap());
        let alpha = common::vec64(out.layers[l].attention_probs.clone().unwrap());
        let sa = &layer.attention.self_attention;
        let wv = common::vec64(sa.value.weight.val()); // [d_in, d_out]
        let bv = common::vec64(sa.value.bias.as_ref().unwrap().val());
        let wo = common::vec64(layer.attention.output.dense.weight.val());
        let bo = common::vec64(layer.attention.output.dense.bias.as_ref().unwrap().val());
        let gamma = common::vec64(layer.attention.output.layer_norm.gamma.val());
        let beta = common::vec64(layer.attention.output.layer_norm.beta.clone().unwrap().val());
        let pre_ln = common::vec64(out.layers[l].pre_ln_sum.clone().unwrap());
        let eps = config.layer_norm_eps;
        let got_norm = common::vec64(got.norm_afx);
        let got_mix = [got.attn_w, got.attnres_w, got.attn_n, got.attnres_n, got.attnresln_n].map(common::vec64);
        for b in 0..n {
            // f^h(x_j) for every j, h in float64 from x and the weights.
            let mut f = vec![vec![vec![0f64; d]; heads]; s];
            for j in 0..s {
                let xj = &x[(b * s + j) * d..][..d];
                for h in 0..heads {
                    let v: Vec<f64> = (0..dh)
                        .map(|c| bv[h * dh + c] + (0..d).map(|r| xj[r] * wv[r * d + h * dh + c]).sum::<f64>())
                        .collect();
                    for o in 0..d {
                        f[j][h][o] = (0..dh).map(|c| v[c] * wo[(h * dh + c) * d + o]).sum();
                    }
                }
            }
            let a = |h: usize, i: usize, j: usize| {
                if real(b, j) {
                    alpha[((b * heads + h) * s + i) * s + j]
                } else {
                    0.0
                }
            };
            for i in 0..s {
                if !real(b, i) {
                    for mix in &got_mix {
                        assert_eq!(mix[b * s + i], 0.0);
                    }
                    continue;
                }
                let xi = &x[(b * s + i) * d..][..d];
                // C_i(x_j) = Σ_h α f for every j; the matrix entry is its norm.
                let c: Vec<Vec<f64>> = (0..s)
                    .map(|j| {
                        (0..d)
                            .map(|o| (0..heads).map(|h| a(h, i, j) * f[j][h][o]).sum())
                            .collect()
                    })
                    .collect();
                for j in 0..s {
                    let want = if real(b, j) { norm(&c[j]) } else { 0.0 };
                    worst = worst.max((got_norm[(b * s + i) * s + j] - want).abs());
                }
                let others: Vec<f64> = (0..d)
                    .map(|o| (0..s).filter(|&j| j != i).map(|j| c[j][o]).sum())
                    .collect();
                let own = c[i].clone();
                let res_own: Vec<f64> = own.iter().zip(xi).map(|(p, q)| p + q).collect();
                // y_i = attention output (with b_O) + x_i.
                let y: Vec<f64> = (0..d).map(|o| others[o] + own[o] + bo[o] + xi[o]).collect();
                let mean = y.iter().sum::<f64>() / d as f64;
                let sd = (y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64 + eps).sqrt();
                let g = |t: &[f64]| {
                    let m = t.iter().sum::<f64>() / d as f64;
                    t.iter()
                        .zip(&gamma)
                        .map(|(v, g)| (v - m) / sd * g)
                        .collect::<Vec<f64>>()
                };
                let ratio = |o: &[f64], m: &[f64]| norm(o) / (norm(o) + norm(m));
                let self_w = (0..heads).map(|h| a(h, i, i)).sum::<f64>() / heads as f64;
                let want = [
                    1.0 - self_w,
                    (1.0 - self_w) / 2.0,
                    ratio(&others, &own),
                    ratio(&others, &res_own),
                    ratio(&g(&others), &g(&res_own)),
                ];
                for k in 0..5 {
                    worst = worst.max((got_mix[k][b * s + i] - want[k]).abs());
                }
                // Decomposition identities against the model's own captured pre-LN sum:
                // Σ_j Σ_h α f^h(x_j) + b_O + x_i = y_i, and
                // Σ_j G_i(x_j) + g(b_O) + β = LN(y_i), with g the same centring/scaling.
                let captured = &pre_ln[(b * s + i) * d..][..d];
                for o in 0..d {
                    identity_worst = identity_worst.max((y[o] - captured[o]).abs());
                }
                let cm = captured.iter().sum::<f64>() / d as f64;
                let csd = (captured.iter().map(|v| (v - cm).powi(2)).sum::<f64>() / d as f64 + eps).sqrt();
                let ln: Vec<f64> = (0..d).map(|o| (captured[o] - cm) / csd * gamma[o] + beta[o]).collect();
                let parts: Vec<Vec<f64>> = (0..s)
                    .filter(|&j| real(b, j))
                    .map(|j| {
                        let fj: Vec<f64> = if j == i { res_own.clone() } else { c[j].clone() };
                        g(&fj)
                    })
                    .collect();
                let bias = g(&bo);
                for o in 0..d {
                    let sum: f64 = parts.iter().map(|p| p[o]).sum::<f64>() + bias[o] + beta[o];
                    identity_worst = identity_worst.max((sum - ln[o]).abs());
                }
            }
        }
    }
    assert!(worst <= 1e-4, "max |kiln − float64| = {worst:e}");
    println!("decomposition identities: max error {identity_worst:.2e}");
    assert!(
        identity_worst <= 1e-5,
        "Σ_j G_i(x_j) + g(b_O) + β vs LN(y_i): {identity_worst:e}"
    );
}
