//! Stopping a run cleanly when it is asked to (SIGTERM): Slurm sends it at a time limit, on
//! preemption and on `scancel`, then SIGKILL after a grace period. The training loop checks
//! [`requested`] after every optimizer step; the run then writes a checkpoint of exactly where it
//! stopped (mid-epoch included) and a failed record saying so, and `--resume` continues from it
//! to the result an uninterrupted run reaches.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Whether a stop was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

extern "C" fn on_signal(_: libc::c_int) {
    REQUESTED.store(true, Ordering::Relaxed);
}

/// Makes SIGTERM request a stop instead of ending the process (`ftlab run` calls it once).
pub fn on_sigterm() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
    }
}
