//! Noticing what happened to running domains on their own: a VMM that exited, a guest that
//! powered off or crashed.
//!
//! A poll looks at each VMM without the host's lock held: it notes the domains to look at
//! (their process records) under the lock, asks their VMMs (`vm.info`, all at once) with the
//! lock released, then takes the lock again to apply what it saw, to each domain only if it
//! still runs the very process that was looked at (a domain destroyed and started again
//! meanwhile is left to the next poll). So a poll of many domains holds up no other host
//! call for the time of their API round trips, and concurrent polls overlap.

use tokio::task::JoinSet;

use super::{Host, Inner};
use crate::domain::{DomainName, DomainOp, StateReason};
use crate::error::Result;
use crate::process::ProcessRecord;
use crate::vmm::{self, VmmApi, VmmPaths};

/// What one look at a domain's VMM found.
enum Seen {
    /// Running, or shut down without its log line yet: nothing to do now.
    Nothing,
    /// The VMM reports the VM shut down and logged why.
    VmShutdown(DomainOp, StateReason),
    /// The VMM process is gone.
    Exited,
}

/// Looks at one domain's VMM (no host lock held).
async fn look(proc: ProcessRecord, paths: VmmPaths) -> Seen {
    if !proc.is_running() {
        return Seen::Exited;
    }
    match VmmApi::new(&paths.api_socket).info().await {
        Ok(info) if info.state == "Shutdown" => {
            // The VMM marks the VM shut down whether the guest powered off or crashed, and
            // logs which right after: decide by its log line, and look again next time while
            // neither is there yet.
            let tail = vmm::log_tail(&paths.log);
            if tail.contains(vmm::POWERED_OFF_LINE) {
                Seen::VmShutdown(DomainOp::GuestPoweredOff, StateReason::Shutdown)
            } else if tail.contains(vmm::GUEST_STOPPED_LINE) {
                Seen::VmShutdown(DomainOp::GuestCrashed, StateReason::Crashed(tail))
            } else {
                Seen::Nothing
            }
        }
        _ => Seen::Nothing,
    }
}

impl Host {
    /// Looks at every active domain's VMM and applies what happened to it: a VMM that exited,
    /// a guest that powered off or crashed. The daemon calls this periodically.
    pub async fn poll(&self) {
        self.poll_where(|_| true).await;
    }

    /// [`poll`](Self::poll) for the one domain `key` names (a name or UUID): its state is then
    /// current, at the cost of one VMM call rather than one per running domain.
    pub async fn poll_domain(&self, key: &str) -> Result<()> {
        let name = self.inner.lock().await.store.lookup(key)?.name.clone();
        self.poll_where(|n| *n == name).await;
        Ok(())
    }

    async fn poll_where(&self, wanted: impl Fn(&DomainName) -> bool) {
        let targets: Vec<(DomainName, ProcessRecord)> = {
            let inner = self.inner.lock().await;
            inner
                .runs
                .iter()
                .filter(|(n, r)| r.state.is_active() && wanted(n))
                .filter_map(|(n, r)| Some((n.clone(), r.process?)))
                .collect()
        };
        if targets.is_empty() {
            return;
        }
        let mut looks = JoinSet::new();
        for (name, proc) in targets {
            let paths = VmmPaths::new(&self.run_dir(&name));
            looks.spawn(async move {
                let seen = look(proc, paths).await;
                (name, proc, seen)
            });
        }
        let mut seen = Vec::new();
        while let Some(r) = looks.join_next().await {
            match r {
                Ok((_, _, Seen::Nothing)) => {}
                Ok(found) => seen.push(found),
                Err(e) => log::warn!("a VMM poll task failed: {e}"),
            }
        }
        if seen.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().await;
        for (name, proc, what) in seen {
            self.apply_seen(&mut inner, &name, &proc, what);
        }
    }

    /// Applies one look's finding if `name` still runs process `proc` and is active.
    fn apply_seen(&self, inner: &mut Inner, name: &DomainName, proc: &ProcessRecord, what: Seen) {
        let Some(rec) = inner.runs.get(name).cloned() else { return };
        if !rec.state.is_active() || rec.process.as_ref() != Some(proc) {
            return;
        }
        let (op, reason) = match what {
            Seen::Nothing => return,
            Seen::VmShutdown(op, reason) => {
                self.stop_vmm(inner, name);
                (op, reason)
            }
            Seen::Exited => {
                let log = VmmPaths::new(&self.run_dir(name)).log;
                let status = inner.children.remove(&proc.pid).and_then(|mut c| c.wait().ok());
                self.unplug_nics(&rec.taps);
                match status {
                    Some(s) if s.success() => (DomainOp::GuestPoweredOff, StateReason::Shutdown),
                    Some(s) => (
                        DomainOp::VmmDied,
                        StateReason::Crashed(format!("hv-vmm {s}: {}", vmm::log_tail(&log))),
                    ),
                    None if vmm::log_tail(&log).contains(vmm::POWERED_OFF_LINE) => {
                        (DomainOp::GuestPoweredOff, StateReason::Shutdown)
                    }
                    None => (
                        DomainOp::VmmDied,
                        StateReason::Crashed(format!(
                            "hv-vmm (pid {}) exited: {}",
                            proc.pid,
                            vmm::log_tail(&log)
                        )),
                    ),
                }
            }
        };
        log::info!("domain {name}: {reason}");
        if let Err(e) = self.transition(inner, name, op, reason) {
            log::warn!("domain {name}: cannot record its new state: {e}");
        }
    }
}
