//! Instances on the host: create (quota, placement, ports, root disk, domain, start), actions,
//! delete, console log and the sync of what the host says back.
//!
//! The boot is direct kernel boot, as everything hv runs: an `aki` image boots as the kernel
//! itself; `ami`, `raw` and `qcow2` images name their kernel with the `kernel_id` property
//! (OpenStack's convention), an optional `ramdisk_id`, and `os_command_line`. The domain is
//! (re)defined from the instance record before every start, so volumes attached while the
//! instance is shut off are there at its next boot.

use std::path::PathBuf;
use std::time::Duration;

use hv_host::domain::{
    DiskDef, DiskSource, DomainDef, DomainName, InterfaceDef, InterfaceSource, LifecycleAction,
    OsDef, SerialDef,
};

use super::instance::{
    Fault, Instance, InstanceAction, InstanceNic, InstanceStatus, NetworkRequest, NewInstance,
};
use hv_storage::pool::Pool;

use crate::driver::{disks, VmState, INSTANCE_POOL, VOLUME_POOL};
use crate::error::{Error, Result};
use crate::events::event;
use crate::ids::{now, uuid};
use crate::image::{DiskFormat, Image, ImageStatus};
use crate::network::port::OWNER_COMPUTE;
use crate::network::{FixedIpRequest, Network, NewPort, Port};
use crate::policy::{authorize, Action, Context};
use crate::quota::Resource as Quota;
use crate::records::{list, load, to_record};
use crate::store::{Kind, Op, QuotaMode, StoreError};
use crate::{check_name, Cloud};

/// The most console output returned.
const CONSOLE_MAX: u64 = 64 << 10;

/// What an image boots from, checked before anything is claimed: the image the root disk is
/// an overlay of (none for an `aki` image, which boots as the kernel itself).
struct Boot {
    root_from: Option<String>,
}

impl Cloud {
    fn boot_of(&self, ctx: &Context, img: &Image) -> Result<Boot> {
        let part = |key: &str, want: DiskFormat| -> Result<Option<PathBuf>> {
            let Some(id) = img.properties.get(key) else { return Ok(None) };
            let (k, _) = self.load_image(ctx, id)?;
            if k.disk_format != want || k.status != ImageStatus::Active {
                return Err(Error::invalid(
                    "image",
                    format!("{key} '{id}' is not an active {} image", want.as_str()),
                ));
            }
            Ok(Some(self.image_path(id)?))
        };
        let (kernel, root_from) = match img.disk_format {
            DiskFormat::Aki => (self.image_path(&img.id)?, None),
            DiskFormat::Ari => {
                return Err(Error::invalid("image", "a ramdisk (ari) image does not boot"))
            }
            _ => (
                part("kernel_id", DiskFormat::Aki)?.ok_or_else(|| {
                    Error::invalid(
                        "image",
                        "hv boots by direct kernel boot: the image needs a kernel_id property",
                    )
                })?,
                Some(img.id.clone()),
            ),
        };
        let cmdline = img.properties.get("os_command_line").cloned();
        if let Some(c) = &cmdline {
            if c.len() > 2048 || c.chars().any(|ch| ch.is_control()) {
                return Err(Error::invalid("os_command_line", "at most 2048 printable characters"));
            }
        }
        let _ = (kernel, part("ramdisk_id", DiskFormat::Ari)?);
        Ok(Boot { root_from })
    }

    /// Boots an instance: claims quota (instances, cores, RAM) with its record in BUILD, places
    /// it, makes its ports and root disk, defines and starts its domain. Returns once the VM
    /// runs (ACTIVE) or the build failed (ERROR, with the fault; the instance keeps its quota
    /// until deleted, as in Nova). Invalid requests fail before anything is claimed.
    pub fn create_instance(&self, ctx: &Context, new: &NewInstance) -> Result<Instance> {
        authorize(ctx, Action::InstanceCreate)?;
        check_name("instance name", &new.name)?;
        if new.metadata.len() > 128 {
            return Err(Error::invalid("metadata", "at most 128 items"));
        }
        let flavor = self.get_flavor(ctx, &new.flavor_id)?;
        let (img, _) = self.load_image(ctx, &new.image_id)?;
        if img.status != ImageStatus::Active {
            return Err(Error::Conflict {
                kind: "image",
                id: img.id,
                reason: "the image is not active".into(),
            });
        }
        let boot = self.boot_of(ctx, &img)?;
        for n in &new.networks {
            match n {
                NetworkRequest::Network { network_id, .. } => {
                    self.load_network(ctx, network_id)?;
                }
                NetworkRequest::Port(p) => {
                    let (p, _) = self.load_port(ctx, p)?;
                    if !p.device_id.is_empty() {
                        return Err(Error::Conflict {
                            kind: "port",
                            id: p.id,
                            reason: "it is in use".into(),
                        });
                    }
                }
            }
        }
        for v in &new.volumes {
            self.check_volume_attachable(ctx, v)?;
        }
        // Group names become ids now: a bad one fails the request before anything is claimed.
        let resolved;
        let new = match &new.security_groups {
            Some(g) => {
                let security_groups = Some(self.resolve_security_groups(ctx, g)?);
                resolved = NewInstance { security_groups, ..new.clone() };
                &resolved
            }
            None => new,
        };
        let id = uuid();
        let t = now();
        let mut inst = Instance {
            id: id.clone(),
            name: new.name.clone(),
            project_id: ctx.project_id().into(),
            user_id: ctx.user_id().into(),
            status: InstanceStatus::Build,
            flavor_id: flavor.id.clone(),
            vcpus: flavor.vcpus,
            ram_mb: flavor.ram_mb,
            disk_gb: flavor.disk_gb,
            image_id: img.id.clone(),
            host_id: None,
            domain: format!("i-{id}"),
            nics: vec![],
            volumes: vec![],
            server_group_id: new.server_group_id.clone(),
            metadata: new.metadata.clone(),
            fault: None,
            created_at: t,
            updated_at: t,
            launched_at: None,
        };
        let claims = [
            (Quota::Instances, 1),
            (Quota::Cores, i64::from(flavor.vcpus)),
            (Quota::Ram, flavor.ram_mb as i64),
        ];
        self.store()
            .apply(&[
                self.quota_op(ctx.project_id(), &claims, QuotaMode::Use),
                Op::Insert(to_record(&inst, 1)),
                event(
                    ctx,
                    ctx.project_id(),
                    "instance.create",
                    "instance",
                    &id,
                    serde_json::json!({"name": inst.name, "flavor": flavor.id, "image": img.id}),
                ),
            ])
            .map_err(Error::from_store)?;
        if let Err(e) = self.build(ctx, &mut inst, new, &boot) {
            log::warn!("instance {id}: build failed: {e}");
            self.set_status(&id, |i| {
                i.status = InstanceStatus::Error;
                i.fault = Some(Fault { message: e.to_string(), code: 500, created: now() });
            })?;
        }
        self.load_instance(ctx, &id).map(|(i, _)| i)
    }

    fn build(
        &self,
        ctx: &Context,
        inst: &mut Instance,
        new: &NewInstance,
        boot: &Boot,
    ) -> Result<()> {
        let placement =
            self.schedule(ctx, &inst.id, &inst.flavor_id, new.server_group_id.as_deref())?;
        self.set_status(&inst.id, |i| i.host_id = Some(placement.host_id.clone()))?;
        inst.host_id = Some(placement.host_id.clone());
        let driver = self
            .driver()
            .ok_or_else(|| Error::NoValidHost("this cloud has no compute driver".into()))?;
        if Some(placement.host_id.as_str()) != self.local_host_id() {
            return Err(Error::NoValidHost(format!(
                "host '{}' is not driven by this process",
                placement.host_id
            )));
        }
        // The image cannot be deleted while the instance exists.
        self.use_image(ctx, &inst.image_id, &inst.id)?;
        // Ports.
        let mut nics = vec![];
        for n in &new.networks {
            let (port, owned) = match n {
                NetworkRequest::Network { network_id, fixed_ip } => {
                    let mut np = NewPort::new(network_id);
                    np.device_id = inst.id.clone();
                    np.device_owner = OWNER_COMPUTE.into();
                    np.security_groups = new.security_groups.clone();
                    if let Some(ip) = fixed_ip {
                        np.fixed_ips =
                            vec![FixedIpRequest { subnet_id: None, ip_address: Some(*ip) }];
                    }
                    (self.create_port(ctx, &np)?, true)
                }
                NetworkRequest::Port(p) => (self.claim_port(ctx, p, &inst.id)?, false),
            };
            nics.push(InstanceNic {
                port_id: port.id.clone(),
                network_id: port.network_id.clone(),
                mac_address: port.mac_address.clone(),
                fixed_ips: port.ips(),
                owned_port: owned,
            });
            self.set_status(&inst.id, |i| i.nics = nics.clone())?;
        }
        inst.nics = nics;
        // Volumes attached at boot.
        for v in &new.volumes {
            self.attach_volume(ctx, &inst.id, v)?;
        }
        // Root disk: a qcow2 overlay over the host's base copy of the image.
        if let Some(src) = &boot.root_from {
            let io = self.image_pool().open_volume(src, false)?;
            let dir = driver.state_dir();
            disks::create_root_disk(dir, src, &inst.id, inst.disk_gb << 30, io.as_ref())?;
        }
        self.start_domain(&inst.id)?;
        self.set_status(&inst.id, |i| {
            i.status = InstanceStatus::Active;
            i.launched_at = Some(now());
        })?;
        Ok(())
    }

    /// The domain definition of an instance as its record says now.
    fn domain_def(&self, inst: &Instance) -> Result<DomainDef> {
        let img = load::<Image>(self.store(), &inst.image_id)?
            .map(|(i, _)| i)
            .ok_or_else(|| Error::not_found("image", &inst.image_id))?;
        // The instance holds its image (and the image its kernel) in use: resolve as owner.
        let kernel_of = |key: &str| -> Result<Option<PathBuf>> {
            match img.properties.get(key) {
                Some(k) => Ok(Some(self.image_path(k)?)),
                None => Ok(None),
            }
        };
        let (kernel, root) = match img.disk_format {
            DiskFormat::Aki => (self.image_path(&img.id)?, false),
            _ => (
                kernel_of("kernel_id")?.ok_or_else(|| Error::invalid("image", "no kernel_id"))?,
                true,
            ),
        };
        let name: DomainName = inst
            .domain
            .parse()
            .map_err(|e: hv_host::domain::NameError| Error::Host(e.to_string()))?;
        let mut disks_def = vec![];
        let mut letter = b'a';
        if root {
            disks_def.push(DiskDef {
                source: DiskSource::Volume {
                    pool: INSTANCE_POOL.into(),
                    volume: inst.id.clone(),
                    format: None,
                },
                target: "vda".into(),
                read_only: false,
            });
            letter += 1;
        }
        for v in &inst.volumes {
            disks_def.push(DiskDef {
                source: DiskSource::Volume {
                    pool: VOLUME_POOL.into(),
                    volume: v.volume_id.clone(),
                    format: None,
                },
                target: format!("vd{}", letter as char),
                read_only: false,
            });
            letter += 1;
        }
        let mut interfaces = vec![];
        for n in &inst.nics {
            let net = load::<Network>(self.store(), &n.network_id)?
                .map(|(n, _)| n)
                .ok_or_else(|| Error::not_found("network", &n.network_id))?;
            interfaces.push(InterfaceDef {
                source: InterfaceSource::Network(net.host_name),
                mac: n
                    .mac_address
                    .parse()
                    .map_err(|_| Error::invalid("mac", n.mac_address.clone()))?,
            });
        }
        Ok(DomainDef {
            name,
            uuid: inst.id.parse().map_err(|_| Error::invalid("instance id", inst.id.clone()))?,
            description: Some(format!("instance {} of project {}", inst.name, inst.project_id)),
            memory_kib: inst.ram_mb * 1024,
            vcpus: inst.vcpus,
            os: OsDef {
                kernel,
                initrd: kernel_of("ramdisk_id")?,
                cmdline: img.properties.get("os_command_line").cloned(),
            },
            disks: disks_def,
            interfaces,
            serial: SerialDef::None,
            on_poweroff: LifecycleAction::Destroy,
            on_reboot: LifecycleAction::Restart,
            on_crash: LifecycleAction::Preserve,
        })
    }

    /// (Re)defines and starts an instance's domain, then binds its ports to their TAPs.
    fn start_domain(&self, id: &str) -> Result<()> {
        let (inst, _) =
            load::<Instance>(self.store(), id)?.ok_or_else(|| Error::not_found("instance", id))?;
        let driver = self.driver().ok_or_else(|| Error::NoValidHost("no compute driver".into()))?;
        let xml = self.domain_def(&inst)?.to_xml();
        let name = inst.domain.clone();
        let taps = driver.call(move |h| async move {
            h.define(&xml).await?;
            h.start(&name).await?;
            h.iflist(&name).await
        })?;
        for (nic, row) in inst.nics.iter().zip(taps) {
            self.bind_port(&nic.port_id, &row.interface)?;
        }
        Ok(())
    }

    fn unbind_ports(&self, inst: &Instance) -> Result<()> {
        for n in &inst.nics {
            self.unbind_port(&n.port_id)?;
        }
        Ok(())
    }

    /// Sets a port of the caller's project as used by `instance_id`.
    fn claim_port(&self, ctx: &Context, port_id: &str, instance_id: &str) -> Result<Port> {
        let (mut p, version) = self.load_port(ctx, port_id)?;
        if !p.device_id.is_empty() {
            return Err(Error::Conflict {
                kind: "port",
                id: port_id.into(),
                reason: "it is in use".into(),
            });
        }
        p.device_id = instance_id.into();
        p.device_owner = OWNER_COMPUTE.into();
        self.store()
            .apply(&[Op::Update(to_record(&p, version))])
            .map_err(crate::network::stale("port", port_id))?;
        Ok(p)
    }

    /// Changes an instance record with `f`, retrying lost races.
    pub(crate) fn set_status(&self, id: &str, f: impl Fn(&mut Instance)) -> Result<Instance> {
        loop {
            let (mut inst, version) = load::<Instance>(self.store(), id)?
                .ok_or_else(|| Error::not_found("instance", id))?;
            f(&mut inst);
            inst.updated_at = now();
            match self.store().apply(&[Op::Update(to_record(&inst, version))]) {
                Ok(()) => return Ok(inst),
                Err(StoreError::Stale { .. }) => continue,
                Err(e) => return Err(Error::from_store(e)),
            }
        }
    }

    /// An instance of the caller's project, synced with the host, and its version.
    pub(crate) fn load_instance(&self, ctx: &Context, id: &str) -> Result<(Instance, i64)> {
        match load::<Instance>(self.store(), id)? {
            Some((i, _)) if ctx.owns(&i.project_id) => {
                self.sync_instance(&i)?;
                load::<Instance>(self.store(), id)?.ok_or_else(|| Error::not_found("instance", id))
            }
            _ => Err(Error::not_found("instance", id)),
        }
    }

    /// One instance.
    pub fn get_instance(&self, ctx: &Context, id: &str) -> Result<Instance> {
        authorize(ctx, Action::InstanceGet)?;
        Ok(self.load_instance(ctx, id)?.0)
    }

    /// The caller's instances (an admin: all), synced with the host's recorded domain states
    /// (as its last poll left them: see [`ComputeConfig::poll_interval`]; a list asks no VMM).
    ///
    /// [`ComputeConfig::poll_interval`]: crate::ComputeConfig::poll_interval
    pub fn list_instances(&self, ctx: &Context) -> Result<Vec<Instance>> {
        authorize(ctx, Action::InstanceList)?;
        let mut out = vec![];
        for (i, _) in list::<Instance>(self.store(), ctx.list_scope(), None)? {
            self.sync_polled_instance(&i)?;
            if let Some((i, _)) = load::<Instance>(self.store(), &i.id)? {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Looks at every instance's VM on this host and records what happened to those that
    /// stopped on their own (an embedder calls this periodically; gets and lists do it too).
    pub fn sync_instances(&self, ctx: &Context) -> Result<usize> {
        authorize(ctx, Action::InstanceSync)?;
        let mut changed = 0;
        self.poll_host()?;
        for (i, _) in list::<Instance>(self.store(), None, None)? {
            changed += usize::from(self.sync_polled_instance(&i)?);
        }
        Ok(changed)
    }

    /// Has this host look at its VMMs once (before reading many instances' states).
    fn poll_host(&self) -> Result<()> {
        self.driver().map_or(Ok(()), |d| d.poll())
    }

    /// Applies the host's view of `inst`'s VM to its record after the host looked at that
    /// one VMM; true when it changed.
    fn sync_instance(&self, inst: &Instance) -> Result<bool> {
        if !matches!(inst.status, InstanceStatus::Active | InstanceStatus::Paused) {
            return Ok(false);
        }
        if let Some(d) = self.driver() {
            d.poll_domain(&inst.domain)?;
        }
        self.sync_polled_instance(inst)
    }

    /// [`sync_instance`](Self::sync_instance) after the caller polled the host.
    fn sync_polled_instance(&self, inst: &Instance) -> Result<bool> {
        if !matches!(inst.status, InstanceStatus::Active | InstanceStatus::Paused) {
            return Ok(false);
        }
        let Some(driver) = self.driver() else { return Ok(false) };
        let (status, fault) = match driver.polled_vm_state(&inst.domain)? {
            VmState::Running if inst.status == InstanceStatus::Active => return Ok(false),
            VmState::Paused if inst.status == InstanceStatus::Paused => return Ok(false),
            VmState::Running => (InstanceStatus::Active, None),
            VmState::Paused => (InstanceStatus::Paused, None),
            VmState::Off { crashed: None, .. } => (InstanceStatus::Shutoff, None),
            VmState::Off { crashed: Some(why), .. } => {
                (InstanceStatus::Error, Some(format!("the VM died: {why}")))
            }
            VmState::Missing => {
                (InstanceStatus::Error, Some("the host has no domain for this instance".into()))
            }
        };
        if !matches!(status, InstanceStatus::Active | InstanceStatus::Paused) {
            self.unbind_ports(inst)?;
        }
        self.set_status(&inst.id, |i| {
            i.status = status;
            if let Some(m) = &fault {
                i.fault = Some(Fault { message: m.clone(), code: 500, created: now() });
            }
        })?;
        Ok(true)
    }

    /// Performs an action; returns the instance in its new state.
    pub fn instance_action(
        &self,
        ctx: &Context,
        id: &str,
        action: InstanceAction,
    ) -> Result<Instance> {
        authorize(ctx, Action::InstanceAction)?;
        let (inst, _) = self.load_instance(ctx, id)?;
        let next = inst.status.apply(action).map_err(|e| match e {
            Error::Conflict { kind, reason, .. } => Error::Conflict { kind, id: id.into(), reason },
            e => e,
        })?;
        let driver = self.driver().ok_or_else(|| Error::NoValidHost("no compute driver".into()))?;
        let name = inst.domain.clone();
        match action {
            InstanceAction::Start => self.start_domain(id)?,
            InstanceAction::Stop => {
                let img = load::<Image>(self.store(), &inst.image_id)?.map(|(i, _)| i);
                let timeout = img
                    .and_then(|i| {
                        i.properties.get("os_shutdown_timeout").and_then(|t| t.parse::<u64>().ok())
                    })
                    .map(|s| Duration::from_secs(s.min(3600)))
                    .unwrap_or(driver.config().shutdown_timeout);
                match driver.vm_state(&name)? {
                    VmState::Running | VmState::Paused => {
                        driver
                            .call(move |h| async move { h.shutdown(&name, Some(timeout)).await })?;
                    }
                    VmState::Off { crashed: Some(_), .. } => {
                        driver.call(move |h| async move { h.destroy(&name).await })?;
                    }
                    _ => {}
                }
                self.unbind_ports(&inst)?;
            }
            InstanceAction::Reboot { hard: false } => {
                driver.call(move |h| async move { h.reboot(&name).await })?;
            }
            InstanceAction::Reboot { hard: true } => {
                if !matches!(
                    driver.vm_state(&name)?,
                    VmState::Missing | VmState::Off { crashed: None, .. }
                ) {
                    let n = name.clone();
                    driver.call(move |h| async move { h.destroy(&n).await })?;
                }
                self.unbind_ports(&inst)?;
                self.start_domain(id)?;
            }
            InstanceAction::Pause => {
                driver.call(move |h| async move { h.suspend(&name).await })?;
            }
            InstanceAction::Unpause => {
                driver.call(move |h| async move { h.resume(&name).await })?;
            }
            InstanceAction::Suspend => {
                // The host's managed save: the VM's whole state to a directory of this host,
                // the VMM stopped (its TAPs go with it).
                let dir = driver.save_dir(id)?;
                discard_saved_state(&dir)?;
                driver.call(move |h| async move { h.save(&name, &dir).await.map(drop) })?;
                self.unbind_ports(&inst)?;
            }
            InstanceAction::Resume => {
                // A new VMM restores the saved state on the same TAPs and runs on from where
                // the guest was; the saved state is then spent.
                let dir = driver.save_dir(id)?;
                let d = dir.clone();
                let taps = driver.call(move |h| async move {
                    h.restore(&d).await?;
                    h.iflist(&name).await
                })?;
                for (nic, row) in inst.nics.iter().zip(taps) {
                    self.bind_port(&nic.port_id, &row.interface)?;
                }
                discard_saved_state(&dir)?;
            }
        }
        self.store().apply(&[event(
            ctx,
            &inst.project_id,
            &format!("instance.{}", action.as_str()),
            "instance",
            id,
            serde_json::json!({}),
        )])?;
        self.set_status(id, |i| {
            i.status = next;
            if next != InstanceStatus::Error {
                i.fault = None;
            }
        })
    }

    /// Deletes an instance and frees everything it held: its VM and domain, root disk, ports
    /// it made (others are unbound), volume attachments, image uses, placement and quota.
    pub fn delete_instance(&self, ctx: &Context, id: &str) -> Result<()> {
        authorize(ctx, Action::InstanceDelete)?;
        let (inst, _) = match load::<Instance>(self.store(), id)? {
            Some((i, v)) if ctx.owns(&i.project_id) => (i, v),
            _ => return Err(Error::not_found("instance", id)),
        };
        if let Some(driver) = self.driver() {
            let name = inst.domain.clone();
            // Whether the host has the domain at all: no need to poll every VMM for that
            // (destroy copes with a VMM that already exited).
            if !matches!(driver.polled_vm_state(&name)?, VmState::Missing) {
                driver.call(move |h| async move {
                    let _ = h.destroy(&name).await;
                    h.undefine(&name).await.map(drop)
                })?;
            }
            disks::delete_root_disk(driver.state_dir(), id)?;
            discard_saved_state(&driver.save_dir(id)?)?;
        }
        for n in &inst.nics {
            let Some((p, _)) = load::<Port>(self.store(), &n.port_id)? else { continue };
            if n.owned_port {
                self.drop_port(ctx, &p, true)?;
                continue;
            }
            // A port the tenant brought stays, unbound.
            self.unbind_port(&p.id)?;
            if let Some((mut p, version)) = load::<Port>(self.store(), &p.id)? {
                p.device_id.clear();
                p.device_owner.clear();
                self.store().apply(&[Op::Update(to_record(&p, version))])?;
            }
        }
        for v in &inst.volumes {
            self.release_volume(&v.volume_id)?;
        }
        let _ = self.release_image(ctx, id);
        if self.store().allocation(id)?.is_some() {
            self.unschedule(ctx, id, inst.server_group_id.as_deref())?;
        }
        let claims = [
            (Quota::Instances, 1),
            (Quota::Cores, i64::from(inst.vcpus)),
            (Quota::Ram, inst.ram_mb as i64),
        ];
        self.store()
            .apply(&[
                Op::Delete(Kind::Instance, id.into()),
                self.quota_op(&inst.project_id, &claims, QuotaMode::Release),
                event(
                    ctx,
                    &inst.project_id,
                    "instance.delete",
                    "instance",
                    id,
                    serde_json::json!({}),
                ),
            ])
            .map_err(Error::from_store)
    }

    /// The end of the instance's serial console (at most `max_bytes`, capped at 64 KiB), as
    /// text; empty before its first boot.
    pub fn console_log(&self, ctx: &Context, id: &str, max_bytes: Option<u64>) -> Result<String> {
        authorize(ctx, Action::InstanceConsole)?;
        let (inst, _) = self.load_instance(ctx, id)?;
        let Some(driver) = self.driver() else { return Ok(String::new()) };
        let name = inst.domain.clone();
        let path = driver.call(move |h| async move {
            let n: DomainName = name.parse().map_err(|e: hv_host::domain::NameError| {
                hv_host::HostError::Internal(e.to_string())
            })?;
            Ok(h.console_log(&n))
        })?;
        let max = max_bytes.unwrap_or(CONSOLE_MAX).min(CONSOLE_MAX);
        read_tail(&path, max)
    }
}

/// Removes a suspended instance's saved state (nothing there is fine).
fn discard_saved_state(dir: &std::path::Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            what: "remove the saved state",
            path: dir.display().to_string(),
            source,
        }),
    }
}

fn read_tail(path: &std::path::Path, max: u64) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(source) => {
            return Err(Error::Io { what: "open", path: path.display().to_string(), source })
        }
    };
    let io = |source| Error::Io { what: "read", path: path.display().to_string(), source };
    let len = f.metadata().map_err(io)?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max))).map_err(io)?;
    let mut buf = vec![];
    f.take(max).read_to_end(&mut buf).map_err(io)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
