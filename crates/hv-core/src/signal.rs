//! Kicking a vCPU thread out of `KVM_RUN`: a real-time signal with an empty handler makes the
//! ioctl return `EINTR`; `immediate_exit` in the shared `kvm_run` page covers the window
//! just before the thread enters the ioctl.

use std::sync::Once;

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// The signal hv uses to kick vCPU threads (SIGRTMIN + 1).
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN() + 1
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the empty handler once per process.
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
