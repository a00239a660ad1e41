//! Target patterns, as PEFT's `target_modules`: `re:<regex>` (full match), else an exact
//! name or a `.`-separated suffix. A pattern that matches nothing is an error.

use kiln_model::roles::LinearSlot;

use super::StrategyError;

/// A path pattern: `re:<regex>` (full match), else exact or `.`-separated suffix.
#[derive(Debug, Clone)]
pub enum PathPattern {
    /// Full-match regex.
    Regex(regex::Regex),
    /// Exact path or dotted suffix.
    Suffix(String),
}

impl PathPattern {
    /// Parses `text`.
    ///
    /// # Errors
    /// An invalid regex.
    pub fn parse(text: &str) -> Result<Self, regex::Error> {
        Ok(match text.strip_prefix("re:") {
            Some(re) => Self::Regex(regex::Regex::new(&format!("^(?:{re})$"))?),
            None => Self::Suffix(text.to_string()),
        })
    }

    /// Whether `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Regex(re) => re.is_match(path),
            Self::Suffix(s) => path == s || path.ends_with(&format!(".{s}")),
        }
    }
}

/// Resolves `strategy`'s linear-target patterns to [`LinearSlot`]s (each pattern matched
/// against the short name and the Hugging Face module path), in first-match order.
///
/// # Errors
/// [`StrategyError::Invalid`] for a bad regex, [`StrategyError::NoMatch`] for a pattern that
/// matches no linear.
pub fn linear_targets(strategy: &'static str, patterns: &[String]) -> Result<Vec<LinearSlot>, StrategyError> {
    let mut chosen = Vec::new();
    for text in patterns {
        let pattern = PathPattern::parse(text).map_err(|source| StrategyError::Pattern {
            strategy,
            pattern: text.clone(),
            source,
        })?;
        let hits: Vec<LinearSlot> = LinearSlot::ALL
            .into_iter()
            .filter(|s| pattern.matches(s.name()) || pattern.matches(s.hf_path()))
            .collect();
        if hits.is_empty() {
            return Err(StrategyError::NoMatch {
                strategy,
                pattern: text.clone(),
                candidates: LinearSlot::ALL
                    .iter()
                    .map(|s| format!("{} ({})", s.name(), s.hf_path()))
                    .collect(),
            });
        }
        for h in hits {
            if !chosen.contains(&h) {
                chosen.push(h);
            }
        }
    }
    Ok(chosen)
}

/// [`linear_targets`] for LoRA.
///
/// # Errors
/// As [`linear_targets`].
pub fn lora_targets(patterns: &[String]) -> Result<Vec<LinearSlot>, StrategyError> {
    linear_targets("lora", patterns)
}
