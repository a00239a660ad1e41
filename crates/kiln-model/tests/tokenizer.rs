//! Tokenizer properties on the real MiniLM `tokenizer.json`.

mod common;

use kiln_data::{TextInput, TextTokenizer};
use proptest::prelude::*;

fn tokenizer(max_length: usize) -> TextTokenizer {
    TextTokenizer::from_file(common::minilm_dir().join("tokenizer.json"), max_length).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Lower-case words round-trip through WordPiece (uncased BERT normalises case).
    #[test]
    fn encode_then_decode_round_trips(words in prop::collection::vec("[a-z]{1,12}", 1..20)) {
        let tok = tokenizer(512);
        let text = words.join(" ");
        let enc = tok.encode_batch(&[TextInput::Single(text.clone())]).unwrap();
        prop_assert_eq!(tok.decode(&enc.row_ids(0)).unwrap(), text);
    }

    /// Pairs: `[CLS] a [SEP] b [SEP]` with segment 0 through the first `[SEP]`, 1 after;
    /// truncation is longest-first and never exceeds `max_length`.
    #[test]
    fn pairs_are_segmented_and_truncated_longest_first(
        a in prop::collection::vec("[a-z]{1,8}", 1..40),
        b in prop::collection::vec("[a-z]{1,8}", 1..40),
        max_length in 8usize..48,
    ) {
        let tok = tokenizer(max_length);
        let full = tokenizer(512);
        let (a, b) = (a.join(" "), b.join(" "));
        let enc = tok.encode_batch(&[TextInput::Pair(a.clone(), b.clone())]).unwrap();
        let ids = enc.row_ids(0);
        prop_assert!(ids.len() <= max_length);
        let sep = tok.token_id("[SEP]").unwrap() as i64;
        let cls = tok.token_id("[CLS]").unwrap() as i64;
        prop_assert_eq!(ids[0], cls);
        let first_sep = ids.iter().position(|&t| t == sep).unwrap();
        prop_assert_eq!(*ids.last().unwrap(), sep);
        let types = &enc.token_type_ids[..ids.len()];
        prop_assert!(types[..=first_sep].iter().all(|&t| t == 0));
        prop_assert!(types[first_sep + 1..].iter().all(|&t| t == 1));
        // Longest-first: the kept lengths differ by at most one unless one side was kept whole.
        let len_a = first_sep - 1;
        let len_b = ids.len() - first_sep - 2;
        let whole = |t: &str| full.encode_batch(&[TextInput::Single(t.to_string())]).unwrap().row_ids(0).len() - 2;
        let (wa, wb) = (whole(&a), whole(&b));
        prop_assert!(len_a <= wa && len_b <= wb);
        if len_a < wa && len_b < wb {
            prop_assert!((len_a as i64 - len_b as i64).abs() <= 1, "a {len_a}/{wa} b {len_b}/{wb}");
        }
    }
}

#[test]
fn batch_padding_is_to_the_longest_row_not_the_files_fixed_128() {
    let tok = tokenizer(128);
    let enc = tok.encode_batch(&["a b c".into(), "a".into()]).unwrap();
    assert_eq!((enc.batch, enc.seq), (2, 5));
    assert_eq!(enc.attention_mask, vec![1, 1, 1, 1, 1, 1, 1, 1, 0, 0]);
}
