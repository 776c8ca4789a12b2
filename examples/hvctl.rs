//! hvctl: a virsh-shaped command-line tool over the hv SDK.
//!
//! ```text
//! hvctl [--state-dir DIR] VERB [ARGS...]
//! ```
//!
//! Verbs carry virsh's names: `pool-*` and `vol-*` for storage, `net-*` for networks.
//! Definitions are kept under `--state-dir` (default `/var/lib/hv`). Errors are one line on
//! stderr and a non-zero exit.

use std::path::PathBuf;
use std::process::ExitCode;

#[path = "hvctl/cli.rs"]
mod cli;
#[path = "hvctl/net.rs"]
mod net;
#[path = "hvctl/storage.rs"]
mod storage;

/// What a verb handler returns: `Ok(())`, or a one-line error for stderr.
pub type VerbResult = Result<(), String>;

fn usage() -> String {
    let mut s = String::from("usage: hvctl [--state-dir DIR] VERB [ARGS...]\n\nverbs:\n");
    for (verb, help) in storage::VERBS.iter().chain(net::VERBS.iter()) {
        s.push_str(&format!("  {verb:<16} {help}\n"));
    }
    s
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut state_dir = PathBuf::from("/var/lib/hv");
    if let Some(i) = args.iter().position(|a| a == "--state-dir") {
        if i + 1 >= args.len() {
            eprintln!("hvctl: error: --state-dir needs a directory");
            return ExitCode::from(2);
        }
        state_dir = PathBuf::from(args.remove(i + 1));
        args.remove(i);
    }
    let Some(verb) = args.first().cloned() else {
        eprint!("{}", usage());
        return ExitCode::from(2);
    };
    if verb == "help" || verb == "--help" || verb == "-h" {
        print!("{}", usage());
        return ExitCode::SUCCESS;
    }
    let rest = &args[1..];
    let result = if let Some(r) = storage::run(&state_dir, &verb, rest) {
        r
    } else if let Some(r) = net::run(&state_dir, &verb, rest) {
        r
    } else {
        Err(format!("unknown verb '{verb}' (see 'hvctl help')"))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hvctl: error: {e}");
            ExitCode::FAILURE
        }
    }
}
