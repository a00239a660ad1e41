//! Plain-text language-modelling corpora (WikiText raw, Tiny Shakespeare) as token blocks.

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
    fn wikitext_blank_lines_are_dropped() {
        let text = " = Title = \n \n Some text . \n \n";
        assert_eq!(
            wikitext_lines(text).collect::<Vec<_>>(),
            vec![" = Title = ", " Some text . "]
        );
    }
}
