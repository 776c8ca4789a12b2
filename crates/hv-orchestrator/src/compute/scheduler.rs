//! The scheduler: Nova's filter scheduler in miniature.
//!
//! 1. Filters drop hosts that cannot take the request: disabled hosts, and those without
//!    room for its vCPUs, RAM and disk after the allocation ratios (capacity x ratio - used),
//!    and, for a server group, hosts that break its affinity or anti-affinity policy.
//! 2. A weigher ranks the rest: [`Weigher::Spread`] (most free RAM first, Nova's default)
//!    or [`Weigher::Pack`] (least free RAM first).
//! 3. The best host is claimed in the store ([`crate::store::Op::Claim`], a conditional
//!    update against capacity), together with the group membership (compare-and-swap on
//!    the group's version), in one transaction. A claim that loses a race refreshes that host
//!    and tries the next best, so concurrent requests, from threads or processes, never
//!    over-allocate a host and never break a group's policy.
//!
//! The filtering and weighing run over an in-memory view of the hosts ([`HostView`]), like
//! Nova's host manager cache; the store stays the truth, and the view is corrected by every
//! claim that fails and by [`Cloud::refresh_hosts`].

use std::collections::{HashMap, HashSet};
use std::sync::{PoisonError, RwLock};

use crate::compute::server_group::{GroupPolicy, Member, ServerGroup};
use crate::error::{Error, Result};
use crate::events::event;
use crate::policy::{authorize, Action, Context};
use crate::records::to_record;
use crate::store::{Allocation, HostRow, Op, Store, StoreError};
use crate::Cloud;

/// How hosts are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Weigher {
    /// Most free RAM first: spreads instances (Nova's default, `ram_weight_multiplier` 1.0).
    #[default]
    Spread,
    /// Least free RAM first: packs instances (`ram_weight_multiplier` -1.0).
    Pack,
}

/// A host as the filters see it: what is left after the allocation ratios.
#[derive(Debug, Clone, PartialEq)]
pub struct HostState {
    /// The host id.
    pub id: String,
    /// Whether it takes new placements.
    pub enabled: bool,
    /// vCPUs left (capacity x ratio - used).
    pub free_vcpus: f64,
    /// RAM left, MiB.
    pub free_ram_mb: f64,
    /// Disk left, GiB.
    pub free_disk_gb: f64,
}

impl HostState {
    /// The state of a stored host.
    pub fn of(h: &HostRow) -> HostState {
        HostState {
            id: h.id.clone(),
            enabled: h.enabled,
            free_vcpus: h.vcpus as f64 * h.cpu_ratio - h.used_vcpus as f64,
            free_ram_mb: h.ram_mb as f64 * h.ram_ratio - h.used_ram_mb as f64,
            free_disk_gb: h.disk_gb as f64 * h.disk_ratio - h.used_disk_gb as f64,
        }
    }

    fn take(&mut self, r: &Request, sign: f64) {
        self.free_vcpus -= sign * r.vcpus as f64;
        self.free_ram_mb -= sign * r.ram_mb as f64;
        self.free_disk_gb -= sign * r.disk_gb as f64;
    }
}

/// What is to be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// vCPUs.
    pub vcpus: i64,
    /// RAM, MiB.
    pub ram_mb: i64,
    /// Disk, GiB.
    pub disk_gb: i64,
}

/// The server-group filter of a request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GroupRule {
    /// No group.
    #[default]
    None,
    /// Only these hosts (the group's members' host), or any host while the group is empty.
    Affinity(HashSet<String>),
    /// None of these hosts.
    AntiAffinity(HashSet<String>),
}

impl GroupRule {
    /// The rule a group imposes now.
    pub fn of(g: &ServerGroup) -> GroupRule {
        let hosts = g.members.iter().map(|m| m.host_id.clone()).collect();
        match g.policy {
            GroupPolicy::Affinity => GroupRule::Affinity(hosts),
            GroupPolicy::AntiAffinity => GroupRule::AntiAffinity(hosts),
        }
    }

    fn allows(&self, host: &str) -> bool {
        match self {
            GroupRule::None => true,
            GroupRule::Affinity(h) => h.is_empty() || h.contains(host),
            GroupRule::AntiAffinity(h) => !h.contains(host),
        }
    }
}

/// Filters and weighs `hosts` for `req`, skipping the indexes in `excluded`; returns the
/// index of the best host.
pub fn select(
    hosts: &[HostState],
    req: &Request,
    weigher: Weigher,
    group: &GroupRule,
    excluded: &[usize],
) -> Option<usize> {
    let (v, r, d) = (req.vcpus as f64, req.ram_mb as f64, req.disk_gb as f64);
    let sign = match weigher {
        Weigher::Spread => 1.0,
        Weigher::Pack => -1.0,
    };
    let mut best: Option<(usize, f64)> = None;
    for (i, h) in hosts.iter().enumerate() {
        if !h.enabled || h.free_vcpus < v || h.free_ram_mb < r || h.free_disk_gb < d {
            continue;
        }
        let weight = sign * h.free_ram_mb;
        if best.is_some_and(|(_, w)| weight <= w) {
            continue;
        }
        if !group.allows(&h.id) || excluded.contains(&i) {
            continue;
        }
        best = Some((i, weight));
    }
    best.map(|(i, _)| i)
}

/// The scheduler's view of every host, rebuilt from the store on demand.
#[derive(Debug, Default)]
pub struct HostView {
    inner: RwLock<ViewInner>,
}

#[derive(Debug, Default)]
struct ViewInner {
    hosts: Vec<HostState>,
    index: HashMap<String, usize>,
}

impl ViewInner {
    fn set(&mut self, id: &str, state: Option<HostState>) {
        match (self.index.get(id).copied(), state) {
            (Some(i), Some(s)) => self.hosts[i] = s,
            (None, Some(s)) => {
                self.index.insert(id.to_string(), self.hosts.len());
                self.hosts.push(s);
            }
            (Some(i), None) => {
                self.hosts.swap_remove(i);
                self.index.remove(id);
                if let Some(moved) = self.hosts.get(i) {
                    self.index.insert(moved.id.clone(), i);
                }
            }
            (None, None) => {}
        }
    }
}

impl HostView {
    /// Loads every host from the store.
    pub fn load(store: &dyn Store) -> Result<HostView> {
        let view = HostView::default();
        view.reload(store)?;
        Ok(view)
    }

    /// Replaces the view with the store's hosts.
    pub fn reload(&self, store: &dyn Store) -> Result<()> {
        let hosts: Vec<HostState> = store.hosts()?.iter().map(HostState::of).collect();
        let index = hosts.iter().enumerate().map(|(i, h)| (h.id.clone(), i)).collect();
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = ViewInner { hosts, index };
        Ok(())
    }

    /// Re-reads one host from the store (removing it from the view if it is gone).
    pub fn refresh(&self, store: &dyn Store, id: &str) -> Result<()> {
        let state = store.host(id)?.as_ref().map(HostState::of);
        self.inner.write().unwrap_or_else(PoisonError::into_inner).set(id, state);
        Ok(())
    }

    fn pick(
        &self,
        req: &Request,
        weigher: Weigher,
        group: &GroupRule,
        excluded: &[String],
    ) -> Option<String> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let excluded: Vec<usize> =
            excluded.iter().filter_map(|id| inner.index.get(id).copied()).collect();
        select(&inner.hosts, req, weigher, group, &excluded).map(|i| inner.hosts[i].id.clone())
    }

    fn adjust(&self, id: &str, req: &Request, sign: f64) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = inner.index.get(id).copied() {
            inner.hosts[i].take(req, sign);
        }
    }
}

/// Where a consumer was placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The consumer (instance id).
    pub consumer_id: String,
    /// The host.
    pub host_id: String,
}

/// How many hosts one request tries before giving up (each failure means another request
/// took the room first).
const MAX_ATTEMPTS: usize = 64;

impl Cloud {
    /// Re-reads every host from the store (after other processes placed or freed).
    pub fn refresh_hosts(&self) -> Result<()> {
        self.hosts.reload(self.store())
    }

    /// Places consumer `consumer_id` of the caller's project with flavor `flavor_id`,
    /// optionally in server group `group_id`, and claims the room atomically.
    pub fn schedule(
        &self,
        ctx: &Context,
        consumer_id: &str,
        flavor_id: &str,
        group_id: Option<&str>,
    ) -> Result<Placement> {
        authorize(ctx, Action::Schedule)?;
        crate::check_name("consumer id", consumer_id)?;
        let f = self.get_flavor(ctx, flavor_id)?;
        if f.disabled {
            return Err(Error::invalid("flavor", format!("flavor '{flavor_id}' is disabled")));
        }
        let req =
            Request { vcpus: f.vcpus.into(), ram_mb: f.ram_mb as i64, disk_gb: f.disk_gb as i64 };
        let mut excluded: Vec<String> = vec![];
        for _ in 0..MAX_ATTEMPTS {
            let group = match group_id {
                Some(id) => Some(self.load_group(ctx, id)?),
                None => None,
            };
            let rule = group.as_ref().map(|(g, _)| GroupRule::of(g)).unwrap_or_default();
            let Some(host_id) = self.hosts.pick(&req, self.config().weigher, &rule, &excluded)
            else {
                return Err(Error::NoValidHost(format!(
                    "no host has room for {} vCPUs, {} MiB, {} GiB{}",
                    req.vcpus,
                    req.ram_mb,
                    req.disk_gb,
                    if group.is_some() { " within its server group's policy" } else { "" }
                )));
            };
            let mut ops = vec![Op::Claim(Allocation {
                consumer_id: consumer_id.to_string(),
                host_id: host_id.clone(),
                project_id: ctx.project_id().to_string(),
                vcpus: req.vcpus,
                ram_mb: req.ram_mb,
                disk_gb: req.disk_gb,
            })];
            if let Some((mut g, version)) = group {
                g.members
                    .push(Member { consumer_id: consumer_id.into(), host_id: host_id.clone() });
                ops.push(Op::Update(to_record(&g, version)));
            }
            ops.push(event(
                ctx,
                ctx.project_id(),
                "placement.claim",
                "consumer",
                consumer_id,
                serde_json::json!({"host": host_id, "flavor": flavor_id}),
            ));
            match self.store().apply(&ops) {
                Ok(()) => {
                    self.hosts.adjust(&host_id, &req, 1.0);
                    return Ok(Placement { consumer_id: consumer_id.into(), host_id });
                }
                Err(StoreError::NoCapacity { .. }) => {
                    self.hosts.refresh(self.store(), &host_id)?;
                    excluded.push(host_id);
                }
                // The group changed under us: read it again and decide anew.
                Err(StoreError::Stale { .. }) => {}
                Err(StoreError::Exists { kind, .. }) if kind == "allocation" => {
                    return Err(Error::Conflict {
                        kind: "consumer",
                        id: consumer_id.into(),
                        reason: "it is already placed".into(),
                    })
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::NoValidHost(format!("gave up after {MAX_ATTEMPTS} contended claims")))
    }

    /// Gives a consumer's room back and removes it from its server group.
    pub fn unschedule(
        &self,
        ctx: &Context,
        consumer_id: &str,
        group_id: Option<&str>,
    ) -> Result<()> {
        authorize(ctx, Action::Unschedule)?;
        let a = match self.store().allocation(consumer_id)? {
            Some(a) if ctx.owns(&a.project_id) => a,
            _ => return Err(Error::not_found("placement", consumer_id)),
        };
        loop {
            let mut ops = vec![Op::Unclaim(consumer_id.to_string())];
            if let Some(id) = group_id {
                let (mut g, version) = self.load_group(ctx, id)?;
                g.members.retain(|m| m.consumer_id != consumer_id);
                ops.push(Op::Update(to_record(&g, version)));
            }
            ops.push(event(
                ctx,
                &a.project_id,
                "placement.release",
                "consumer",
                consumer_id,
                serde_json::json!({"host": a.host_id}),
            ));
            match self.store().apply(&ops) {
                Ok(()) => break,
                Err(StoreError::Stale { .. }) => continue,
                Err(StoreError::Missing { kind, .. }) if kind == "allocation" => {
                    return Err(Error::not_found("placement", consumer_id))
                }
                Err(e) => return Err(e.into()),
            }
        }
        let req = Request { vcpus: a.vcpus, ram_mb: a.ram_mb, disk_gb: a.disk_gb };
        self.hosts.adjust(&a.host_id, &req, -1.0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, vcpus: f64, ram: f64) -> HostState {
        HostState {
            id: id.into(),
            enabled: true,
            free_vcpus: vcpus,
            free_ram_mb: ram,
            free_disk_gb: 100.0,
        }
    }

    #[test]
    fn filters_and_weighers_pick_as_nova_would() {
        let hosts = vec![host("a", 4.0, 1000.0), host("b", 4.0, 4000.0), host("c", 1.0, 8000.0)];
        let req = Request { vcpus: 2, ram_mb: 512, disk_gb: 1 };
        assert_eq!(select(&hosts, &req, Weigher::Spread, &GroupRule::None, &[]), Some(1));
        assert_eq!(select(&hosts, &req, Weigher::Pack, &GroupRule::None, &[]), Some(0));
        assert_eq!(select(&hosts, &req, Weigher::Spread, &GroupRule::None, &[1]), Some(0));
        let anti = GroupRule::AntiAffinity(HashSet::from(["b".to_string()]));
        assert_eq!(select(&hosts, &req, Weigher::Spread, &anti, &[]), Some(0));
        let aff = GroupRule::Affinity(HashSet::from(["a".to_string()]));
        assert_eq!(select(&hosts, &req, Weigher::Spread, &aff, &[]), Some(0));
        let big = Request { vcpus: 8, ram_mb: 512, disk_gb: 1 };
        assert_eq!(select(&hosts, &big, Weigher::Spread, &GroupRule::None, &[]), None);
        let mut off = hosts.clone();
        off[1].enabled = false;
        assert_eq!(select(&off, &req, Weigher::Spread, &GroupRule::None, &[]), Some(0));
    }

    #[test]
    fn ratios_scale_capacity() {
        let row = HostRow {
            id: "h".into(),
            name: "h".into(),
            enabled: true,
            vcpus: 2,
            ram_mb: 1024,
            disk_gb: 10,
            cpu_ratio: 16.0,
            ram_ratio: 1.5,
            disk_ratio: 1.0,
            used_vcpus: 2,
            used_ram_mb: 0,
            used_disk_gb: 0,
        };
        let s = HostState::of(&row);
        assert_eq!((s.free_vcpus, s.free_ram_mb, s.free_disk_gb), (30.0, 1536.0, 10.0));
    }
}
