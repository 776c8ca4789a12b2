//! Kicking a vCPU thread out of `KVM_RUN`, as Firecracker does: the kicker sends a real-time
//! signal to the vCPU's thread; the handler, running on that thread, sets `immediate_exit` in
//! the thread's own `kvm_run` through a thread-local pointer. An ioctl in progress returns
//! `EINTR`; one about to start returns at once because of `immediate_exit`. No other thread
//! ever writes the vCPU's `kvm_run`.

use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Once;

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

thread_local! {
    /// The `immediate_exit` byte of the `kvm_run` this thread runs (null off vCPU threads).
    /// Const-initialised and without a destructor, so the signal handler may read it.
    static IMMEDIATE_EXIT: AtomicPtr<u8> = const { AtomicPtr::new(null_mut()) };
}

/// The signal hv uses to kick vCPU threads (SIGRTMIN + 1).
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN() + 1
}

/// Points this thread's kick handler at `immediate_exit` (null to stop). The byte must stay
/// mapped until the pointer is cleared again on this same thread.
pub(crate) fn set_kick_target(immediate_exit: *mut u8) {
    IMMEDIATE_EXIT.with(|p| p.store(immediate_exit, Ordering::SeqCst));
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = IMMEDIATE_EXIT.with(|p| p.load(Ordering::SeqCst));
    if !p.is_null() {
        // SAFETY: set_kick_target's caller keeps the byte mapped while the pointer is set, and
        // the handler runs on the thread that set it, so nothing else writes it concurrently.
        unsafe { std::ptr::write_volatile(p, 1) };
    }
}

/// Installs the kick handler once per process.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // A failure leaves the default action (terminate) in place; there is no way to go on
        // safely, so it is reported loudly.
        if let Err(e) = register_signal_handler(kick_signal(), on_kick) {
            panic!("cannot install the vCPU kick signal handler: {e}");
        }
    });
}
