//! Fault injection for tests (hidden): with `HYBRIDGRID_CRASH_AFTER=<n>` set, `up` dies by
//! SIGKILL right after its n-th applied change, with no cleanup at all, so tests can check that
//! the next `up` converges and `down` removes everything from whatever state a crash leaves.

use std::sync::atomic::{AtomicUsize, Ordering};

pub const ENV: &str = "HYBRIDGRID_CRASH_AFTER";

static APPLIED: AtomicUsize = AtomicUsize::new(0);

/// Counts one applied change; kills this process when the limit is reached.
pub(crate) fn applied_one() {
    let Some(limit) = std::env::var(ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
    else {
        return;
    };
    if APPLIED.fetch_add(1, Ordering::SeqCst) + 1 >= limit {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        std::process::abort();
    }
}
