//! How strategy components combine into one [`super::Tuning`]. The rules read only what each
//! component declares ([`Strategy::effect`], [`Strategy::inserts`]), so they hold for
//! strategies added later:
//!
//! - a component appears at most once;
//! - at most one gradient mask per run;
//! - full fine-tuning does not combine with a selection (one trains everything, the other
//!   restricts what trains);
//! - two components cannot insert into the same place (Houlsby and Pfeiffer both put an
//!   adapter after the FFN output).
//!
//! So `[bitfit, child_tuning_f]` or `[lora, child_tuning_d]` compose; `[full, bitfit]`, two
//! Child-Tuning variants, or a component twice are errors.

use super::{Effect, Strategy, StrategyError};

/// Validates each component and checks every pair against the rules above.
///
/// # Errors
/// The first invalid setting ([`StrategyError::Invalid`], [`StrategyError::NoMatch`]) or
/// incompatible pair ([`StrategyError::Incompatible`]).
pub fn check(parts: &[&dyn Strategy]) -> Result<(), StrategyError> {
    for part in parts {
        part.validate()?;
    }
    for (i, a) in parts.iter().enumerate() {
        for b in &parts[i + 1..] {
            if let Some(reason) = conflict(*a, *b)? {
                return Err(StrategyError::Incompatible(a.name(), b.name(), reason));
            }
        }
    }
    Ok(())
}

fn conflict(a: &dyn Strategy, b: &dyn Strategy) -> Result<Option<&'static str>, StrategyError> {
    if a.name() == b.name() {
        return Ok(Some("a component appears twice"));
    }
    let (ea, eb) = (a.effect(), b.effect());
    if ea == Effect::MasksGradients && eb == Effect::MasksGradients {
        return Ok(Some("only one gradient mask per run"));
    }
    let full_and_selection = |x: Effect, y: Effect| x == Effect::TrainsAll && y == Effect::Selects;
    if full_and_selection(ea, eb) || full_and_selection(eb, ea) {
        return Ok(Some(
            "full fine-tuning trains everything, the other restricts what trains",
        ));
    }
    let (ia, ib) = (a.inserts()?, b.inserts()?);
    if ia.iter().any(|x| ib.iter().any(|y| x.place() == y.place())) {
        return Ok(Some("both insert a module in the same place"));
    }
    Ok(None)
}
