//! The address pool: which address a client gets, and the record of who holds what.
//!
//! A client (known by its MAC) holds at most one lease. Besides leases the pool remembers
//! pending offers (so two clients discovering at once are not offered the same address) and
//! declined addresses (quarantined: some host on the link already uses them). Only leases are
//! persisted; offers and declines are short-lived and forgotten on restart.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use super::{DhcpConfig, Lease, MacAddr};

/// How long an offered address stays set aside for the client it was offered to.
pub const OFFER_HOLD: Duration = Duration::from_secs(60);

/// How long a declined address is kept out of the pool.
pub const DECLINE_QUARANTINE: Duration = Duration::from_secs(600);

/// Leases, pending offers and declined addresses of one network, indexed both ways so that
/// finding a free address costs one hash lookup per candidate, whatever a guest floods us with.
#[derive(Debug, Default)]
pub struct Pool {
    leases: BTreeMap<MacAddr, Lease>,
    /// Address -> client, for `leases`.
    owner: HashMap<Ipv4Addr, MacAddr>,
    offers: HashMap<MacAddr, (Ipv4Addr, SystemTime)>,
    /// Address -> client, for `offers`.
    offered: HashMap<Ipv4Addr, MacAddr>,
    declined: HashMap<Ipv4Addr, SystemTime>,
    /// The configuration's reservations, both ways.
    reserved_for: HashMap<MacAddr, Ipv4Addr>,
    reserved_by: HashMap<Ipv4Addr, MacAddr>,
}

impl Pool {
    /// A pool holding the `leases` still valid under `config` at `now`: expired ones, ones outside
    /// the range and not reserved to their client, ones contradicting a reservation and second
    /// leases of one MAC or one address are dropped. Also returns whether any was dropped.
    pub fn from_leases(config: &DhcpConfig, leases: Vec<Lease>, now: SystemTime) -> (Pool, bool) {
        let mut pool = Pool::default();
        for r in &config.reservations {
            pool.reserved_for.insert(r.mac, r.ip);
            pool.reserved_by.insert(r.ip, r.mac);
        }
        let mut dropped = false;
        for lease in leases {
            let valid = lease.is_active(now)
                && !pool.leases.contains_key(&lease.mac)
                && !pool.owner.contains_key(&lease.ip)
                && pool.acceptable(config, lease.mac, lease.ip, now);
            if valid {
                pool.insert(lease);
            } else {
                dropped = true;
            }
        }
        (pool, dropped)
    }

    fn insert(&mut self, lease: Lease) {
        self.owner.insert(lease.ip, lease.mac);
        self.leases.insert(lease.mac, lease);
    }

    /// Removes leases, offers and quarantines that ended by `now`; true when a lease went.
    pub fn expire(&mut self, now: SystemTime) -> bool {
        let offered = &mut self.offered;
        self.offers.retain(|_, (ip, until)| {
            let keep = *until > now;
            if !keep {
                offered.remove(ip);
            }
            keep
        });
        self.declined.retain(|_, until| *until > now);
        let before = self.leases.len();
        let owner = &mut self.owner;
        self.leases.retain(|_, l| {
            let keep = l.is_active(now);
            if !keep {
                owner.remove(&l.ip);
            }
            keep
        });
        self.leases.len() != before
    }

    /// The client's lease, if it holds one.
    pub fn lease_of(&self, mac: MacAddr) -> Option<&Lease> {
        self.leases.get(&mac)
    }

    /// All leases, ordered by address.
    pub fn leases(&self) -> Vec<Lease> {
        let mut v: Vec<Lease> = self.leases.values().cloned().collect();
        v.sort_by_key(|l| l.ip);
        v
    }

    /// True when `mac` may hold `ip` at `now`: its reservation if it has one; otherwise an
    /// address of the dynamic range that no reservation, other client's lease or pending offer
    /// holds and that is not quarantined.
    pub fn acceptable(
        &self,
        config: &DhcpConfig,
        mac: MacAddr,
        ip: Ipv4Addr,
        now: SystemTime,
    ) -> bool {
        match self.reserved_for.get(&mac) {
            Some(reserved) => *reserved == ip && self.owner.get(&ip).is_none_or(|m| *m == mac),
            None => self.free_for(config, mac, ip, now),
        }
    }

    fn free_for(&self, config: &DhcpConfig, mac: MacAddr, ip: Ipv4Addr, now: SystemTime) -> bool {
        config.in_range(ip)
            && ip != config.server_ip
            && config.is_host_in_subnet(ip)
            && !self.reserved_by.contains_key(&ip)
            && self.owner.get(&ip).is_none_or(|m| *m == mac)
            && self.offered.get(&ip).is_none_or(|m| *m == mac || !self.offer_live(*m, now))
            && self.declined.get(&ip).is_none_or(|until| *until <= now)
    }

    /// The address to offer `mac`: its reservation, else its current lease, else its pending
    /// offer, else the address it asked for if free, else the first free one in the range;
    /// `None` when the range is exhausted.
    pub fn choose(
        &self,
        config: &DhcpConfig,
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
        now: SystemTime,
    ) -> Option<Ipv4Addr> {
        if let Some(&ip) = self.reserved_for.get(&mac) {
            return self.acceptable(config, mac, ip, now).then_some(ip);
        }
        let candidates = [
            self.leases.get(&mac).map(|l| l.ip),
            self.offers.get(&mac).filter(|(_, until)| *until > now).map(|(ip, _)| *ip),
            requested,
        ];
        if let Some(ip) =
            candidates.into_iter().flatten().find(|ip| self.free_for(config, mac, *ip, now))
        {
            return Some(ip);
        }
        let (first, last) = (u32::from(*config.range.start()), u32::from(*config.range.end()));
        (first..=last).map(Ipv4Addr::from).find(|ip| self.free_for(config, mac, *ip, now))
    }

    /// Sets `ip` aside for `mac` for [`OFFER_HOLD`].
    pub fn hold_offer(&mut self, mac: MacAddr, ip: Ipv4Addr, now: SystemTime) {
        self.forget_offer(mac);
        if let Some(other) = self.offered.insert(ip, mac) {
            // A stale offer of the same address to another client ends here.
            if other != mac {
                self.offers.remove(&other);
            }
        }
        self.offers.insert(mac, (ip, now + OFFER_HOLD));
    }

    fn offer_live(&self, mac: MacAddr, now: SystemTime) -> bool {
        self.offers.get(&mac).is_some_and(|(_, until)| *until > now)
    }

    /// Forgets the offer made to `mac` (it chose another server, or took the lease).
    pub fn forget_offer(&mut self, mac: MacAddr) {
        if let Some((ip, _)) = self.offers.remove(&mac) {
            if self.offered.get(&ip) == Some(&mac) {
                self.offered.remove(&ip);
            }
        }
    }

    /// Gives `mac` the lease on `ip` until `expires`, replacing any lease it held. The caller
    /// has checked [`Pool::acceptable`].
    pub fn grant(
        &mut self,
        mac: MacAddr,
        ip: Ipv4Addr,
        hostname: Option<String>,
        expires: SystemTime,
    ) {
        if let Some(old) = self.leases.remove(&mac) {
            self.owner.remove(&old.ip);
        }
        self.forget_offer(mac);
        self.insert(Lease { mac, ip, hostname, expires });
    }

    /// Ends `mac`'s lease on `ip`; true when it held one.
    pub fn release(&mut self, mac: MacAddr, ip: Ipv4Addr) -> bool {
        if self.leases.get(&mac).is_some_and(|l| l.ip == ip) {
            self.leases.remove(&mac);
            self.owner.remove(&ip);
            true
        } else {
            false
        }
    }

    /// Records that `mac` found `ip` in use: its lease on it ends and the address is quarantined
    /// for [`DECLINE_QUARANTINE`]. Only an address offered or leased to `mac` can be declined
    /// (a guest must not take others' addresses out of the pool): `None` when it was neither,
    /// else whether a lease ended.
    pub fn decline(&mut self, mac: MacAddr, ip: Ipv4Addr, now: SystemTime) -> Option<bool> {
        let offered = self.offers.get(&mac).is_some_and(|(o, _)| *o == ip);
        let leased = self.leases.get(&mac).is_some_and(|l| l.ip == ip);
        if !offered && !leased {
            return None;
        }
        self.forget_offer(mac);
        self.declined.insert(ip, now + DECLINE_QUARANTINE);
        Some(self.release(mac, ip))
    }
}
