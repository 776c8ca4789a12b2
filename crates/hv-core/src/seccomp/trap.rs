//! What happens when a filter refuses a call: `SIGSYS` on the calling thread, whose handler
//! notes the call in a thread-local and makes it fail with `EPERM`; the thread's loop then
//! ends its VM as crashed through the VM link the thread carries.

use std::cell::RefCell;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Once, Weak};

use vmm_sys_util::signal::register_signal_handler;

use super::Violation;
use crate::lifecycle::{CrashInfo, CrashReason, ExitReason};
use crate::vm::Context;

const NONE: i64 = -1;
/// `si_code` of a `SIGSYS` raised by a seccomp filter.
const SYS_SECCOMP: i32 = 1;

thread_local! {
    /// The first call this thread's filter refused since the last [`take_violation`].
    /// Const-initialised and without a destructor, so the signal handler may use it.
    static VIOLATION: AtomicI64 = const { AtomicI64::new(NONE) };
    /// The VM this thread works for (vCPU, device and worker threads).
    static OWNER: RefCell<Option<Weak<Context>>> = const { RefCell::new(None) };
}

/// The last call refused on any thread of the process.
static LAST: AtomicI64 = AtomicI64::new(NONE);

/// The `SIGSYS` member of `siginfo_t` (`_sigsys` in the kernel's union).
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    call_addr: *mut libc::c_void,
    syscall: i32,
    arch: u32,
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, ucontext: *mut libc::c_void) {
    if info.is_null() || ucontext.is_null() {
        return;
    }
    // SAFETY: the kernel passes a valid siginfo_t (SA_SIGINFO), whose SIGSYS layout is
    // SigsysInfo; only plain integers are read.
    let (code, nr) = unsafe {
        let i = &*info.cast::<SigsysInfo>();
        (i.code, i64::from(i.syscall))
    };
    if code != SYS_SECCOMP {
        return;
    }
    let _ = VIOLATION.with(|v| v.compare_exchange(NONE, nr, Ordering::SeqCst, Ordering::SeqCst));
    LAST.store(nr, Ordering::SeqCst);
    // SAFETY: the kernel passes this thread's saved ucontext_t; setting RAX makes the refused
    // call return -EPERM when the handler returns (the call itself was never executed).
    unsafe {
        let uc = &mut *ucontext.cast::<libc::ucontext_t>();
        uc.uc_mcontext.gregs[libc::REG_RAX as usize] = -i64::from(libc::EPERM);
    }
}

/// Installs the `SIGSYS` handler once per process.
pub(super) fn install_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = register_signal_handler(libc::SIGSYS, on_sigsys));
    result
}

/// Takes the first call the calling thread's filter refused since the last take.
pub fn take_violation() -> Option<Violation> {
    let nr = VIOLATION.with(|v| v.swap(NONE, Ordering::SeqCst));
    (nr != NONE).then_some(Violation { syscall: nr })
}

/// The last call refused on any thread of the process (for the main thread, which has no VM
/// to end).
pub fn last_violation() -> Option<Violation> {
    let nr = LAST.load(Ordering::SeqCst);
    (nr != NONE).then_some(Violation { syscall: nr })
}

/// Makes the calling thread work for `ctx`'s VM.
pub(crate) fn set_owner(ctx: Option<Weak<Context>>) {
    OWNER.with(|o| *o.borrow_mut() = ctx);
}

/// The VM the calling thread works for.
pub(crate) fn owner() -> Option<Weak<Context>> {
    OWNER.with(|o| o.borrow().clone())
}

/// If the calling thread's filter refused a call, ends its VM as crashed with that reason
/// (`vcpu` and `regs` filled by the caller when it is a vCPU) and returns the violation.
pub(crate) fn report_violation() -> Option<Violation> {
    let v = take_violation()?;
    let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
    log::error!("thread {thread} made {v}, which its seccomp filter forbids");
    if let Some(ctx) = owner().and_then(|w| w.upgrade()) {
        ctx.control.finish(ExitReason::Crashed(Box::new(CrashInfo {
            vcpu: None,
            reason: CrashReason::SeccompViolation { violation: v, thread },
            regs: None,
            sregs: None,
        })));
    }
    Some(v)
}
