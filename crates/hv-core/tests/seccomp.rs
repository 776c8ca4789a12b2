//! The VMM confines itself: every thread of a running VM has a seccomp filter, and a device
//! model that makes a forbidden call ends its own VM as crashed, naming the call, while the
//! process and other VMs in it run on.

use std::os::fd::AsRawFd;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hv_core::bus::BusDevice;
use hv_core::console::Capture;
use hv_core::seccomp::SeccompMode;
use hv_core::virtio::worker::Worker;
use hv_core::virtio::{ActivateError, Activation, VirtioDevice};
use hv_core::{CrashReason, ExitReason, VmBuilder};
use hv_test_support::{have_kvm, require, test_guest, thread_seccomp_modes};

const TIMEOUT: Duration = Duration::from_secs(120);

fn guest(test: &str) -> (VmBuilder, Capture) {
    let console = Capture::new();
    let b = VmBuilder::new()
        .kernel(test_guest())
        .memory_mib(64)
        .cmdline(test.to_string())
        .serial_output(console.clone());
    (b, console)
}

/// Opens a raw packet socket: something no thread of a VM ever needs (the main thread may open
/// Unix, netlink and TCP sockets, for its API and migrations). Returns the errno, 0 on success.
fn forbidden_call() -> i32 {
    // SAFETY: socket takes no pointers; the fd, if any, is closed at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
    }
    // SAFETY: fd is a socket this function just opened.
    unsafe { libc::close(fd) };
    0
}

/// A virtio device the test guest takes for a disk (`test=blk`): on the first queue
/// notification its worker says so, waits for the test's go, then makes the forbidden call and
/// sends back its errno.
struct Trapdoor {
    notified: Sender<()>,
    go: Arc<Mutex<Receiver<()>>>,
    errno: Sender<(Option<std::io::ErrorKind>, i32)>,
    worker: Option<Worker>,
}

impl VirtioDevice for Trapdoor {
    fn device_type(&self) -> u32 {
        2
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![16]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        hv_core::virtio::read_config_space(&[0; 8], offset, data);
    }
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let q = a.queues.into_iter().next().ok_or(ActivateError::MissingQueue(0))?;
        let (notified, go, errno) = (self.notified.clone(), self.go.clone(), self.errno.clone());
        let fd = q.notify.as_raw_fd();
        let worker = Worker::spawn("hv-trapdoor", vec![(fd, 0)], move |_| {
            let _ = q.notify.read();
            let _ = notified.send(());
            let _ = go.lock().unwrap().recv_timeout(TIMEOUT);
            // Opening a file is refused softly (EACCES, as glibc's malloc needs); the socket
            // traps.
            let open = std::fs::File::open("/etc/passwd").err().map(|e| e.kind());
            let _ = errno.send((open, forbidden_call()));
        })
        .map_err(ActivateError::Worker)?;
        self.worker = Some(worker);
        Ok(())
    }
    fn reset(&mut self) {
        self.worker = None;
    }
}

fn violation(r: &ExitReason) -> Option<(&'static str, String)> {
    let ExitReason::Crashed(info) = r else { return None };
    match &info.reason {
        CrashReason::SeccompViolation { violation, thread } => {
            Some((violation.name()?, thread.clone()))
        }
        _ => None,
    }
}

#[test]
fn every_thread_is_confined_and_a_forbidden_call_in_a_worker_crashes_only_its_vm() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (notified_tx, notified) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    let (errno_tx, errno) = mpsc::channel();
    let device = Trapdoor {
        notified: notified_tx,
        go: Arc::new(Mutex::new(go_rx)),
        errno: errno_tx,
        worker: None,
    };
    let (b, out) = guest("test=blk");
    let bad = b.vcpus(2).virtio_device(Box::new(device)).build().unwrap();
    let (b, good_out) = guest("test=ticks count=1000000");
    let good = b.build().unwrap();
    good.start().unwrap();
    bad.start().unwrap();
    notified.recv_timeout(TIMEOUT).unwrap_or_else(|_| panic!("no request: {}", out.text()));

    // Both VMs run: every hv thread (vCPUs, device thread, worker) has a filter.
    let threads = thread_seccomp_modes();
    let hv: Vec<_> = threads.iter().filter(|(n, _)| n.starts_with("hv-")).collect();
    for name in ["hv-vcpu0", "hv-vcpu1", "hv-devices", "hv-trapdoor"] {
        assert!(hv.iter().any(|(n, _)| n == name), "no thread {name} in {threads:?}");
    }
    assert_eq!(hv.iter().filter(|(n, _)| n == "hv-vcpu0").count(), 2, "{threads:?}");
    for (name, mode) in &hv {
        assert_eq!(*mode, 2, "thread {name} has no seccomp filter: {threads:?}");
    }

    go.send(()).unwrap();
    let (open, socket) = errno.recv_timeout(TIMEOUT).unwrap();
    assert_eq!(open, Some(std::io::ErrorKind::PermissionDenied), "files stay closed");
    assert_eq!(socket, libc::EPERM, "the call must fail");
    let r = bad.wait_timeout(TIMEOUT).expect("the VM ends");
    assert_eq!(violation(&r), Some(("socket", "hv-trapdoor".to_owned())), "{r}");
    assert!(r.to_string().contains("`socket`"), "{r}");

    // The other VM runs on, and the process is intact.
    let ticks = good_out.len();
    assert!(good_out.wait_for("hvtest: tick 3\n", TIMEOUT));
    std::thread::sleep(Duration::from_millis(200));
    assert!(good_out.len() > ticks, "the other VM stopped printing");
    assert!(good.wait_timeout(Duration::ZERO).is_none(), "the other VM stopped");
    good.kill().unwrap();
    assert!(matches!(good.wait().unwrap(), ExitReason::Killed));
}

/// A port device that makes the forbidden call on the vCPU thread when the guest writes it.
struct CallsOnWrite(Sender<i32>);

impl BusDevice for CallsOnWrite {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        let _ = self.0.send(forbidden_call());
    }
}

#[test]
fn a_forbidden_call_on_a_vcpu_crashes_the_vm_with_the_vcpu_state() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (tx, errno) = mpsc::channel();
    let (b, _out) = guest("test=pio");
    let vm = b.pio_device(0x6e0, 4, Arc::new(Mutex::new(CallsOnWrite(tx)))).build().unwrap();
    vm.start().unwrap();
    let r = vm.wait_timeout(TIMEOUT).expect("the VM ends");
    assert_eq!(errno.recv().unwrap(), libc::EPERM);
    assert_eq!(violation(&r), Some(("socket", "hv-vcpu0".to_owned())), "{r}");
    let ExitReason::Crashed(info) = &r else { unreachable!() };
    assert_eq!(info.vcpu, Some(0));
    assert!(info.regs.is_some(), "the crash keeps the vCPU registers");
}

#[test]
fn seccomp_off_leaves_threads_unconfined_for_debugging() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (tx, errno) = mpsc::channel();
    let (b, out) = guest("test=pio");
    let vm = b
        .seccomp(SeccompMode::Off)
        .pio_device(0x6e0, 4, Arc::new(Mutex::new(CallsOnWrite(tx))))
        .build()
        .unwrap();
    vm.start().unwrap();
    let r = vm.wait_timeout(TIMEOUT).expect("the VM ends");
    assert!(matches!(r, ExitReason::PoweredOff), "{r}: {}", out.text());
    assert_eq!(errno.recv().unwrap(), 0, "the call goes through");
}

#[test]
fn the_main_thread_filter_refuses_a_call_without_killing_the_process() {
    require!(have_kvm(), "/dev/kvm is not usable");
    // A thread of its own plays the VMM's main thread: it builds, runs and waits for a VM
    // under the main filter (which its vCPU threads inherit beneath their own).
    let t = std::thread::spawn(|| {
        let (b, out) = guest("test=poweroff");
        let vm = b.build().unwrap();
        hv_core::seccomp::install_main_thread_filter(SeccompMode::Trap, &[]).unwrap();
        vm.start().unwrap();
        let r = vm.wait().unwrap();
        assert!(matches!(r, ExitReason::PoweredOff), "{r}: {}", out.text());
        assert_eq!(hv_core::seccomp::thread_seccomp_status(), Some(2));
        let errno = forbidden_call();
        let last = hv_core::seccomp::last_violation().map(|v| v.syscall);
        (errno, last, hv_core::seccomp::take_violation())
    });
    let (errno, last, own) = t.join().expect("the thread survives");
    assert_eq!(errno, libc::EPERM);
    assert_eq!(last, Some(libc::SYS_socket));
    assert_eq!(own.and_then(|v| v.name()), Some("socket"));
}
