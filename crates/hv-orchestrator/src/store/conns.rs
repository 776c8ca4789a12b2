//! A fixed set of database connections shared by threads: a call takes a free one, or waits
//! for one in turn. Several connections let concurrent requests reach the database at once, so
//! its own locking (not a process-wide mutex) is what keeps claims atomic.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The connections.
#[derive(Debug)]
pub(crate) struct Conns<C> {
    conns: Vec<Mutex<C>>,
    next: AtomicUsize,
}

impl<C> Conns<C> {
    /// Wraps `conns` (at least one).
    pub(crate) fn new(conns: Vec<C>) -> Self {
        assert!(!conns.is_empty(), "a connection set needs at least one connection");
        Conns { conns: conns.into_iter().map(Mutex::new).collect(), next: AtomicUsize::new(0) }
    }

    /// Runs `f` on a connection.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut C) -> R) -> R {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.conns.len();
        for i in 0..n {
            if let Ok(mut c) = self.conns[(start + i) % n].try_lock() {
                return f(&mut c);
            }
        }
        // A panic while holding a connection leaves no half transaction behind: the
        // transaction guard rolled back on unwind, so the connection is still usable.
        let mut c: MutexGuard<'_, C> =
            self.conns[start % n].lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut c)
    }
}
