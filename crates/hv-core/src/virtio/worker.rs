//! A device worker thread: waits on the queues' notification eventfds (and any extra fds the
//! device names, such as a TAP) with epoll, and calls the device's handler for each event,
//! until it is stopped.
//!
//! A worker works for the VM of the thread that started it (a VM's device thread): if its
//! seccomp filter refuses a call the handler made, the worker ends that VM as crashed and
//! stops (see [`crate::seccomp`]).

use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// A running worker; dropping it stops the thread and waits for it.
#[derive(Debug)]
pub struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

const STOP_TOKEN: u64 = u64::MAX;

impl Worker {
    /// Spawns a thread named `name` that calls `handler(token)` whenever the fd registered
    /// with `token` is readable. The handler must drain the fd (e.g. read the eventfd).
    pub fn spawn<F>(name: &str, fds: Vec<(RawFd, u64)>, mut handler: F) -> std::io::Result<Self>
    where
        F: FnMut(u64) + Send + 'static,
    {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        for (fd, token) in fds.iter().copied().chain([(stop.as_raw_fd(), STOP_TOKEN)]) {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token))?;
        }
        let owner = crate::seccomp::owner();
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            crate::seccomp::set_owner(owner);
            let mut events = vec![EpollEvent::default(); 16];
            loop {
                let n = match epoll.wait(-1, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                for ev in &events[..n] {
                    if ev.data() == STOP_TOKEN {
                        return;
                    }
                    handler(ev.data());
                    if crate::seccomp::report_violation().is_some() {
                        return;
                    }
                }
            }
        })?;
        Ok(Self { stop, thread: Some(thread) })
    }

    /// Stops the worker and waits for it.
    pub fn stop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn calls_the_handler_per_event_and_stops() {
        let a = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let a2 = a.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        let mut w = Worker::spawn("t", vec![(a.as_raw_fd(), 7)], move |t| {
            let _ = a2.read();
            tx.send(t).unwrap();
        })
        .unwrap();
        a.write(1).unwrap();
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap(), 7);
        w.stop();
    }
}
