//! `--net` for boot_linux: guest NICs on a host TAP or on a network of the state directory.
//!
//! ```text
//! --net tap=NAME[,mac=MAC][,queues=N]       open the TAP NAME if it exists (a host TAP, as
//!                                            Firecracker takes one), or create it
//! --net network=NAME[,mac=MAC][,queues=N]   make a TAP and plug it into the active network
//!                                            NAME defined under --state-dir (default
//!                                            /var/lib/hv), e.g. with hvctl
//! ```
//!
//! `queues=N` (default 1) makes a multiqueue NIC of N queue pairs on a multiqueue TAP.
//!
//! Repeatable; each NIC is a virtio-net device. Without `mac=` a locally administered MAC is
//! made up from the process id and the NIC's position.

use std::path::Path;

use hv::net::network::NetworkManager;
use hv::net::tap::Tap;
use hv::net::virtio_net::{
    NetBackend, NetConfig, NetHandle, TapBackend, VirtioNet, MAX_QUEUE_PAIRS,
};
use hv::net::MacAddr;

/// Where a NIC's frames go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetTarget {
    /// A host TAP, opened or created by name.
    Tap(String),
    /// A network defined in the state directory.
    Network(String),
}

/// One `--net` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetArg {
    /// Where the frames go.
    pub target: NetTarget,
    /// The guest's MAC, if given.
    pub mac: Option<MacAddr>,
    /// Queue pairs (and TAP queues).
    pub queues: usize,
}

/// Parses `tap=NAME[,mac=MAC]` or `network=NAME[,mac=MAC]`.
pub fn parse_net(spec: &str) -> Result<NetArg, String> {
    let mut target = None;
    let mut mac = None;
    let mut queues = 1;
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("tap", name)) if !name.is_empty() => target = Some(NetTarget::Tap(name.into())),
            Some(("network", name)) if !name.is_empty() => {
                target = Some(NetTarget::Network(name.into()))
            }
            Some(("mac", m)) => mac = Some(m.parse().map_err(|e| format!("--net {spec}: {e}"))?),
            Some(("queues", n)) => {
                let range = 1..=MAX_QUEUE_PAIRS;
                queues =
                    n.parse().ok().filter(|n| range.contains(n)).ok_or_else(|| {
                        format!("--net {spec}: queues must be 1 to {MAX_QUEUE_PAIRS}")
                    })?
            }
            _ => {
                return Err(format!(
                    "--net {spec}: want tap=NAME or network=NAME, then ,mac=MAC ,queues=N"
                ))
            }
        }
    }
    let target = target.ok_or_else(|| format!("--net {spec}: tap=NAME or network=NAME needed"))?;
    Ok(NetArg { target, mac, queues })
}

/// A NIC made for the VM: the device to add and what to keep while it runs.
pub struct Nic {
    /// The device, for `VmBuilder::virtio_device`.
    pub device: VirtioNet,
    /// Counters and the link switch.
    pub handle: NetHandle,
    /// A line for the log.
    pub summary: String,
}

/// Opens the TAPs (joining networks where asked) and makes a device for each `--net`.
pub fn make_nics(args: &[NetArg], state_dir: &Path) -> Result<Vec<Nic>, String> {
    let mut nics = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        let mac = arg.mac.unwrap_or_else(|| made_up_mac(i));
        let (tap_name, network) = match &arg.target {
            NetTarget::Tap(name) => (name.clone(), None),
            NetTarget::Network(net) => {
                (format!("hvn{}-{i}", std::process::id() % 1_000_000), Some(net))
            }
        };
        let tap = Tap::builder(&tap_name)
            .queues(arg.queues)
            .open()
            .map_err(|e| format!("net{i}: {e}"))?;
        if let Some(net) = network {
            let mgr = NetworkManager::open(state_dir).map_err(|e| format!("net{i}: {e}"))?;
            mgr.attach_port(net, &tap_name).map_err(|e| format!("net{i}: {e}"))?;
        }
        let backends: Vec<Box<dyn NetBackend>> = TapBackend::per_queue(tap)
            .map_err(|e| format!("net{i}: {e}"))?
            .into_iter()
            .map(|b| Box::new(b) as Box<dyn NetBackend>)
            .collect();
        let (device, handle) = VirtioNet::multi_queue(NetConfig::new(mac), backends)
            .map_err(|e| format!("net{i}: {e}"))?;
        let on = network.map_or(String::new(), |n| format!(" on network {n}"));
        let pairs = arg.queues;
        let summary =
            format!("net{i}: virtio-net {mac}, {pairs} queue pair(s), TAP {tap_name}{on}");
        nics.push(Nic { device, handle, summary });
    }
    Ok(nics)
}

/// A locally administered unicast MAC from the process id and the NIC index.
fn made_up_mac(index: usize) -> MacAddr {
    let pid = std::process::id().to_be_bytes();
    MacAddr([0x52, 0x54, pid[1], pid[2], pid[3], index as u8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_net_arguments() {
        let a = parse_net("tap=hvtap0,mac=52:54:00:00:00:09").unwrap();
        assert_eq!(a.target, NetTarget::Tap("hvtap0".into()));
        assert_eq!(a.mac, Some(MacAddr([0x52, 0x54, 0, 0, 0, 9])));
        assert_eq!(
            parse_net("network=default").unwrap().target,
            NetTarget::Network("default".into())
        );
        assert_eq!(parse_net("tap=t,queues=4").unwrap().queues, 4);
        assert_eq!(parse_net("tap=t").unwrap().queues, 1);
        for bad in
            ["", "tap=", "mac=52:54:00:00:00:01", "bridge=br0", "tap=x,mac=zz", "tap=x,queues=0"]
        {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
    }
}
