//! Group commit for the embedded store: the changes of concurrent writers of this process
//! share one transaction and so one fsync, each still all-or-nothing on its own.
//!
//! SQLite takes one writer at a time, and with `synchronous=FULL` each commit waits for the
//! disk, so writers that each commit on their own are bound by the disk's flush rate (a few
//! hundred per second). Here a writer queues its change; the first writer that finds no commit
//! in progress becomes the leader, takes everything queued (up to [`MAX_BATCH`]), and runs it
//! in one transaction, each change inside a savepoint of its own: a change that fails (a claim
//! that no longer fits, a stale version) is rolled back to its savepoint and fails alone,
//! while the others commit together. Changes run in queue order, each seeing the ones before
//! it, so the outcome is that of running them one after another. Each waiting writer gets its
//! own change's result once the shared commit is durable; if the commit itself fails, every
//! change of the group fails with [`StoreError::GroupCommit`] and none was applied.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use super::{Op, Result, StoreError};

/// The most changes one transaction takes (bounds the time a commit holds the write lock).
pub(crate) const MAX_BATCH: usize = 256;

/// One writer's queued change.
pub(crate) struct Job {
    /// The change.
    pub(crate) ops: Vec<Op>,
    result: Mutex<Option<Result<()>>>,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Arc<Job>>,
    committing: bool,
}

/// The queue of changes waiting for a commit.
#[derive(Default)]
pub(crate) struct GroupCommit {
    queue: Mutex<Queue>,
    done: Condvar,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl GroupCommit {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `ops` as part of a group. `commit` runs one group in one transaction and
    /// returns each change's result in order (an `Err` of its own: the commit failed).
    pub(crate) fn apply(
        &self,
        ops: &[Op],
        commit: impl Fn(&[Arc<Job>]) -> Result<Vec<Result<()>>>,
    ) -> Result<()> {
        let job = Arc::new(Job { ops: ops.to_vec(), result: Mutex::new(None) });
        let mut q = self.lock();
        q.jobs.push(job.clone());
        loop {
            if let Some(r) = job.result.lock().unwrap_or_else(PoisonError::into_inner).take() {
                return r;
            }
            if q.committing {
                q = self.done.wait(q).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // Lead: commit what is queued (this job among it, unless an earlier batch full
            // of others left it queued; then the next round takes it).
            q.committing = true;
            let take = q.jobs.len().min(MAX_BATCH);
            let lead = Lead { group: self, batch: q.jobs.drain(..take).collect() };
            drop(q);
            let results = commit(&lead.batch);
            q = self.lock();
            match results {
                Ok(rs) if rs.len() == lead.batch.len() => {
                    for (j, r) in lead.batch.iter().zip(rs) {
                        *j.result.lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
                    }
                }
                Ok(_) => fail(&lead.batch, "a group's results do not match its changes"),
                Err(e) => fail(&lead.batch, &e.to_string()),
            }
            q.committing = false;
            self.done.notify_all();
            // `lead` goes at the end of this round, with the queue still locked: its drop
            // locks nothing unless a panic is unwinding through the commit.
        }
    }
}

/// A leader's batch. Dropped by a panic inside the commit, it fails the batch and hands the
/// lead on, so the waiting writers are not left waiting for ever.
struct Lead<'a> {
    group: &'a GroupCommit,
    batch: Vec<Arc<Job>>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut q = self.group.lock();
            fail(&self.batch, "the writer committing the group panicked");
            q.committing = false;
            self.group.done.notify_all();
        }
    }
}

/// Gives every change of `batch` the commit's failure.
fn fail(batch: &[Arc<Job>], why: &str) {
    for j in batch {
        *j.result.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Err(StoreError::GroupCommit(why.to_string())));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Allocation, HostRow, Kind, Record, SqliteStore, Store};
    use super::*;

    fn host() -> HostRow {
        HostRow {
            id: "h".into(),
            name: "h".into(),
            enabled: true,
            vcpus: 10,
            ram_mb: 1 << 20,
            disk_gb: 1000,
            cpu_ratio: 1.0,
            ram_ratio: 1.0,
            disk_ratio: 1.0,
            used_vcpus: 0,
            used_ram_mb: 0,
            used_disk_gb: 0,
        }
    }

    /// Many concurrent changes, each a record and a claim, where only ten claims fit: the
    /// changes that share a commit with a failing one keep theirs, and a failing one leaves
    /// nothing (its record is rolled back with its claim).
    #[test]
    fn each_change_of_a_group_stands_or_falls_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("cloud.db")).unwrap();
        store.apply(&[Op::PutHost(host())]).unwrap();
        let outcomes: Vec<(usize, Result<()>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..48)
                .map(|i| {
                    let store = &store;
                    s.spawn(move || {
                        let rec = Record {
                            kind: Kind::Instance,
                            id: format!("vm-{i}"),
                            project_id: Some("p".into()),
                            name: format!("vm-{i}"),
                            body: "{}".into(),
                            version: 0,
                        };
                        let claim = Allocation {
                            consumer_id: format!("vm-{i}"),
                            host_id: "h".into(),
                            project_id: "p".into(),
                            vcpus: 1,
                            ram_mb: 1,
                            disk_gb: 0,
                        };
                        (i, store.apply(&[Op::Insert(rec), Op::Claim(claim)]))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won: Vec<usize> = outcomes.iter().filter(|(_, r)| r.is_ok()).map(|(i, _)| *i).collect();
        assert_eq!(won.len(), 10, "exactly the room there is");
        for (i, r) in &outcomes {
            let kept = store.get(Kind::Instance, &format!("vm-{i}")).unwrap().is_some();
            match r {
                Ok(()) => assert!(kept, "vm-{i} committed"),
                Err(StoreError::NoCapacity { .. }) => assert!(!kept, "vm-{i} rolled back"),
                Err(e) => panic!("vm-{i}: {e}"),
            }
        }
        let h = store.host("h").unwrap().unwrap();
        assert_eq!(h.used_vcpus, 10);
        assert_eq!(store.allocations("h").unwrap().len(), 10);
    }
}
