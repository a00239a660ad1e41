//! Head gates: ones change nothing, a zero gate equals deleting the head's rows of W_O, and
//! importance equals the finite-difference slope of the loss in the gate.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::TensorData;
use kiln_lens::heads::{head_importance, prune_least_important, set_head_gates, taylor_importance};
use kiln_model::{BertModel, Capture};

type A = Autodiff<Flex>;
const H: usize = 4;
const D: usize = 16;

fn ids() -> Tensor<A, 2, Int> {
    Tensor::from_data(
        TensorData::new(vec![3i64, 9, 14, 2, 7, 30, 41, 5], [2, 4]),
        &Default::default(),
    )
}

fn loss(m: &BertModel<A>) -> Tensor<A, 1> {
    let h = m.forward(ids(), None, None, Capture::none()).last_hidden_state;
    let w = Tensor::<A, 1, Int>::arange(0..D as i64, &h.device())
        .float()
        .cos()
        .reshape([1, 1, D]);
    (h * w).sum().reshape([1])
}

fn out(m: &BertModel<A>) -> Vec<f32> {
    m.forward(ids(), None, None, Capture::none())
        .last_hidden_state
        .into_data()
        .to_vec()
        .unwrap()
}

fn gates(layer: usize, head: usize, value: f32) -> Vec<Vec<f32>> {
    common::one_gate(2, H, layer, head, value)
}

#[test]
fn unit_gates_change_nothing_and_a_zero_gate_deletes_the_head() {
    let _rng = kiln_testkit::rng_lock();
    let base = common::tiny_bert::<A>(8);
    let mut gated = base.clone();
    set_head_gates(&mut gated, None);
    assert_eq!(out(&gated), out(&base));
    let mut masked = base.clone();
    set_head_gates(&mut masked, Some(&gates(1, 2, 0.0)));
    // Independent: zero head 2's input rows of layer 1's output projection.
    let mut cut = base.clone();
    let dense = &mut cut.encoder.layer[1].attention.output.dense;
    let mut w: Vec<f32> = dense.weight.val().into_data().to_vec().unwrap();
    let dh = D / H;
    for r in 2 * dh..3 * dh {
        for c in 0..D {
            w[r * D + c] = 0.0;
        }
    }
    dense.weight = Param::from_tensor(Tensor::from_data(TensorData::new(w, [D, D]), &Default::default()));
    let (a, b) = (out(&masked), out(&cut));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    assert!(worst < 1e-5, "{worst}");
}

#[test]
fn importance_is_the_absolute_slope_of_the_loss_in_each_gate() {
    let _rng = kiln_testkit::rng_lock();
    let base = common::tiny_bert::<A>(8);
    let imp = head_importance(&base, 1, false, |m, _| loss(m));
    for (layer, head) in [(0, 0), (0, 3), (1, 1)] {
        let at = |v: f32| {
            let mut m = base.clone();
            set_head_gates(&mut m, Some(&gates(layer, head, v)));
            loss(&m).into_scalar() as f64
        };
        let eps = 1e-2;
        let slope = ((at(1.0 + eps as f32) - at(1.0 - eps as f32)) / (2.0 * eps)).abs();
        let got = imp[layer][head];
        assert!(
            (got - slope).abs() < 1e-3 + 0.02 * slope,
            "[{layer}][{head}] {got} vs {slope}"
        );
    }
    let normalized = head_importance(&base, 1, true, |m, _| loss(m));
    for row in &normalized {
        assert!((row.iter().map(|v| v * v).sum::<f64>().sqrt() - 1.0).abs() < 1e-9);
    }
}

#[test]
fn taylor_scores_sum_each_heads_slices_and_pruning_drops_the_lowest() {
    let _rng = kiln_testkit::rng_lock();
    let base = common::tiny_bert::<A>(8);
    let got = taylor_importance(&base, 1, |m, _| loss(m));
    // Host recomputation from the full gradients, slicing by index arithmetic.
    let grads = loss(&base).backward();
    let host = |t: Tensor<A, 2>| -> (Vec<f32>, Vec<f32>) {
        let g = t.grad(&grads).unwrap().into_data().to_vec().unwrap();
        (t.into_data().to_vec().unwrap(), g)
    };
    let host1 = |t: Tensor<A, 1>| -> (Vec<f32>, Vec<f32>) {
        let g = t.grad(&grads).unwrap().into_data().to_vec().unwrap();
        (t.into_data().to_vec().unwrap(), g)
    };
    let dh = D / H;
    for (l, layer) in base.encoder.layer.iter().enumerate() {
        let sa = &layer.attention.self_attention;
        let mut want = [0f64; H];
        for lin in [&sa.query, &sa.key, &sa.value] {
            let (w, g) = host(lin.weight.val());
            let (b, gb) = host1(lin.bias.as_ref().unwrap().val());
            for r in 0..D {
                for c in 0..D {
                    want[c / dh] += ((w[r * D + c] * g[r * D + c]) as f64).powi(2);
                }
            }
            for c in 0..D {
                want[c / dh] += ((b[c] * gb[c]) as f64).powi(2);
            }
        }
        let (w, g) = host(layer.attention.output.dense.weight.val());
        for r in 0..D {
            for c in 0..D {
                want[r / dh] += ((w[r * D + c] * g[r * D + c]) as f64).powi(2);
            }
        }
        common::assert_taylor_row(l, &got[l], &want);
    }
    let importance = [vec![0.5, 0.1, 0.9, 0.3], vec![0.2, 0.8, 0.05, 0.7]];
    let gates = prune_least_important(&importance, 3);
    assert_eq!(gates, vec![vec![1.0, 0.0, 1.0, 1.0], vec![0.0, 1.0, 0.0, 1.0]]);
}
