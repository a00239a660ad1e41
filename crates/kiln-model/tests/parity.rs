//! kiln vs PyTorch transformers on the real all-MiniLM-L6-v2 checkpoint and a tiny GPT-2,
//! at the tolerances of `fixtures/reference/README.md` (committed slices of the PyTorch outputs).

mod common;

use burn::backend::Flex;
use kiln_data::{TextInput, TextTokenizer};
use kiln_model::parity::{bert_parity, gpt2_parity, ParityRow, ReferenceFile, Tolerances};
use kiln_model::{BertModel, Gpt2Model};

type B = Flex;

fn assert_all_ok(rows: &[ParityRow], expected_rows: usize) {
    for r in rows {
        println!(
            "{:<22} {:<10} {:>12.3e} <= {:.0e} {}",
            r.tensor,
            r.metric,
            r.value,
            r.tolerance,
            if r.ok { "ok" } else { "FAIL" }
        );
    }
    assert_eq!(rows.len(), expected_rows, "every reference tensor must be compared");
    let bad: Vec<_> = rows.iter().filter(|r| !r.ok).collect();
    assert!(bad.is_empty(), "parity failures: {bad:?}");
}

fn minilm_parity(file: &str) {
    let device = Default::default();
    let (model, _) = BertModel::<B>::from_pretrained(common::minilm_dir(), false, &device).unwrap();
    let reference = ReferenceFile::open(common::reference(file)).unwrap();
    let rows = bert_parity(&model, &reference, Tolerances::default(), &device).unwrap();
    // 7 hidden states, 6 attention maps, the sentence embedding.
    assert_all_ok(&rows, 14);
}

#[test]
fn minilm_sentences_match_pytorch() {
    minilm_parity("minilm/reference.safetensors");
}

#[test]
fn minilm_pairs_match_pytorch() {
    minilm_parity("minilm/reference_pairs.safetensors");
}

#[test]
fn gpt2_tiny_matches_pytorch() {
    let device = Default::default();
    let (model, _) = Gpt2Model::<B>::from_pretrained(common::gpt2_tiny(), &device).unwrap();
    let reference = ReferenceFile::open(common::reference("gpt2-tiny/reference.safetensors")).unwrap();
    let rows = gpt2_parity(&model, &reference, Tolerances::default(), &device).unwrap();
    // 4 hidden states, 3 attention maps, logits.
    assert_all_ok(&rows, 8);
}

fn tokenizer_matches(texts: &str, file: &str) {
    let tok = TextTokenizer::from_file(common::minilm_dir().join("tokenizer.json"), 512).unwrap();
    let inputs: Vec<TextInput> =
        serde_json::from_str(&std::fs::read_to_string(common::reference(texts)).unwrap()).unwrap();
    let enc = tok.encode_batch(&inputs).unwrap();
    let reference = ReferenceFile::open(common::reference(file)).unwrap();
    let (shape, ids) = reference.i64("input_ids").unwrap();
    assert_eq!([enc.batch, enc.seq], [shape[0], shape[1]]);
    assert_eq!(enc.input_ids, ids);
    assert_eq!(enc.token_type_ids, reference.i64("token_type_ids").unwrap().1);
    assert_eq!(enc.attention_mask, reference.i64("attention_mask").unwrap().1);
}

#[test]
fn tokenizer_reproduces_reference_ids_for_sentences() {
    tokenizer_matches("minilm/sentences.json", "minilm/reference.safetensors");
}

#[test]
fn tokenizer_reproduces_reference_ids_for_pairs() {
    tokenizer_matches("minilm/pairs.json", "minilm/reference_pairs.safetensors");
}
