//! Fault injection at metadata write points, for the crash-safety tests.
//!
//! Each place where the pool code writes or syncs metadata calls [`point`]. With the
//! `failpoints` cargo feature, a test arms a countdown on its own thread (`arm`): the n-th
//! point reached panics, which stops the operation exactly there with no cleanup code run
//! (the explicit error paths are skipped by the unwind), as a crash would. The test catches the
//! panic, drops the pool and reopens it from disk. Without the feature [`point`] is empty.

#[cfg(feature = "failpoints")]
mod imp {
    use std::cell::Cell;

    thread_local! {
        static COUNTDOWN: Cell<Option<u32>> = const { Cell::new(None) };
        static HITS: Cell<u32> = const { Cell::new(0) };
    }

    /// The panic payload of an injected crash.
    pub const INJECTED: &str = "hv-storage failpoint: injected crash";

    /// Crashes (panics) at the `n`-th point reached from now on, on this thread (0 = the next).
    pub fn arm(n: u32) {
        COUNTDOWN.with(|c| c.set(Some(n)));
        HITS.with(|h| h.set(0));
    }

    /// Disarms the countdown; returns how many points were passed since [`arm`].
    pub fn disarm() -> u32 {
        COUNTDOWN.with(|c| c.set(None));
        HITS.with(|h| h.get())
    }

    /// A metadata write point named `name`.
    pub fn point(name: &'static str) {
        HITS.with(|h| h.set(h.get() + 1));
        COUNTDOWN.with(|c| match c.get() {
            Some(0) => {
                c.set(None);
                std::panic::panic_any(format!("{INJECTED} at {name}"));
            }
            Some(n) => c.set(Some(n - 1)),
            None => {}
        });
    }
}

#[cfg(feature = "failpoints")]
pub use imp::{arm, disarm, point, INJECTED};

/// A metadata write point (no-op without the `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn point(_name: &'static str) {}
