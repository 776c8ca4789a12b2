//! Compute hosts: their capacities and allocation ratios, registered by the operator. The
//! store keeps capacity and usage in real columns so placement claims are conditional
//! updates ([`crate::store`]).

use crate::error::{Error, Result};
use crate::events::event;
use crate::ids::uuid;
use crate::policy::{authorize, Action, Context};
use crate::store::{HostRow, Op, StoreError};
use crate::{check_name, Cloud};

/// A compute host as the scheduler sees it.
pub type ComputeHost = HostRow;

/// What the operator registers.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSpec {
    /// The hypervisor hostname.
    pub name: String,
    /// Physical CPUs.
    pub vcpus: i64,
    /// RAM, MiB.
    pub ram_mb: i64,
    /// Disk, GiB.
    pub disk_gb: i64,
    /// CPU allocation ratio (Nova's default 16.0).
    pub cpu_ratio: f64,
    /// RAM allocation ratio (Nova's default 1.5).
    pub ram_ratio: f64,
    /// Disk allocation ratio (Nova's default 1.0).
    pub disk_ratio: f64,
}

impl HostSpec {
    /// A host with Nova's default allocation ratios.
    pub fn new(name: &str, vcpus: i64, ram_mb: i64, disk_gb: i64) -> HostSpec {
        HostSpec {
            name: name.into(),
            vcpus,
            ram_mb,
            disk_gb,
            cpu_ratio: 16.0,
            ram_ratio: 1.5,
            disk_ratio: 1.0,
        }
    }

    fn validate(&self) -> Result<()> {
        check_name("host name", &self.name)?;
        for (field, v) in [("vcpus", self.vcpus), ("ram", self.ram_mb), ("disk", self.disk_gb)] {
            if v < 0 {
                return Err(Error::invalid(field, format!("{v} is negative")));
            }
        }
        for (field, r) in [
            ("cpu_ratio", self.cpu_ratio),
            ("ram_ratio", self.ram_ratio),
            ("disk_ratio", self.disk_ratio),
        ] {
            if !(r.is_finite() && r > 0.0 && r <= 1000.0) {
                return Err(Error::invalid(field, format!("{r} is outside (0, 1000]")));
            }
        }
        Ok(())
    }
}

impl Cloud {
    /// Registers a compute host (admin); it is enabled at once.
    pub fn add_host(&self, ctx: &Context, spec: &HostSpec) -> Result<ComputeHost> {
        authorize(ctx, Action::HostCreate)?;
        spec.validate()?;
        let row = HostRow {
            id: uuid(),
            name: spec.name.clone(),
            enabled: true,
            vcpus: spec.vcpus,
            ram_mb: spec.ram_mb,
            disk_gb: spec.disk_gb,
            cpu_ratio: spec.cpu_ratio,
            ram_ratio: spec.ram_ratio,
            disk_ratio: spec.disk_ratio,
            used_vcpus: 0,
            used_ram_mb: 0,
            used_disk_gb: 0,
        };
        self.store().apply(&[
            Op::PutHost(row.clone()),
            event(
                ctx,
                ctx.project_id(),
                "host.create",
                "host",
                &row.id,
                serde_json::json!({"name": row.name}),
            ),
        ])?;
        self.hosts.refresh(self.store(), &row.id)?;
        Ok(row)
    }

    /// Every compute host (admin).
    pub fn list_hosts(&self, ctx: &Context) -> Result<Vec<ComputeHost>> {
        authorize(ctx, Action::HostList)?;
        Ok(self.store().hosts()?)
    }

    /// One compute host (admin).
    pub fn get_host(&self, ctx: &Context, id: &str) -> Result<ComputeHost> {
        authorize(ctx, Action::HostGet)?;
        self.store().host(id)?.ok_or_else(|| Error::not_found("host", id))
    }

    /// Enables or disables a host for new placements (admin); what runs there stays.
    pub fn set_host_enabled(&self, ctx: &Context, id: &str, enabled: bool) -> Result<()> {
        authorize(ctx, Action::HostUpdate)?;
        let mut h = self.get_host(ctx, id)?;
        h.enabled = enabled;
        self.store().apply(&[
            Op::PutHost(h),
            event(
                ctx,
                ctx.project_id(),
                "host.update",
                "host",
                id,
                serde_json::json!({"enabled": enabled}),
            ),
        ])?;
        self.hosts.refresh(self.store(), id)
    }

    /// Removes a host that holds no allocations (admin).
    pub fn delete_host(&self, ctx: &Context, id: &str) -> Result<()> {
        authorize(ctx, Action::HostDelete)?;
        self.store()
            .apply(&[
                Op::DeleteHost(id.to_string()),
                event(ctx, ctx.project_id(), "host.delete", "host", id, serde_json::json!({})),
            ])
            .map_err(|e| match e {
                StoreError::Missing { .. } => Error::not_found("host", id),
                StoreError::HostBusy(_) => Error::Conflict {
                    kind: "host",
                    id: id.into(),
                    reason: "it still holds allocations".into(),
                },
                e => e.into(),
            })?;
        self.hosts.refresh(self.store(), id)
    }
}
