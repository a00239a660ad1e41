//! Tokenization with the model's own `tokenizer.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokenizers::{
    EncodeInput, PaddingDirection, PaddingParams, PaddingStrategy, PostProcessor, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

/// Errors of the data layer.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// `tokenizer.json` could not be parsed.
    #[error("invalid tokenizer {path}: {source}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What the `tokenizers` crate reported (or the panic it raised, caught).
        #[source]
        source: tokenizers::Error,
    },
    /// Encoding failed.
    #[error("tokenization failed: {0}")]
    Encode(#[source] tokenizers::Error),
    /// A truncation length too short to hold a pair's special tokens and one text token
    /// (the `tokenizers` crate would silently stop truncating).
    #[error("max_length = {max_length} is too short: at least {min} (the {specials} special tokens of a text pair and one token of text)")]
    MaxLength {
        /// The length asked for.
        max_length: usize,
        /// The shortest length accepted.
        min: usize,
        /// Special tokens a pair gets.
        specials: usize,
    },
}

/// One input example: a single text or a text pair (JSON: `"text"` or `["a", "b"]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TextInput {
    /// One segment.
    Single(String),
    /// Two segments (`[CLS] a [SEP] b [SEP]` for BERT).
    Pair(String, String),
}

impl From<&str> for TextInput {
    fn from(s: &str) -> Self {
        Self::Single(s.to_string())
    }
}

/// A right-padded batch, row-major `[batch, seq]` (the layout HF tokenizers return).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEncoding {
    /// Number of rows.
    pub batch: usize,
    /// Padded length.
    pub seq: usize,
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// Segment ids (0 for the first text, 1 for the second).
    pub token_type_ids: Vec<i64>,
    /// 1 at real tokens, 0 at padding.
    pub attention_mask: Vec<i64>,
}

impl BatchEncoding {
    /// Ids of row `i` without padding.
    pub fn row_ids(&self, i: usize) -> Vec<i64> {
        let r = i * self.seq..(i + 1) * self.seq;
        self.input_ids[r.clone()]
            .iter()
            .zip(&self.attention_mask[r])
            .filter(|(_, &m)| m == 1)
            .map(|(&id, _)| id)
            .collect()
    }
}

/// The message of a caught panic (`panic!` payloads are a `String` or a `&str`).
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// A Hugging Face tokenizer with explicit truncation (longest-first at `max_length`) and
/// padding (to the longest sequence of each batch, on the right).
///
/// The padding/truncation stored in `tokenizer.json` are replaced: all-MiniLM-L6-v2 ships
/// fixed padding to 128, which would change batch shapes silently.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    max_length: usize,
}

impl TextTokenizer {
    /// Reads `tokenizer.json`; truncates at `max_length` tokens (special tokens included).
    ///
    /// # Errors
    /// [`DataError::Io`] or [`DataError::Tokenizer`].
    pub fn from_file(path: impl AsRef<Path>, max_length: usize) -> Result<Self, DataError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // tokenizers 0.22 panics on some malformed files (an `expect` in its decoder
        // deserialisation, found by `cargo xtask fuzz`): a bad file must be an error here.
        let parsed = std::panic::catch_unwind(|| Tokenizer::from_bytes(&bytes)).unwrap_or_else(|panic| {
            Err(format!(
                "malformed tokenizer file (the tokenizers crate panicked: {})",
                panic_text(&*panic)
            )
            .into())
        });
        let mut inner = parsed.map_err(|source| DataError::Tokenizer {
            path: path.to_path_buf(),
            source,
        })?;
        let specials = inner.get_post_processor().map_or(0, |p| p.added_tokens(true));
        if max_length < specials + 1 {
            return Err(DataError::MaxLength {
                max_length,
                min: specials + 1,
                specials,
            });
        }
        let (pad_id, pad_type_id, pad_token) = match inner.get_padding() {
            Some(p) => (p.pad_id, p.pad_type_id, p.pad_token.clone()),
            None => (0, 0, "[PAD]".to_string()),
        };
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id,
            pad_token,
        }));
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|source| DataError::Tokenizer {
                path: path.to_path_buf(),
                source,
            })?;
        // A trial encoding of a single text and a pair: tokenizers 0.22 also panics at encode
        // time on some files that parse (a post-processor template naming a special token it
        // does not define: "no entry found for key"). Catch that here, once, at load.
        let trial = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inner.encode_batch(
                vec![
                    EncodeInput::Single("a".into()),
                    EncodeInput::Dual("a".into(), "b".into()),
                ],
                true,
            )
        }));
        let problem = match trial {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("cannot encode a sample text: {e}")),
            Err(panic) => Some(format!(
                "cannot encode a sample text (the tokenizers crate panicked: {})",
                panic_text(&*panic)
            )),
        };
        if let Some(message) = problem {
            return Err(DataError::Tokenizer {
                path: path.to_path_buf(),
                source: message.into(),
            });
        }
        Ok(Self { inner, max_length })
    }

    /// Longest sequence produced, special tokens included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of a token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary string of an id (`##ing`, `[CLS]`), if any.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Encodes a batch with special tokens, truncation and padding to the batch's longest.
    ///
    /// # Errors
    /// [`DataError::Encode`] if the tokenizer fails.
    pub fn encode_batch(&self, inputs: &[TextInput]) -> Result<BatchEncoding, DataError> {
        let inputs: Vec<tokenizers::EncodeInput> = inputs
            .iter()
            .map(|t| match t {
                TextInput::Single(a) => a.as_str().into(),
                TextInput::Pair(a, b) => (a.as_str(), b.as_str()).into(),
            })
            .collect();
        let encodings = self.inner.encode_batch(inputs, true).map_err(DataError::Encode)?;
        let batch = encodings.len();
        let seq = encodings.first().map_or(0, |e| e.len());
        let mut out = BatchEncoding {
            batch,
            seq,
            input_ids: Vec::with_capacity(batch * seq),
            token_type_ids: Vec::with_capacity(batch * seq),
            attention_mask: Vec::with_capacity(batch * seq),
        };
        for e in &encodings {
            out.input_ids.extend(e.get_ids().iter().map(|&x| x as i64));
            out.token_type_ids.extend(e.get_type_ids().iter().map(|&x| x as i64));
            out.attention_mask
                .extend(e.get_attention_mask().iter().map(|&x| x as i64));
        }
        Ok(out)
    }

    /// A whole text as one token stream for language modelling: no special tokens, no
    /// truncation, no padding (the windows are cut later, [`crate::lm`]).
    ///
    /// # Errors
    /// [`DataError::Encode`] if the tokenizer fails.
    pub fn encode_stream(&self, text: &str) -> Result<Vec<u32>, DataError> {
        let mut plain = self.inner.clone();
        plain.with_truncation(None).map_err(DataError::Encode)?;
        plain.with_padding(None);
        Ok(plain.encode(text, false).map_err(DataError::Encode)?.get_ids().to_vec())
    }

    /// Decodes ids back to text, skipping special tokens.
    ///
    /// # Errors
    /// [`DataError::Encode`] if the decoder fails.
    pub fn decode(&self, ids: &[i64]) -> Result<String, DataError> {
        let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
        self.inner.decode(&ids, true).map_err(DataError::Encode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    /// Found by `cargo xtask fuzz`: tokenizers 0.22 panics ("Helper") on a syntax error inside
    /// the decoder object; it must be a typed error naming the file.
    #[test]
    fn a_malformed_decoder_is_an_error_not_a_panic() {
        let f = file(r#"{"version": "1.0", "decoder": {"type" "WordPiece"}}"#);
        let err = TextTokenizer::from_file(f.path(), 16).unwrap_err();
        assert!(matches!(err, DataError::Tokenizer { .. }), "{err}");
        assert!(err.to_string().contains(&f.path().display().to_string()), "{err}");
        // The cause stays reachable as a source (here: the caught panic, as an error).
        let source = std::error::Error::source(&err).expect("a source");
        assert!(err.to_string().ends_with(&source.to_string()), "{err} / {source}");
    }

    /// A WordPiece tokenizer with BERT's template, small enough to write inline.
    fn bert_like() -> String {
        r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
          "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "decoder": null,
          "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]}, "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
          "model": {"type": "WordLevel", "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "b": 5}, "unk_token": "[UNK]"}}"#
            .to_string()
    }

    /// `max_length` 0 or 1 used to switch truncation off silently (then a gather panicked on
    /// long texts): below the pair's 3 special tokens + 1 it is refused.
    #[test]
    fn a_max_length_too_short_for_the_special_tokens_is_refused() {
        let f = file(&bert_like());
        for short in [0, 1, 3] {
            let err = TextTokenizer::from_file(f.path(), short).unwrap_err();
            assert!(
                matches!(err, DataError::MaxLength { max_length, min: 4, specials: 3 } if max_length == short),
                "{err}"
            );
        }
        let tok = TextTokenizer::from_file(f.path(), 4).unwrap();
        let enc = tok.encode_batch(&[TextInput::Single("a b a b a".into())]).unwrap();
        assert_eq!(enc.input_ids, vec![2, 4, 5, 3], "truncated to 4 with its specials");
    }

    /// A language-model stream keeps every token of a text longer than `max_length` and adds
    /// no special tokens; the batch encoder of the same tokenizer still truncates.
    #[test]
    fn a_stream_is_the_whole_text_without_special_tokens() {
        let f = file(&bert_like());
        let tok = TextTokenizer::from_file(f.path(), 4).unwrap();
        assert_eq!(tok.encode_stream("a b a b a c").unwrap(), vec![4, 5, 4, 5, 4, 1]);
        let enc = tok.encode_batch(&[TextInput::Single("a b a b a".into())]).unwrap();
        assert_eq!(enc.input_ids, vec![2, 4, 5, 3]);
    }

    /// Found by `cargo xtask fuzz`: a template naming a special token its map lacks parses,
    /// then panics in tokenizers' encode ("no entry found for key"); it is refused at load.
    #[test]
    fn a_template_with_an_undefined_special_token_is_refused_at_load() {
        let text = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
          "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "decoder": null,
          "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]{", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {}},
          "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "a": 1, "b": 2}, "unk_token": "[UNK]"}}"#;
        let f = file(text);
        let err = TextTokenizer::from_file(f.path(), 16).unwrap_err();
        assert!(err.to_string().contains("cannot encode a sample text"), "{err}");
    }
}
