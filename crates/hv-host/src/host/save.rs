//! `save` and `restore`: a domain's whole state to a directory through its VMM's `vm.snapshot`
//! (Cloud Hypervisor's endpoint, `destination_url: file:///DIR`), and back in a new VMM started
//! with `--restore source_url=file:///DIR`.
//!
//! The directory holds the VMM's snapshot (its configuration names disks by path and TAPs by
//! name) and hvd's own record beside it: the domain's XML and which TAPs it had and whether it
//! ran. A restore makes the same TAPs on the same networks again, so the restored VM finds its
//! NICs where the snapshot says they are. While a saved state exists for a shut-off domain
//! `dominfo` says `Managed save: yes`.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{vmm_err, Host, RunRecord, START_TIMEOUT};
use crate::domain::{DomainDef, DomainName, DomainOp, DomainState, StateReason};
use crate::error::{io_err, HostError, Result};
use crate::http::Method;
use crate::persist;
use crate::vmm::{self, VmmApi, VmmPaths};

/// hvd's record in a saved-state directory.
const SAVE_RECORD: &str = "hv-save.json";
/// The domain's definition in a saved-state directory.
const SAVE_XML: &str = "hv-domain.xml";

/// What hvd adds to a VMM snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SaveRecord {
    /// The domain's name when saved.
    name: String,
    /// Its UUID.
    uuid: String,
    /// True when it was running (restore resumes it), false when paused.
    running: bool,
    /// Its TAPs, in NIC order, as the snapshot names them.
    taps: Vec<String>,
}

impl Host {
    fn saved_marker(&self, name: &DomainName) -> PathBuf {
        self.cfg.state_dir.join("run").join(format!("{name}.saved"))
    }

    /// Drops the record that `name` has a saved state (the state's file itself stays).
    pub(super) fn forget_saved_state(&self, name: &DomainName) {
        let _ = persist::remove_durable(&self.saved_marker(name));
    }

    /// Whether a saved state is recorded for `name` (`dominfo`'s `Managed save`).
    pub(super) fn has_saved_state(&self, name: &DomainName) -> bool {
        self.saved_marker(name).exists()
    }

    /// `save DOM FILE`: pauses the domain, has its VMM write its state to the directory `file`
    /// (made here; it must not exist or be empty), and stops it. The domain is then shut off
    /// with a saved state; on failure it is left as it was.
    pub async fn save(&self, key: &str, file: &Path) -> Result<DomainName> {
        if !file.is_absolute() {
            return Err(HostError::Unsupported(format!(
                "save file {}: an absolute path",
                file.display()
            )));
        }
        let mut inner = self.inner.lock().await;
        let def = inner.store.lookup(key)?.clone();
        let name = def.name.clone();
        let rec = inner.runs.get(&name).cloned();
        let state = rec.as_ref().map_or(DomainState::ShutOff, |r| r.state);
        state.apply(DomainOp::Save)?;
        let rec =
            rec.ok_or_else(|| HostError::Internal(format!("no runtime record for {name}")))?;
        if fs::read_dir(file).is_ok_and(|mut d| d.next().is_some()) {
            return Err(HostError::Unsupported(format!(
                "save file {} exists and is not empty",
                file.display()
            )));
        }
        fs::create_dir_all(file).map_err(io_err("create", file))?;
        let api = self.api_of(&inner, &name)?;
        let running = state == DomainState::Running;
        if running {
            api.put("vm.pause").await.map_err(vmm_err)?;
        }
        let body = serde_json::json!({ "destination_url": format!("file://{}", file.display()) });
        if let Err(e) = api.request(Method::PUT, "vm.snapshot", Some(body)).await {
            if running {
                let _ = api.put("vm.resume").await;
            }
            return Err(vmm_err(e));
        }
        let record = SaveRecord {
            name: name.to_string(),
            uuid: def.uuid.to_string(),
            running,
            taps: rec.taps.clone(),
        };
        let json = serde_json::to_vec_pretty(&record).expect("a save record serialises");
        let write = |f: &str, bytes: &[u8]| {
            let p = file.join(f);
            persist::write_atomic(&p, bytes).map_err(io_err("write", &p))
        };
        write(SAVE_XML, def.to_xml().as_bytes())?;
        write(SAVE_RECORD, &json)?;
        let marker = self.saved_marker(&name);
        persist::write_atomic(&marker, file.as_os_str().as_encoded_bytes())
            .map_err(io_err("write", &marker))?;
        self.stop_vmm(&mut inner, &name);
        self.transition(&mut inner, &name, DomainOp::Save, StateReason::Saved)?;
        Ok(name)
    }

    /// `restore FILE`: defines the saved domain if this host does not know it, makes its TAPs
    /// again, starts a VMM restoring the state, and resumes it when it was running.
    pub async fn restore(&self, file: &Path) -> Result<DomainName> {
        let read = |f: &str| {
            let p = file.join(f);
            fs::read(&p).map_err(io_err("read", &p))
        };
        let record: SaveRecord = serde_json::from_slice(&read(SAVE_RECORD)?).map_err(|e| {
            HostError::Unsupported(format!("{} is not an hv saved state: {e}", file.display()))
        })?;
        let xml = String::from_utf8_lossy(&read(SAVE_XML)?).into_owned();
        let def = DomainDef::from_xml(&xml)?;
        if def.uuid.to_string() != record.uuid || def.interfaces.len() != record.taps.len() {
            return Err(HostError::Unsupported(format!(
                "{}: the saved record does not match the saved definition",
                file.display()
            )));
        }
        let mut inner = self.inner.lock().await;
        let name = def.name.clone();
        if inner.store.lookup(&record.uuid).is_err() {
            inner.store.define(def.clone())?;
        }
        let def = inner.store.lookup(&record.uuid)?.clone();
        let state = inner.runs.get(&name).map_or(DomainState::ShutOff, |r| r.state);
        state.apply(DomainOp::Restore)?;
        let id = inner.next_id;
        let run_dir = self.run_dir(&name);
        fs::create_dir_all(&run_dir).map_err(io_err("create", &run_dir))?;
        let mut plugged = Vec::new();
        for (nic, tap) in def.interfaces.iter().zip(&record.taps) {
            if let Err(e) = crate::network::plug(&self.cfg.state_dir, &nic.source, tap, nic.mac) {
                self.unplug_nics(&plugged);
                return Err(e);
            }
            plugged.push(tap.clone());
        }
        let paths = VmmPaths::new(&run_dir);
        let args = vec![
            "--api-socket".to_string(),
            format!("path={}", paths.api_socket.display()),
            "--log-file".into(),
            paths.log.display().to_string(),
            "-v".into(),
            "--restore".into(),
            format!("source_url=file://{}", file.display()),
        ];
        let (child, proc_) = match vmm::spawn(&self.cfg.vmm_binary, &args, &paths) {
            Ok(c) => c,
            Err(e) => {
                self.unplug_nics(&plugged);
                return Err(vmm_err(e));
            }
        };
        inner.children.insert(child.id(), child);
        let api = VmmApi::new(&paths.api_socket);
        let ready = api.wait_ready(&proc_, &paths.log, START_TIMEOUT).await;
        let resumed = match ready {
            Ok(()) if record.running => api.put("vm.resume").await,
            other => other,
        };
        if let Err(e) = resumed {
            proc_.kill(std::time::Duration::from_secs(5));
            if let Some(mut c) = inner.children.remove(&proc_.pid) {
                let _ = c.wait();
            }
            self.unplug_nics(&plugged);
            return Err(vmm_err(e));
        }
        inner.next_id += 1;
        let rec = RunRecord {
            id,
            state: DomainState::ShutOff,
            reason: StateReason::Restored,
            process: Some(proc_),
            taps: plugged,
        };
        inner.runs.insert(name.clone(), rec);
        self.transition(&mut inner, &name, DomainOp::Restore, StateReason::Restored)?;
        if !record.running {
            self.transition(&mut inner, &name, DomainOp::Suspend, StateReason::Restored)?;
        }
        self.forget_saved_state(&name);
        Ok(name)
    }
}
