//! What each kind of hv thread may call: the system calls, and for `ioctl` the request numbers.
//!
//! The lists come from reading the code each thread runs (hv-core's run loop and devices; the
//! virtio-blk engines of hv-storage, sync, io_uring and qcow2 through imago; virtio-net's TAP
//! queues in hv-net) and from running every guest test under the filters. A thread inherits
//! the filters of the thread that started it, so the main-thread list contains the other two.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, SeccompCmpArgLen as Len, SeccompCmpOp as Cmp, SeccompCondition as Cond,
    SeccompRule,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

use super::ThreadKind;

/// System call number -> the rules of which one must match (none: always allowed).
pub(super) type Rules = BTreeMap<i64, Vec<SeccompRule>>;

const KVMIO: u32 = 0xAE;
ioctl_io_nr!(KVM_GET_API_VERSION, KVMIO, 0x00);
ioctl_io_nr!(KVM_CREATE_VM, KVMIO, 0x01);
ioctl_io_nr!(KVM_CHECK_EXTENSION, KVMIO, 0x03);
ioctl_io_nr!(KVM_GET_VCPU_MMAP_SIZE, KVMIO, 0x04);
ioctl_iowr_nr!(KVM_GET_SUPPORTED_CPUID, KVMIO, 0x05, kvm_bindings::kvm_cpuid2);
ioctl_io_nr!(KVM_CREATE_VCPU, KVMIO, 0x41);
ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_bindings::kvm_dirty_log);
ioctl_iow_nr!(KVM_SET_USER_MEMORY_REGION, KVMIO, 0x46, kvm_bindings::kvm_userspace_memory_region);
ioctl_io_nr!(KVM_SET_TSS_ADDR, KVMIO, 0x47);
ioctl_io_nr!(KVM_CREATE_IRQCHIP, KVMIO, 0x60);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_bindings::kvm_irqfd);
ioctl_iow_nr!(KVM_CREATE_PIT2, KVMIO, 0x77, kvm_bindings::kvm_pit_config);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_bindings::kvm_ioeventfd);
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_bindings::kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_bindings::kvm_sregs);
ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_bindings::kvm_sregs);
ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_bindings::kvm_msrs);
ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_bindings::kvm_fpu);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_bindings::kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_bindings::kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_CPUID2, KVMIO, 0x90, kvm_bindings::kvm_cpuid2);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_bindings::kvm_vcpu_events);
ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_bindings::kvm_vcpu_events);
// VM state for snapshots and migration (hv-core `snapshot/`, `migration/`).
ioctl_iowr_nr!(KVM_GET_MSR_INDEX_LIST, KVMIO, 0x02, kvm_bindings::kvm_msr_list);
ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_bindings::kvm_irqchip);
ioctl_ior_nr!(KVM_SET_IRQCHIP, KVMIO, 0x63, kvm_bindings::kvm_irqchip);
ioctl_iow_nr!(KVM_SET_CLOCK, KVMIO, 0x7b, kvm_bindings::kvm_clock_data);
ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_bindings::kvm_clock_data);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_bindings::kvm_msrs);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_bindings::kvm_mp_state);
ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_bindings::kvm_mp_state);
ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_bindings::kvm_pit_state2);
ioctl_iow_nr!(KVM_SET_PIT2, KVMIO, 0xa0, kvm_bindings::kvm_pit_state2);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_bindings::kvm_debugregs);
ioctl_iow_nr!(KVM_SET_DEBUGREGS, KVMIO, 0xa2, kvm_bindings::kvm_debugregs);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_bindings::kvm_xsave);
ioctl_iow_nr!(KVM_SET_XSAVE, KVMIO, 0xa5, kvm_bindings::kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_bindings::kvm_xcrs);
ioctl_iow_nr!(KVM_SET_XCRS, KVMIO, 0xa7, kvm_bindings::kvm_xcrs);

/// The vCPU state a parked vCPU reads on its own thread for a snapshot, and restore writes.
fn vcpu_state_ioctls() -> Vec<u64> {
    vec![
        KVM_GET_REGS(),
        KVM_SET_REGS(),
        KVM_GET_SREGS(),
        KVM_SET_SREGS(),
        KVM_GET_MSRS(),
        KVM_SET_MSRS(),
        KVM_GET_LAPIC(),
        KVM_SET_LAPIC(),
        KVM_GET_VCPU_EVENTS(),
        KVM_SET_VCPU_EVENTS(),
        KVM_GET_MP_STATE(),
        KVM_SET_MP_STATE(),
        KVM_GET_DEBUGREGS(),
        KVM_SET_DEBUGREGS(),
        KVM_GET_XSAVE(),
        KVM_SET_XSAVE(),
        KVM_GET_XCRS(),
        KVM_SET_XCRS(),
    ]
}

/// VM-wide state a snapshot, restore or migration reads and writes from the calling thread.
fn vm_state_ioctls() -> Vec<u64> {
    vec![
        KVM_GET_MSR_INDEX_LIST(),
        KVM_GET_IRQCHIP(),
        KVM_SET_IRQCHIP(),
        KVM_GET_CLOCK(),
        KVM_SET_CLOCK(),
        KVM_GET_PIT2(),
        KVM_SET_PIT2(),
    ]
}

/// Calls every hv thread makes: memory, locks, signals, clocks, thread exit, logging.
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_exit,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
];

/// vCPU threads: KVM_RUN and the few vCPU ioctls the run loop and quirks use; bus devices
/// writing console bytes and raising interrupts (eventfd writes), kicking the other vCPUs.
fn vcpu_ioctls() -> Vec<u64> {
    let mut v = vec![KVM_RUN()];
    v.extend(vcpu_state_ioctls());
    v
}

/// Device threads: activation (rings, timers, TAP queue set-up), the epoll loop, block I/O
/// through every engine, TAP reads and writes, and starting worker threads.
const WORKER: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_readv,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_dup,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_sched_getaffinity,
];

/// TAP queue ioctls virtio-net makes at activation and when the driver changes queue pairs.
const WORKER_IOCTLS: &[u64] = &[
    libc::TUNSETOFFLOAD,
    libc::TUNSETVNETHDRSZ,
    libc::TUNSETQUEUE,
    libc::TUNGETIFF,
    libc::FIONBIO,
];

/// The main/API thread: building a VM (files, KVM set-up, guest RAM), starting and stopping
/// its threads, dropping it, and serving a local API socket.
const MAIN: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_open,
    libc::SYS_readlink,
    libc::SYS_getcwd,
    libc::SYS_access,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_memfd_create,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_prctl,
    // The threads it starts install their own filters.
    libc::SYS_seccomp,
    libc::SYS_wait4,
    libc::SYS_exit_group,
    libc::SYS_rt_sigaction,
    libc::SYS_sched_getaffinity,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_pipe2,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
];

/// Host ioctls the main thread makes besides the KVM ones: TAP creation, block sizes, and
/// making a pseudo-terminal.
fn main_ioctls() -> Vec<u64> {
    let mut v = vec![
        KVM_GET_API_VERSION(),
        KVM_CREATE_VM(),
        KVM_CHECK_EXTENSION(),
        KVM_GET_VCPU_MMAP_SIZE(),
        KVM_GET_SUPPORTED_CPUID(),
        KVM_CREATE_VCPU(),
        KVM_GET_DIRTY_LOG(),
        KVM_SET_USER_MEMORY_REGION(),
        KVM_SET_TSS_ADDR(),
        KVM_CREATE_IRQCHIP(),
        KVM_IRQFD(),
        KVM_CREATE_PIT2(),
        KVM_IOEVENTFD(),
        KVM_SET_SREGS(),
        KVM_SET_MSRS(),
        KVM_SET_FPU(),
        KVM_GET_LAPIC(),
        KVM_SET_LAPIC(),
        KVM_SET_CPUID2(),
        libc::TUNSETIFF,
        libc::TUNSETPERSIST,
        libc::BLKSSZGET,
        libc::TCGETS,
        libc::FIOCLEX,
        // A serial pty (hv-vmm's `--serial pty`): grantpt/ptsname, unlockpt, raw mode.
        libc::TIOCGPTN,
        libc::TIOCSPTLCK,
        libc::TCSETS,
    ];
    v.extend(vcpu_state_ioctls());
    v.extend(vm_state_ioctls());
    v.sort_unstable();
    v.dedup();
    v
}

/// What VM state takes beyond [`MAIN`]: `mkdir` for a snapshot directory and `rename` for the
/// crash-safe write of each file in it (glibc may use the old calls or the `*at` forms), and
/// `getpeername` for a migration's TCP peer.
const STATE: &[i64] = &[
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_getpeername,
];

/// `clone` only for threads (CLONE_THREAD set): no thread of a VM forks a process.
fn clone_threads_only() -> Result<SeccompRule, BackendError> {
    let thread = libc::CLONE_THREAD as u64;
    SeccompRule::new(vec![Cond::new(0, Len::Qword, Cmp::MaskedEq(thread), thread)?])
}

fn allow(rules: &mut Rules, calls: &[i64]) {
    for &nr in calls {
        // An unconditional allow replaces any narrower rules.
        rules.insert(nr, Vec::new());
    }
}

fn allow_ioctls(rules: &mut Rules, requests: &[u64]) -> Result<(), BackendError> {
    let entry = rules.entry(libc::SYS_ioctl).or_default();
    for &req in requests {
        entry.push(SeccompRule::new(vec![Cond::new(1, Len::Dword, Cmp::Eq, req)?])?);
    }
    Ok(())
}

/// The rules of one thread kind, with `extra` system calls allowed besides.
pub(super) fn rules(kind: ThreadKind, extra: &[i64]) -> Result<Rules, BackendError> {
    let mut rules = Rules::new();
    allow(&mut rules, COMMON);
    match kind {
        ThreadKind::Vcpu => allow_ioctls(&mut rules, &vcpu_ioctls())?,
        ThreadKind::DeviceWorker => {
            allow(&mut rules, WORKER);
            allow_ioctls(&mut rules, WORKER_IOCTLS)?;
            rules.insert(libc::SYS_clone, vec![clone_threads_only()?]);
            // A new thread names itself (PR_SET_NAME) and nothing else.
            let name = libc::PR_SET_NAME as u64;
            rules.insert(
                libc::SYS_prctl,
                vec![SeccompRule::new(vec![Cond::new(0, Len::Dword, Cmp::Eq, name)?])?],
            );
        }
        ThreadKind::Main => {
            // Unix sockets (the API, `unix:` migration), netlink (links) and TCP (`tcp:`
            // migration); no raw or packet sockets.
            let socket = |family: libc::c_int| -> Result<SeccompRule, BackendError> {
                SeccompRule::new(vec![Cond::new(0, Len::Dword, Cmp::Eq, family as u64)?])
            };
            let families = [libc::AF_UNIX, libc::AF_NETLINK, libc::AF_INET, libc::AF_INET6];
            rules.insert(
                libc::SYS_socket,
                families.into_iter().map(socket).collect::<Result<_, _>>()?,
            );
            allow(&mut rules, WORKER);
            allow(&mut rules, MAIN);
            allow(&mut rules, STATE);
            allow_ioctls(&mut rules, &vcpu_ioctls())?;
            allow_ioctls(&mut rules, WORKER_IOCTLS)?;
            allow_ioctls(&mut rules, &main_ioctls())?;
        }
    }
    // Allowed here so that the `refused` filters' ERRNO is what these calls get: a filter's
    // TRAP would win over it (and glibc calls clone3 with every signal blocked, where SIGSYS
    // kills the process).
    for (_, calls) in refused(kind) {
        allow(&mut rules, &calls);
    }
    allow(&mut rules, extra);
    Ok(rules)
}

/// Calls refused with an error instead of trapping, by errno, so libc falls back or copes:
/// - `clone3` with `ENOSYS`: it passes its flags in memory a filter cannot read, and glibc
///   retries with `clone`, whose flags the device filter checks.
/// - `open`/`openat` with `EACCES`: glibc's malloc reads `/sys/devices/system/cpu/online` (then
///   `/proc/stat`) from whichever thread first needs its arena limit, and copes without them.
///   No vCPU or device thread opens files otherwise; they never get one.
pub(super) fn refused(kind: ThreadKind) -> Vec<(u32, Vec<i64>)> {
    let files = (libc::EACCES as u32, vec![libc::SYS_open, libc::SYS_openat]);
    match kind {
        ThreadKind::Vcpu => vec![files],
        ThreadKind::DeviceWorker => vec![(libc::ENOSYS as u32, vec![libc::SYS_clone3]), files],
        ThreadKind::Main => Vec::new(),
    }
}
