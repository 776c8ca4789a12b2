//! hvctl: virsh's verbs for hv hosts (domains, pools and volumes, networks). A client of `hvd`: it parses the verb, sends one call to
//! the daemon, and prints the answer as virsh prints it.
//!
//! ```text
//! hvctl [-c URI | --state-dir DIR] VERB [ARGS...]
//! ```
//!
//! `-c hv+unix:///ABS/PATH/hvd.sock` or `-c hv+tcp://HOST:PORT` selects a host;
//! `--state-dir DIR` means the local daemon of DIR, started on demand (it exits again after an
//! idle timeout once nothing runs), like libvirt's session daemon. Exit status: 0 on success,
//! 1 on error (virsh's).

mod connect;
mod console;
mod domain;
mod net;
mod output;
mod progress;
mod storage;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::connect::Conn;

/// hvctl: manage hv domains (virsh's verbs).
#[derive(Debug, Parser)]
#[command(name = "hvctl", version, about, propagate_version = true)]
struct Cli {
    /// The host to talk to: `hv+unix:///ABS/PATH/hvd.sock` or `hv+tcp://HOST:PORT`.
    #[arg(short = 'c', long = "connect", value_name = "URI", global = true)]
    connect: Option<String>,
    /// Use the local daemon of this state directory, starting it if none runs.
    #[arg(long, value_name = "DIR", global = true, conflicts_with = "connect")]
    state_dir: Option<PathBuf>,
    /// The shared key file for `hv+tcp://` hosts (default: `$HV_AUTH_KEY_FILE`).
    #[arg(long, value_name = "FILE", global = true)]
    auth_key_file: Option<PathBuf>,
    #[command(subcommand)]
    verb: Verb,
}

/// The verbs, with virsh's names and arguments.
#[derive(Debug, Subcommand)]
enum Verb {
    /// Define (but do not start) a domain from an XML file.
    Define {
        /// File containing libvirt domain XML.
        file: PathBuf,
    },
    /// Undefine a shut-off domain.
    Undefine {
        /// Domain name or UUID.
        domain: String,
    },
    /// Start a (previously defined) inactive domain.
    Start {
        /// Domain name or UUID.
        domain: String,
    },
    /// Gracefully shut down a domain (ACPI power button).
    Shutdown {
        /// Domain name or UUID.
        domain: String,
        /// Seconds to wait for the guest, then force it off.
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
    },
    /// Destroy (stop) a domain at once.
    Destroy {
        /// Domain name or UUID.
        domain: String,
    },
    /// Reboot a domain.
    Reboot {
        /// Domain name or UUID.
        domain: String,
    },
    /// Suspend (pause) a domain.
    Suspend {
        /// Domain name or UUID.
        domain: String,
    },
    /// Resume a suspended domain.
    Resume {
        /// Domain name or UUID.
        domain: String,
    },
    /// List domains.
    List {
        /// List inactive domains too.
        #[arg(long)]
        all: bool,
        /// List only inactive domains.
        #[arg(long)]
        inactive: bool,
        /// Print only names.
        #[arg(long)]
        name: bool,
    },
    /// Domain information.
    Dominfo {
        /// Domain name or UUID.
        domain: String,
    },
    /// Domain state.
    Domstate {
        /// Domain name or UUID.
        domain: String,
        /// Also print the reason.
        #[arg(long)]
        reason: bool,
    },
    /// Domain information in XML.
    Dumpxml {
        /// Domain name or UUID.
        domain: String,
    },
    /// Connect to the guest's serial console (Ctrl-] detaches).
    Console {
        /// Domain name or UUID.
        domain: String,
        /// Take the console from a session that holds it.
        #[arg(long)]
        force: bool,
    },
    /// Mark a domain to start with the daemon.
    Autostart {
        /// Domain name or UUID.
        domain: String,
        /// Unmark it instead.
        #[arg(long)]
        disable: bool,
    },
    /// List a domain's disks.
    Domblklist {
        /// Domain name or UUID.
        domain: String,
    },
    /// List a domain's network interfaces.
    Domiflist {
        /// Domain name or UUID.
        domain: String,
    },
    /// Attach a disk to a shut-off domain's definition.
    #[command(name = "attach-disk")]
    AttachDisk {
        /// Domain name or UUID.
        domain: String,
        /// An absolute file path, or POOL/VOLUME.
        source: String,
        /// The guest's device name (vdX).
        target: String,
        /// The image format: raw (default) or qcow2.
        #[arg(long, value_name = "FORMAT")]
        subdriver: Option<String>,
        /// `readonly` for a read-only disk.
        #[arg(long, value_name = "MODE")]
        mode: Option<String>,
        /// Change the persistent definition (the only mode hv supports, as the domain is off).
        #[arg(long)]
        config: bool,
    },
    /// Detach a disk from a shut-off domain's definition.
    #[command(name = "detach-disk")]
    DetachDisk {
        /// Domain name or UUID.
        domain: String,
        /// The guest's device name (vdX).
        target: String,
        /// Change the persistent definition.
        #[arg(long)]
        config: bool,
    },
    /// Save a running domain's state to a file and stop it.
    Save {
        /// Domain name or UUID.
        domain: String,
        /// Where the state goes.
        file: PathBuf,
    },
    /// Restore a domain from a saved state file.
    Restore {
        /// What `save` wrote.
        file: PathBuf,
    },
    /// Migrate a running domain to another host (shared storage needed).
    Migrate {
        /// Live migration: the guest runs while its memory is copied.
        #[arg(long)]
        live: bool,
        /// Define the domain on the destination (hv always does).
        #[arg(long)]
        persistent: bool,
        /// Undefine the domain on the source afterwards.
        #[arg(long)]
        undefinesource: bool,
        /// Domain name or UUID.
        domain: String,
        /// The destination: `hv+unix:///ABS/PATH/hvd.sock` or `hv+tcp://HOST:PORT`.
        desturi: String,
        /// The destination's key (read from the key file for hv+tcp:// destinations).
        #[arg(skip)]
        dest_key: Option<String>,
    },
    #[command(flatten)]
    Storage(storage::StorageVerb),
    #[command(flatten)]
    Net(net::NetVerb),
    /// Print shell completions for hvctl.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Verb::Completions { shell } = cli.verb {
        clap_complete::generate(shell, &mut Cli::command(), "hvctl", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut verb = cli.verb;
    if let Verb::Migrate { desturi, dest_key, .. } = &mut verb {
        if desturi.starts_with("hv+tcp://") {
            match connect::read_key(cli.auth_key_file.as_deref()) {
                Ok(k) => *dest_key = Some(k),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let result = rt.block_on(async {
        let conn = Conn::open(
            cli.connect.as_deref(),
            cli.state_dir.as_deref(),
            cli.auth_key_file.as_deref(),
        )
        .await?;
        domain::run(&conn, verb).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
