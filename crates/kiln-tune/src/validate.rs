//! Validation at the edge: every value of a [`TrainConfig`] is checked here, in one place,
//! before a run writes or computes anything — so a bad value is an error naming its key, the
//! value and the allowed range, never a panic inside burn (dropout outside [0, 1], a gather
//! past the position table) or a silently altered run (`batch_size = 0` becoming 1, a negative
//! clipping norm flipping the gradient's sign).
//!
//! Ranges that depend on the model (`max_length` ≤ its positions) come from [`ModelLimits`].
//! The tuning strategies' own settings are checked by [`crate::strategy::Tuning::new`]
//! (model-free) and [`crate::strategy::Tuning::check_fits`] (against the model).

use serde::{Deserialize, Deserializer};

use crate::trainer::TrainConfig;

/// A configuration value outside its allowed range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key} = {value}: {expected}")]
pub struct ConfigError {
    /// Dotted key as written in an experiment file (`train.adamw.beta1`).
    pub key: String,
    /// The value given.
    pub value: String,
    /// What is allowed.
    pub expected: String,
}

/// What the model allows, for the checks that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLimits {
    /// Position-embedding rows (`max_position_embeddings`).
    pub max_positions: usize,
    /// Encoder layers.
    pub num_layers: usize,
}

impl ModelLimits {
    /// The limits of a BERT encoder.
    pub fn of<B: burn::prelude::Backend>(bert: &kiln_model::BertModel<B>) -> Self {
        Self {
            max_positions: bert.embeddings.position_embeddings.weight.dims()[0],
            num_layers: bert.num_layers(),
        }
    }
}

fn fail<T: std::fmt::Display>(key: &str, value: T, expected: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError {
        key: key.into(),
        value: value.to_string(),
        expected: expected.into(),
    })
}

fn at_least_one(key: &str, v: usize) -> Result<(), ConfigError> {
    if v == 0 {
        return fail(key, v, "must be at least 1");
    }
    Ok(())
}

fn unit_interval(key: &str, v: f64, closed_right: bool) -> Result<(), ConfigError> {
    let ok = v >= 0.0 && if closed_right { v <= 1.0 } else { v < 1.0 };
    if !ok {
        return fail(
            key,
            v,
            if closed_right {
                "must be in [0, 1]"
            } else {
                "must be in [0, 1)"
            },
        );
    }
    Ok(())
}

fn positive(key: &str, v: f64) -> Result<(), ConfigError> {
    if !(v.is_finite() && v > 0.0) {
        return fail(key, v, "must be a positive finite number");
    }
    Ok(())
}

/// Checks every value of `cfg` (keys as in an experiment file's `[train]` section).
/// [`crate::trainer::train`] checks `max_length` on the tokenizer it is given instead (the
/// length actually used; [`validate_max_length`]), since a library caller may truncate
/// differently from `cfg.max_length`.
///
/// # Errors
/// The first [`ConfigError`] found.
pub fn validate_train(cfg: &TrainConfig, model: &ModelLimits) -> Result<(), ConfigError> {
    at_least_one("train.epochs", cfg.epochs)?;
    at_least_one("train.batch_size", cfg.batch_size)?;
    at_least_one("train.grad_accum", cfg.grad_accum)?;
    at_least_one("train.eval_batch_size", cfg.eval_batch_size)?;
    at_least_one("train.log_every", cfg.log_every)?;
    if let Some(n) = cfg.eval_every {
        at_least_one("train.eval_every", n)?;
    }
    if let Some(n) = cfg.max_train_examples {
        at_least_one("train.max_train_examples", n)?;
    }
    if let Some(n) = cfg.length_group_factor {
        at_least_one("train.length_group_factor", n)?;
    }
    positive("train.lr", cfg.lr)?;
    unit_interval("train.warmup_ratio", cfg.warmup_ratio, true)?;
    validate_adamw("train.adamw", &cfg.adamw)?;
    if let Some(p) = cfg.dropout {
        unit_interval("train.dropout", p, false)?;
    }
    let prompt: usize = cfg.tuning.iter().map(|c| c.strategy().extra_positions()).sum();
    // The soft prompt's virtual tokens take positions too.
    validate_max_length(
        cfg.max_length,
        &ModelLimits {
            max_positions: model.max_positions.saturating_sub(prompt),
            ..*model
        },
    )?;
    if let Some(layers) = &cfg.attention_layers {
        if cfg.attention.is_none() {
            return fail(
                "train.attention_layers",
                format!("{layers:?}"),
                "only meaningful with train.attention (the mechanism to convert to)",
            );
        }
        if let Some(bad) = layers.iter().find(|&&l| l >= model.num_layers) {
            return fail(
                "train.attention_layers",
                bad,
                format!("the model has layers 0..{}", model.num_layers),
            );
        }
    }
    if let Some(t) = &cfg.attention_transfer {
        at_least_one("train.attention_transfer.steps", t.steps)?;
        at_least_one("train.attention_transfer.batch_size", t.batch_size)?;
        positive("train.attention_transfer.lr", t.lr)?;
    }
    Ok(())
}

/// Checks AdamW settings; `prefix` is the section's key (`train.adamw`).
fn validate_adamw(prefix: &str, a: &crate::optim::AdamWConfig) -> Result<(), ConfigError> {
    let key = |k: &str| format!("{prefix}.{k}");
    unit_interval(&key("beta1"), a.beta1, false)?;
    unit_interval(&key("beta2"), a.beta2, false)?;
    positive(&key("eps"), a.eps)?;
    if !(a.weight_decay.is_finite() && a.weight_decay >= 0.0) {
        return fail(&key("weight_decay"), a.weight_decay, "must be a finite number ≥ 0");
    }
    if let Some(norm) = a.max_grad_norm {
        positive(&key("max_grad_norm"), norm)?;
    }
    Ok(())
}

/// Checks every value of a causal-LM training config (keys as the `lm decoder` flags name
/// them; `block_len` against the model's positions is [`crate::lm::train_lm`]'s check).
///
/// # Errors
/// The first [`ConfigError`] found.
pub fn validate_lm(cfg: &crate::lm::LmTrainConfig) -> Result<(), ConfigError> {
    at_least_one("lm.batch_size", cfg.batch_size)?;
    at_least_one("lm.block_len", cfg.block_len)?;
    positive("lm.lr", cfg.lr)?;
    validate_adamw("lm.adamw", &cfg.adamw)
}

/// Checks a truncation length against the model's positions (key `train.max_length`).
///
/// # Errors
/// [`ConfigError`] when `max_length` exceeds the positions.
pub fn validate_max_length(max_length: usize, model: &ModelLimits) -> Result<(), ConfigError> {
    if max_length > model.max_positions {
        return fail(
            "train.max_length",
            max_length,
            format!(
                "the model has {} positions: at most {}",
                model.max_positions, model.max_positions
            ),
        );
    }
    Ok(())
}

/// Serde helper for counts: accepts an integer, or a float only when it is whole (`2.0`), and
/// rejects `1.5` or `-1` — the `config` crate would otherwise round a float into an integer
/// field (`epochs = 1.5` ran 2 epochs).
///
/// # Errors
/// A serde error naming the value.
pub fn whole<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        U(u64),
        I(i64),
        F(f64),
    }
    let bad = |what: String| serde::de::Error::custom(format!("{what}: expected a whole number ≥ 0"));
    match Num::deserialize(d)? {
        Num::U(u) => usize::try_from(u).map_err(|_| bad(u.to_string())),
        Num::I(i) => usize::try_from(i).map_err(|_| bad(i.to_string())),
        Num::F(f) if f.fract() == 0.0 && f >= 0.0 && f < 2f64.powi(53) => Ok(f as usize),
        Num::F(f) => Err(bad(f.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINILM: ModelLimits = ModelLimits {
        max_positions: 512,
        num_layers: 6,
    };

    fn key_of(cfg: TrainConfig) -> String {
        validate_train(&cfg, &MINILM).unwrap_err().key
    }

    #[test]
    fn defaults_pass_and_each_bad_value_names_its_key() {
        validate_train(&TrainConfig::default(), &MINILM).unwrap();
        let d = TrainConfig::default;
        let cases: Vec<(TrainConfig, &str)> = vec![
            (TrainConfig { epochs: 0, ..d() }, "train.epochs"),
            (TrainConfig { batch_size: 0, ..d() }, "train.batch_size"),
            (TrainConfig { grad_accum: 0, ..d() }, "train.grad_accum"),
            (
                TrainConfig {
                    eval_batch_size: 0,
                    ..d()
                },
                "train.eval_batch_size",
            ),
            (TrainConfig { lr: -1e-5, ..d() }, "train.lr"),
            (TrainConfig { lr: f64::NAN, ..d() }, "train.lr"),
            (
                TrainConfig {
                    warmup_ratio: 1.5,
                    ..d()
                },
                "train.warmup_ratio",
            ),
            (
                TrainConfig {
                    warmup_ratio: -0.1,
                    ..d()
                },
                "train.warmup_ratio",
            ),
            (
                TrainConfig {
                    dropout: Some(1.5),
                    ..d()
                },
                "train.dropout",
            ),
            (
                TrainConfig {
                    dropout: Some(1.0),
                    ..d()
                },
                "train.dropout",
            ),
            (TrainConfig { max_length: 513, ..d() }, "train.max_length"),
            (
                TrainConfig {
                    eval_every: Some(0),
                    ..d()
                },
                "train.eval_every",
            ),
        ];
        for (cfg, key) in cases {
            assert_eq!(key_of(cfg), key);
        }
        let adamw = |f: fn(&mut crate::optim::AdamWConfig)| {
            let mut c = d();
            f(&mut c.adamw);
            c
        };
        assert_eq!(key_of(adamw(|a| a.beta1 = 1.0)), "train.adamw.beta1");
        assert_eq!(key_of(adamw(|a| a.beta2 = 1.2)), "train.adamw.beta2");
        assert_eq!(key_of(adamw(|a| a.eps = 0.0)), "train.adamw.eps");
        assert_eq!(
            key_of(adamw(|a| a.max_grad_norm = Some(-1.0))),
            "train.adamw.max_grad_norm"
        );
        assert_eq!(key_of(adamw(|a| a.weight_decay = -0.1)), "train.adamw.weight_decay");
        let e = validate_train(
            &TrainConfig {
                max_length: 100_000,
                ..d()
            },
            &MINILM,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "train.max_length = 100000: the model has 512 positions: at most 512"
        );
    }

    #[test]
    fn lm_configs_are_checked_too() {
        use crate::lm::LmTrainConfig;
        validate_lm(&LmTrainConfig::default()).unwrap();
        let d = LmTrainConfig::default;
        let key = |c: LmTrainConfig| validate_lm(&c).unwrap_err().key;
        assert_eq!(key(LmTrainConfig { batch_size: 0, ..d() }), "lm.batch_size");
        assert_eq!(key(LmTrainConfig { block_len: 0, ..d() }), "lm.block_len");
        assert_eq!(key(LmTrainConfig { lr: -1.0, ..d() }), "lm.lr");
    }

    #[test]
    fn counts_reject_fractions_and_negatives() {
        #[derive(Deserialize)]
        struct T {
            #[serde(deserialize_with = "whole")]
            n: usize,
        }
        let parse = |text: &str| serde_json::from_str::<T>(text).map(|t| t.n);
        assert_eq!(parse(r#"{"n": 3}"#).unwrap(), 3);
        assert_eq!(parse(r#"{"n": 2.0}"#).unwrap(), 2);
        for bad in [r#"{"n": 1.5}"#, r#"{"n": -1}"#, r#"{"n": "x"}"#] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let e = parse(r#"{"n": 1.5}"#).unwrap_err().to_string();
        assert!(e.contains("1.5: expected a whole number"), "{e}");
    }
}
