//! The network verbs (`net-*`), with virsh's names. Definitions come from flags rather than
//! virsh's XML; hvd runs each network's DHCP server as a process of its own (libvirt runs one
//! dnsmasq per network).

use std::net::Ipv4Addr;

use clap::Subcommand;
use hv::host::protocol::{Call, Reply};
use hv::net::network::{NetworkDef, NetworkMode};
use hv::net::{Ipv4Cidr, MacAddr};

use crate::connect::Conn;
use crate::output::{field, table};

type VerbResult = Result<(), String>;

/// Network verbs.
#[derive(Debug, Subcommand)]
pub enum NetVerb {
    /// Define a network.
    #[command(name = "net-define")]
    Define {
        /// The network name.
        name: String,
        /// `nat`, `isolated` or `bridge`.
        #[arg(long)]
        mode: String,
        /// The bridge (required for bridge mode; `hvNAME` by default).
        #[arg(long, value_name = "BR")]
        bridge: Option<String>,
        /// The gateway address and prefix, `A.B.C.D/N`.
        #[arg(long, value_name = "CIDR")]
        ip: Option<String>,
        /// The dynamic DHCP range, `FIRST,LAST`.
        #[arg(long = "dhcp-range", value_name = "FIRST,LAST")]
        dhcp_range: Option<String>,
        /// A reservation, `MAC,IP[,NAME]` (repeatable).
        #[arg(long = "dhcp-host", value_name = "MAC,IP[,NAME]")]
        dhcp_host: Vec<String>,
    },
    /// Start a network: its bridge, address, firewall and DHCP server.
    #[command(name = "net-start")]
    Start {
        /// The network.
        network: String,
    },
    /// Stop a network's DHCP server and remove what net-start made.
    #[command(name = "net-destroy")]
    Destroy {
        /// The network.
        network: String,
    },
    /// Forget an inactive network.
    #[command(name = "net-undefine")]
    Undefine {
        /// The network.
        network: String,
    },
    /// List networks.
    #[command(name = "net-list")]
    List {
        /// Inactive networks too.
        #[arg(long)]
        all: bool,
        /// Only inactive networks.
        #[arg(long)]
        inactive: bool,
    },
    /// A network's mode, state, bridge and addresses.
    #[command(name = "net-info")]
    Info {
        /// The network.
        network: String,
    },
    /// The DHCP server's active leases.
    #[command(name = "net-dhcp-leases")]
    DhcpLeases {
        /// The network.
        network: String,
        /// Only this client's leases.
        #[arg(long)]
        mac: Option<String>,
    },
}

fn ip4(text: &str, flag: &str) -> Result<Ipv4Addr, String> {
    text.trim().parse().map_err(|_| format!("{flag}: '{text}' is not an IPv4 address"))
}

fn definition(
    name: &str,
    mode: &str,
    bridge: Option<&str>,
    ip: Option<&str>,
    range: Option<&str>,
    hosts: &[String],
) -> Result<NetworkDef, String> {
    let mode: NetworkMode = mode.parse()?;
    let mut b = NetworkDef::builder(name, mode);
    if let Some(br) = bridge {
        b = b.bridge(br);
    }
    if let Some(ip) = ip {
        let cidr: Ipv4Cidr = ip.parse().map_err(|e| format!("--ip: {e}"))?;
        b = b.ip(cidr);
    }
    if let Some(range) = range {
        let (first, last) = range.split_once(',').ok_or("--dhcp-range wants FIRST,LAST")?;
        b = b.dhcp_range(ip4(first, "--dhcp-range")?, ip4(last, "--dhcp-range")?);
    }
    for h in hosts {
        let mut parts = h.splitn(3, ',');
        let (Some(mac), Some(ip)) = (parts.next(), parts.next()) else {
            return Err(format!("--dhcp-host wants MAC,IP[,NAME], not '{h}'"));
        };
        let mac: MacAddr = mac.parse().map_err(|e| format!("--dhcp-host: {e}"))?;
        b = b.dhcp_host_named(mac, ip4(ip, "--dhcp-host")?, parts.next().map(str::to_string));
    }
    b.build().map_err(|e| e.to_string())
}

/// Runs one network verb against the daemon.
pub async fn run(conn: &Conn, verb: NetVerb) -> VerbResult {
    use NetVerb as V;
    match verb {
        V::Define { name, mode, bridge, ip, dhcp_range, dhcp_host } => {
            let def = definition(
                &name,
                &mode,
                bridge.as_deref(),
                ip.as_deref(),
                dhcp_range.as_deref(),
                &dhcp_host,
            )?;
            conn.call(&Call::NetDefine { def }).await?;
            println!("Network {name} defined");
        }
        V::Start { network } => {
            conn.call(&Call::NetStart { network: network.clone() }).await?;
            println!("Network {network} started");
        }
        V::Destroy { network } => {
            conn.call(&Call::NetDestroy { network: network.clone() }).await?;
            println!("Network {network} destroyed");
        }
        V::Undefine { network } => {
            conn.call(&Call::NetUndefine { network: network.clone() }).await?;
            println!("Network {network} has been undefined");
        }
        V::List { all, inactive } => {
            let Reply::Networks { networks } = conn.call(&Call::NetList).await? else {
                return Err("unexpected answer".into());
            };
            let rows: Vec<Vec<String>> = networks
                .into_iter()
                .filter(|n| if n.active { all || !inactive } else { all || inactive })
                .map(|n| {
                    let state = if n.active { "active" } else { "inactive" };
                    vec![n.name, state.into(), "no".into(), "yes".into()]
                })
                .collect();
            table(&["Name", "State", "Autostart", "Persistent"], &rows);
        }
        V::Info { network } => {
            let Reply::NetInfo(n) = conn.call(&Call::NetInfo { network }).await? else {
                return Err("unexpected answer".into());
            };
            let d = &n.def;
            field("Name", &d.name);
            field("Mode", d.mode);
            field("Active", if n.active { "yes" } else { "no" });
            field("Persistent", "yes");
            field("Autostart", "no");
            field("Bridge", &d.bridge);
            if let Some(ip) = d.ip {
                field("IP", ip);
            }
            if let Some(r) = d.dhcp_range {
                field("DHCP range", format!("{} - {}", r.first, r.last));
            }
            for h in &d.dhcp_hosts {
                let name = h.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
                field("DHCP host", format!("{} -> {}{name}", h.mac, h.ip));
            }
            if let Some(t) = &n.nft_table {
                field("Firewall", format!("nftables table inet {t}"));
            }
            if let Some(p) = n.dhcp_pid {
                field("DHCP server", format!("pid {p}"));
            }
            println!();
        }
        V::DhcpLeases { network, mac } => {
            let Reply::Leases { leases } = conn.call(&Call::NetDhcpLeases { network, mac }).await?
            else {
                return Err("unexpected answer".into());
            };
            let rows: Vec<Vec<String>> = leases
                .into_iter()
                .map(|l| {
                    vec![
                        utc(l.expires),
                        l.mac,
                        "ipv4".into(),
                        format!("{}/{}", l.ip, l.prefix),
                        l.hostname.unwrap_or_else(|| "-".into()),
                        "-".into(),
                    ]
                })
                .collect();
            table(
                &[
                    "Expiry Time",
                    "MAC address",
                    "Protocol",
                    "IP address",
                    "Hostname",
                    "Client ID or DUID",
                ],
                &rows,
            );
        }
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` in UTC (virsh prints local time; UTC needs no time-zone database).
fn utc(secs: u64) -> String {
    let secs = secs as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
