//! Freed memory handed back to the system where a one-shot run has just freed much of it. The
//! dataflows do not know the program's allocator: the program sets [`set_release`] (the
//! `labelqc` binary: jemalloc's purge, `src/memory.rs`), and [`crate::keyed`] calls it once a
//! large operator's final outputs are derived and its states dropped ([`crate::keyed::Emit::Final`]),
//! so that the next operator's peak does not sit on top of pages nobody uses.

use std::sync::OnceLock;

static RELEASE: OnceLock<fn()> = OnceLock::new();

/// Sets what hands freed memory back (the first call wins; later ones are ignored).
pub fn set_release(release: fn()) {
    let _ = RELEASE.set(release);
}

/// Hands freed memory back, if the program said how.
pub(crate) fn release() {
    if let Some(release) = RELEASE.get() {
        release();
    }
}
