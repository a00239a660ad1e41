//! Plain-text language-modelling corpora (WikiText raw, Tiny Shakespeare): byte-level token
//! streams, a held-out tail, consecutive blocks for evaluation and seeded random windows for
//! training.

use crate::batching::{below, rng};

/// Vocabulary of the byte-level tokenizer: one id per byte value.
pub const BYTE_VOCAB: usize = 256;

/// Byte-level tokens: each UTF-8 byte of `text` is one id (no training, no unknown token).
pub fn byte_tokens(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

/// Inverse of [`byte_tokens`]; a cut inside a multi-byte character becomes U+FFFD.
pub fn bytes_to_text(ids: &[u32]) -> String {
    let bytes: Vec<u8> = ids.iter().map(|&t| u8::try_from(t).unwrap_or(b'?')).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Splits a stream into a training head and a held-out tail of `tail_fraction` of the
/// tokens (nanoGPT's 90/10 split of Tiny Shakespeare is `tail_fraction = 0.1`).
pub fn split_tail(ids: &[u32], tail_fraction: f64) -> (&[u32], &[u32]) {
    let tail = ((ids.len() as f64) * tail_fraction.clamp(0.0, 1.0)).round() as usize;
    ids.split_at(ids.len() - tail)
}

/// `count` windows of `len` consecutive tokens starting at uniformly drawn offsets
/// (a pure function of `seed`), row-major `[count, len]`. Empty when the stream is shorter
/// than `len`.
pub fn random_windows(ids: &[u32], len: usize, count: usize, seed: u64) -> Vec<u32> {
    random_offsets(ids.len(), len, count, seed)
        .into_iter()
        .flat_map(|start| ids[start..start + len].iter().copied())
        .collect()
}

/// The start offsets [`random_windows`] draws: `count` uniform starts of windows of `len` in
/// a stream of `total` tokens (none when the stream is shorter than one window).
pub fn random_offsets(total: usize, len: usize, count: usize, seed: u64) -> Vec<usize> {
    if total < len {
        return Vec::new();
    }
    let mut rng = rng(seed);
    (0..count).map(|_| below(&mut rng, total - len + 1)).collect()
}

/// Evaluation windows: consecutive blocks of `block_len` predicted tokens, each with its one
/// preceding context token, i.e. windows of `block_len + 1` overlapping by one, covering
/// every token after the first exactly once (a short last window is dropped).
pub fn eval_windows(ids: &[u32], block_len: usize) -> Vec<&[u32]> {
    assert!(block_len > 0, "block_len must be > 0");
    (0..)
        .map(|i| i * block_len)
        .take_while(|&start| start + block_len < ids.len())
        .map(|start| &ids[start..=start + block_len])
        .collect()
}

/// Splits a token stream into consecutive blocks of `block_len` tokens (the tail shorter
/// than a block is dropped, as in HF's `group_texts`).
pub fn token_blocks(ids: &[u32], block_len: usize) -> Vec<Vec<u32>> {
    assert!(block_len > 0, "block_len must be > 0");
    ids.chunks_exact(block_len).map(<[u32]>::to_vec).collect()
}

/// WikiText raw lines without the blank separator lines (a line of one space).
pub fn wikitext_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| !l.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_consecutive_and_drop_the_tail() {
        let ids: Vec<u32> = (0..10).collect();
        assert_eq!(token_blocks(&ids, 4), vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
    }

    #[test]
    fn bytes_round_trip_and_tail_split() {
        let text = "Thou art — sweet";
        let ids = byte_tokens(text);
        assert_eq!(ids.len(), text.len());
        assert_eq!(bytes_to_text(&ids), text);
        let (head, tail) = split_tail(&ids, 0.25);
        assert_eq!(tail.len(), (text.len() as f64 * 0.25).round() as usize);
        assert_eq!([head, tail].concat(), ids);
    }

    #[test]
    fn eval_windows_predict_every_token_once() {
        let ids: Vec<u32> = (0..11).collect();
        let w = eval_windows(&ids, 3);
        assert_eq!(w, vec![&ids[0..4], &ids[3..7], &ids[6..10]]);
        // Predicted tokens (all but each window's first): 1..=9, each once.
        let predicted: Vec<u32> = w.iter().flat_map(|w| w[1..].to_vec()).collect();
        assert_eq!(predicted, (1..10).collect::<Vec<_>>());
    }

    #[test]
    fn random_windows_are_seeded_slices_of_the_stream() {
        let ids: Vec<u32> = (0..100).collect();
        let a = random_windows(&ids, 8, 5, 1);
        assert_eq!(a, random_windows(&ids, 8, 5, 1));
        assert_ne!(a, random_windows(&ids, 8, 5, 2));
        for w in a.chunks(8) {
            assert!(w.windows(2).all(|p| p[1] == p[0] + 1), "{w:?}");
        }
        assert!(random_windows(&ids[..4], 8, 2, 0).is_empty());
    }

    #[test]
    fn wikitext_blank_lines_are_dropped() {
        let text = " = Title = \n \n Some text . \n \n";
        assert_eq!(
            wikitext_lines(text).collect::<Vec<_>>(),
            vec![" = Title = ", " Some text . "]
        );
    }
}
