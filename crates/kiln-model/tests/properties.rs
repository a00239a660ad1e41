//! Invariants that must hold for any input: padding never changes real tokens' outputs, the
//! fused and explicit attention paths agree, and captured tensors satisfy their definitions.

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::{TensorData, Tolerance};
use kiln_model::{BertConfig, BertModel, Capture, Gpt2Model, GptConfig, ModelOutput};
use proptest::prelude::*;

type B = Flex;
const VOCAB: usize = 50;

fn tiny_bert() -> BertModel<B> {
    let config: BertConfig = serde_json::from_str(
        r#"{"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 32, "max_position_embeddings": 32}"#,
    )
    .unwrap();
    BertModel::new(&config, false, &Default::default())
}

fn tiny_gpt2() -> Gpt2Model<B> {
    let config: GptConfig =
        serde_json::from_str(r#"{"vocab_size": 50, "n_positions": 32, "n_embd": 16, "n_layer": 2, "n_head": 4}"#)
            .unwrap();
    Gpt2Model::new(&config, &Default::default())
}

/// Right-pads `rows` with id 0 → (ids, mask) tensors `[N, S]`.
fn pad(rows: &[Vec<i64>]) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
    let seq = rows.iter().map(Vec::len).max().unwrap();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for r in rows {
        ids.extend(r.iter().copied().chain(std::iter::repeat_n(0, seq - r.len())));
        mask.extend(std::iter::repeat_n(1i64, r.len()).chain(std::iter::repeat_n(0, seq - r.len())));
    }
    let device = Default::default();
    (
        Tensor::from_data(TensorData::new(ids, [rows.len(), seq]), &device),
        Tensor::from_data(TensorData::new(mask, [rows.len(), seq]), &device),
    )
}

fn rows_strategy() -> impl Strategy<Value = Vec<Vec<i64>>> {
    prop::collection::vec(prop::collection::vec(1..VOCAB as i64, 1..10), 1..5)
}

/// Each row alone (unpadded) vs the same row inside the padded batch.
fn check_padding_invariance(
    rows: &[Vec<i64>],
    run: impl Fn(Tensor<B, 2, Int>, Option<Tensor<B, 2, Int>>) -> Tensor<B, 3>,
) {
    let (ids, mask) = pad(rows);
    let batched = run(ids, Some(mask));
    for (i, r) in rows.iter().enumerate() {
        let (alone_ids, _) = pad(std::slice::from_ref(r));
        let alone = run(alone_ids, None);
        let width = alone.dims()[2];
        let in_batch = batched.clone().slice([i..i + 1, 0..r.len(), 0..width]);
        in_batch
            .into_data()
            .assert_approx_eq::<f32>(&alone.into_data(), Tolerance::absolute(2e-5));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn bert_padding_never_changes_real_tokens(rows in rows_strategy()) {
        let model = tiny_bert();
        check_padding_invariance(&rows, |ids, mask| model.forward(ids, None, mask, Capture::none()).last_hidden_state);
    }

    #[test]
    fn gpt2_padding_never_changes_real_tokens(rows in rows_strategy()) {
        let model = tiny_gpt2();
        check_padding_invariance(&rows, |ids, mask| {
            let h = model.forward(ids, mask, Capture::none()).last_hidden_state;
            model.lm_logits(h)
        });
    }

    #[test]
    fn gpt2_never_looks_ahead(row in prop::collection::vec(1..VOCAB as i64, 2..10), t in 0usize..8, new_id in 1..VOCAB as i64) {
        let t = t % (row.len() - 1);
        let model = tiny_gpt2();
        let mut changed = row.clone();
        changed[t + 1] = new_id;
        let run = |r: &Vec<i64>| model.forward(pad(std::slice::from_ref(r)).0, None, Capture::none()).last_hidden_state;
        let (a, b) = (run(&row), run(&changed));
        let head = |x: Tensor<B, 3>| x.slice([0..1, 0..t + 1, 0..16]).into_data();
        head(a).assert_approx_eq::<f32>(&head(b), Tolerance::absolute(1e-6));
    }
}

fn assert_close<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>, tol: f32) {
    a.into_data()
        .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(tol));
}

fn check_capture(plain: &ModelOutput<B>, full: &ModelOutput<B>, layers: usize) {
    // Fused attention (no weights requested) and the explicit path agree.
    assert_close(plain.last_hidden_state.clone(), full.last_hidden_state.clone(), 1e-5);
    assert!(
        plain.hidden_states.is_empty() && plain.layers.is_empty(),
        "nothing captured when off"
    );
    assert_eq!((full.hidden_states.len(), full.layers.len()), (layers + 1, layers));
    for (l, rec) in full.layers.iter().enumerate() {
        let input = rec.block_input.clone().unwrap();
        assert_close(input.clone(), full.hidden_states[l].clone(), 0.0);
        // Post-LN BERT and pre-LN GPT-2 alike: pre-LN sum = attention output + block input.
        assert_close(
            rec.pre_ln_sum.clone().unwrap(),
            rec.attention_output.clone().unwrap() + input,
            1e-6,
        );
        let p = rec.attention_probs.clone().unwrap();
        let [n, h, s, _] = p.dims();
        assert_close(p.sum_dim(3), Tensor::ones([n, h, s, 1], &Default::default()), 1e-5);
        assert_eq!(rec.values.clone().unwrap().dims(), [n, h, s, 4]);
    }
}

#[test]
fn capture_is_consistent_and_free_when_off() {
    let rows = vec![vec![3, 4, 5, 6, 7], vec![8, 9]];
    let (ids, mask) = pad(&rows);
    let bert = tiny_bert();
    let plain = bert.forward(ids.clone(), None, Some(mask.clone()), Capture::none());
    let full = bert.forward(ids.clone(), None, Some(mask.clone()), Capture::all());
    check_capture(&plain, &full, 2);
    let gpt = tiny_gpt2();
    check_capture(
        &gpt.forward(ids.clone(), Some(mask.clone()), Capture::none()),
        &gpt.forward(ids, Some(mask), Capture::all()),
        2,
    );
}

#[test]
fn embedding_leaf_receives_gradients() {
    use burn::backend::Autodiff;
    type A = Autodiff<B>;
    let config: BertConfig = serde_json::from_str(
        r#"{"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 4,
            "intermediate_size": 32, "max_position_embeddings": 32}"#,
    )
    .unwrap();
    let device = Default::default();
    let model = BertModel::<A>::new(&config, false, &device);
    let ids = Tensor::<A, 2, Int>::from_data(TensorData::new(vec![1i64, 2, 3], [1, 3]), &device);
    let emb = model.embed(ids, None).detach().require_grad();
    let out = model.encode(emb.clone(), None, Capture::none());
    // A weighted sum: the plain sum of a LayerNorm output row is the constant `16·β`, whose
    // gradient is identically zero.
    let weights = Tensor::<A, 1, Int>::arange(1..17, &device).float().reshape([1, 1, 16]);
    let grads = (out.last_hidden_state.slice([0..1, 0..1, 0..16]) * weights)
        .sum()
        .backward();
    let g = emb.grad(&grads).expect("the embedding leaf has a gradient");
    assert_eq!(g.dims(), [1, 3, 16]);
    // Token 0's output depends on every token through attention.
    let per_token = g.abs().sum_dim(2).into_data().to_vec::<f32>().unwrap();
    assert!(per_token.iter().all(|&x| x > 0.0), "{per_token:?}");
}
