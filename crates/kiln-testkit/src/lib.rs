//! Fixtures shared by kiln's own test binaries. A dev-dependency of the crates whose tests
//! need it; nothing here is part of kiln's API and the crate is never published.
//!
//! Owns: process-wide test fixtures that do not depend on burn, and where the committed
//! fixture files are. Must not: hold test assertions (each test states its own), or be a
//! dependency of a library.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The repository's `fixtures/` directory (committed test data).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// A committed PyTorch reference file, `fixtures/reference/<rel>` (small slices of the full
/// references in `shared/reference`, written by `scripts/slice_reference_fixtures.py`; the
/// format is in `fixtures/reference/README.md`). Panics naming the path if it is missing:
/// a missing reference is a failure, never a skipped check.
pub fn reference(rel: &str) -> PathBuf {
    let path = fixtures_dir().join("reference").join(rel);
    assert!(path.exists(), "reference fixture {} is missing", path.display());
    path
}

/// Holds burn's backend random-number generator for one test.
///
/// `Backend::seed` sets one generator per process (burn-flex keeps it in a global), while
/// the test harness runs a binary's tests on parallel threads. A test whose numbers come from
/// seeded draws (model initialisation, LoRA factors, dropout, `Tensor::random`) must hold this
/// guard from before it seeds until its last draw, or another test's seeding or drawing lands
/// between them and the numbers change from run to run (a decoder test's starting perplexity
/// varied between 297 and 491 over four runs of its binary before its tests held it). Every
/// test of a binary that draws takes it as its first statement; the guard survives a panic in
/// another test (poisoning is ignored: the generator has no invariant to break).
pub fn rng_lock() -> MutexGuard<'static, ()> {
    static RNG: Mutex<()> = Mutex::new(());
    RNG.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::rng_lock;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn holders_never_overlap() {
        let inside = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let inside = Arc::clone(&inside);
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let _g = rng_lock();
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn a_panic_while_holding_does_not_block_the_next_test() {
        let _ = std::thread::spawn(|| {
            let _g = rng_lock();
            panic!("a failing test");
        })
        .join();
        drop(rng_lock());
    }
}
