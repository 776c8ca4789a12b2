//! hvctl verbs for networks, with virsh's names (`net-*`). Definitions come from flags rather
//! than virsh's XML. `net-start` runs the network's DHCP server as a detached process of its
//! own (`hvctl --state-dir D net-dhcp-serve NAME`, a hidden verb), the way libvirt runs one
//! dnsmasq per network; `net-destroy` stops it.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hv::net::network::{NetworkDef, NetworkInfo, NetworkManager, NetworkMode, NetworkState};
use hv::net::{Ipv4Cidr, MacAddr};

use crate::cli::{print_table, Args};
use crate::VerbResult;

/// `(verb, one-line help)` for each verb this module handles (`net-dhcp-serve` is hidden).
pub const VERBS: &[(&str, &str)] = &[
    (
        "net-define",
        "NAME --mode nat|isolated|bridge [--bridge BR] [--ip CIDR] [--dhcp-range FIRST,LAST] [--dhcp-host MAC,IP[,NAME]]...",
    ),
    ("net-start", "NETWORK: create its bridge, address, firewall; start its DHCP server"),
    ("net-destroy", "NETWORK: stop DHCP, remove what net-start made"),
    ("net-undefine", "NETWORK: forget an inactive network"),
    ("net-list", "[--all] [--inactive]: list networks"),
    ("net-info", "NETWORK: mode, state, bridge, addresses"),
    ("net-dhcp-leases", "NETWORK [--mac MAC]: the DHCP server's leases"),
];

/// How long `net-start` waits for the DHCP process to bind its socket.
const DHCP_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Options that take a value; every other `--x` is a switch.
const VALUED: &[&str] = &["--mode", "--bridge", "--ip", "--dhcp-range", "--dhcp-host", "--mac"];

/// The single positional network name; `allowed` are the options this verb takes.
fn name<'a>(a: &'a Args, allowed: &[&str]) -> Result<&'a str, String> {
    a.check_known(allowed, 1)?;
    a.arg(0, "--network", "network name")
}

/// Runs `verb` if it is a network verb; `None` when it is not ours.
pub fn run(state_dir: &Path, verb: &str, args: &[String]) -> Option<VerbResult> {
    if !verb.starts_with("net-") {
        return None;
    }
    Some(run_verb(state_dir, verb, args))
}

fn run_verb(state_dir: &Path, verb: &str, args: &[String]) -> VerbResult {
    let switches: &[&str] = match verb {
        "net-list" => &["--all", "--inactive"],
        _ => &[],
    };
    let a = Args::parse(args, VALUED, switches)?;
    let mgr = NetworkManager::open(state_dir).map_err(|e| e.to_string())?;
    match verb {
        "net-define" => {
            let name = name(&a, &["--mode", "--bridge", "--ip", "--dhcp-range", "--dhcp-host"])?;
            let def = definition(name, &a)?;
            mgr.define(def).map_err(|e| e.to_string())?;
            println!("Network {name} defined");
        }
        "net-start" => {
            let name = name(&a, &[])?;
            let info = mgr.start(name).map_err(|e| e.to_string())?;
            if let Err(e) = start_dhcp_process(state_dir, &mgr, &info) {
                let _ = mgr.destroy(name);
                return Err(e);
            }
            println!("Network {name} started");
        }
        "net-destroy" => {
            let name = name(&a, &[])?;
            mgr.destroy(name).map_err(|e| e.to_string())?;
            println!("Network {name} destroyed");
        }
        "net-undefine" => {
            let name = name(&a, &[])?;
            mgr.undefine(name).map_err(|e| e.to_string())?;
            println!("Network {name} has been undefined");
        }
        "net-list" => {
            a.check_known(&[], 0)?;
            let (all, inactive) = (a.has("--all"), a.has("--inactive"));
            let rows: Vec<Vec<String>> = mgr
                .list()
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|n| match n.state {
                    NetworkState::Active => all || !inactive,
                    NetworkState::Defined => all || inactive,
                })
                .map(|n| vec![n.def.name.clone(), n.state.to_string(), "no".into(), "yes".into()])
                .collect();
            print_table(&["Name", "State", "Autostart", "Persistent"], &rows);
        }
        "net-info" => {
            let name = name(&a, &[])?;
            print_info(&mgr.info(name).map_err(|e| e.to_string())?);
        }
        "net-dhcp-leases" => {
            let name = name(&a, &["--mac"])?;
            let mac: Option<MacAddr> = match a.opt("--mac") {
                Some(m) => Some(m.parse().map_err(|e| format!("--mac: {e}"))?),
                None => None,
            };
            let prefix = mgr.get(name).map_err(|e| e.to_string())?.ip.map_or(32, |c| c.prefix);
            let now = SystemTime::now();
            let rows: Vec<Vec<String>> = mgr
                .dhcp_leases(name)
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|l| l.is_active(now) && mac.is_none_or(|m| m == l.mac))
                .map(|l| {
                    vec![
                        utc(l.expires),
                        l.mac.to_string(),
                        "ipv4".into(),
                        format!("{}/{prefix}", l.ip),
                        l.hostname.clone().unwrap_or_else(|| "-".into()),
                        "-".into(),
                    ]
                })
                .collect();
            print_table(
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
        "net-dhcp-serve" => {
            let name = name(&a, &[])?;
            mgr.run_dhcp_daemon(name).map_err(|e| e.to_string())?;
        }
        _ => return Err(format!("unknown verb '{verb}' (see 'hvctl help')")),
    }
    Ok(())
}

fn definition(name: &str, a: &Args) -> Result<NetworkDef, String> {
    let mode: NetworkMode =
        a.opt("--mode").ok_or("net-define needs --mode nat|isolated|bridge")?.parse()?;
    let mut b = NetworkDef::builder(name, mode);
    if let Some(br) = a.opt("--bridge") {
        b = b.bridge(br);
    }
    if let Some(ip) = a.opt("--ip") {
        let cidr: Ipv4Cidr = ip.parse().map_err(|e| format!("--ip: {e}"))?;
        b = b.ip(cidr);
    }
    if let Some(range) = a.opt("--dhcp-range") {
        let (first, last) = range.split_once(',').ok_or("--dhcp-range wants FIRST,LAST")?;
        b = b.dhcp_range(ip4(first, "--dhcp-range")?, ip4(last, "--dhcp-range")?);
    }
    for h in a.all("--dhcp-host") {
        let mut parts = h.splitn(3, ',');
        let (Some(mac), Some(ip)) = (parts.next(), parts.next()) else {
            return Err(format!("--dhcp-host wants MAC,IP[,NAME], not '{h}'"));
        };
        let mac: MacAddr = mac.parse().map_err(|e| format!("--dhcp-host: {e}"))?;
        b = b.dhcp_host_named(mac, ip4(ip, "--dhcp-host")?, parts.next().map(str::to_string));
    }
    b.build().map_err(|e| e.to_string())
}

fn ip4(text: &str, flag: &str) -> Result<Ipv4Addr, String> {
    text.trim().parse().map_err(|_| format!("{flag}: '{text}' is not an IPv4 address"))
}

/// Starts `hvctl net-dhcp-serve NAME` detached (own process group, stdio to a log file) and
/// waits until it has bound its socket and recorded itself.
fn start_dhcp_process(state_dir: &Path, mgr: &NetworkManager, info: &NetworkInfo) -> VerbResult {
    let def = &info.def;
    if def.mode == NetworkMode::Bridge || def.dhcp_range.is_none() {
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find hvctl itself: {e}"))?;
    let state_dir: PathBuf = std::path::absolute(state_dir).map_err(|e| e.to_string())?;
    let log_path = mgr.dhcp_log_file(&def.name);
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut child = Command::new(exe)
        .arg("--state-dir")
        .arg(&state_dir)
        .args(["net-dhcp-serve", &def.name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("network {}: cannot start its DHCP server: {e}", def.name))?;
    let pid = child.id();
    let deadline = std::time::Instant::now() + DHCP_READY_TIMEOUT;
    loop {
        if mgr
            .wait_dhcp_process(&def.name, pid, Duration::from_millis(50))
            .map_err(|e| e.to_string())?
        {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let why =
                log.lines().last().unwrap_or("no output").trim_start_matches("hvctl: error: ");
            return Err(format!("network {}: DHCP server exited ({status}): {why}", def.name));
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            return Err(format!("network {}: DHCP server did not come up", def.name));
        }
    }
}

fn print_info(n: &NetworkInfo) {
    let d = &n.def;
    let row = |k: &str, v: String| println!("{:<15} {v}", format!("{k}:"));
    row("Name", d.name.clone());
    row("Mode", d.mode.to_string());
    row("Active", if n.state == NetworkState::Active { "yes" } else { "no" }.into());
    row("Persistent", "yes".into());
    row("Autostart", "no".into());
    row("Bridge", d.bridge.to_string());
    if let Some(ip) = d.ip {
        row("IP", ip.to_string());
    }
    if let Some(r) = d.dhcp_range {
        row("DHCP range", format!("{} - {}", r.first, r.last));
    }
    for h in &d.dhcp_hosts {
        let name = h.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
        row("DHCP host", format!("{} -> {}{name}", h.mac, h.ip));
    }
    if let Some(t) = &n.created.nft_table {
        row("Firewall", format!("nftables table inet {t}"));
    }
    if let Some(p) = n.dhcp {
        row("DHCP server", format!("pid {}", p.pid));
    }
    println!();
}

/// `YYYY-MM-DD HH:MM:SS` in UTC (virsh prints local time; UTC needs no time-zone database).
fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
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
