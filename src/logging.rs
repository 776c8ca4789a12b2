//! The logger every hv binary installs: `RUST_LOG` when set, else warnings (`-v` info, `-vv`
//! debug), to stderr or to a file.

use std::path::Path;

/// Installs the process's logger. `verbose` counts `-v` flags; `file` sends the log to a file
/// (appended) instead of stderr.
pub fn init(verbose: u8, file: Option<&Path>) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let mut b =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    if let Some(path) = file {
        match std::fs::OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => {
                b.target(env_logger::Target::Pipe(Box::new(f)));
            }
            Err(e) => eprintln!("cannot open log file {}: {e}; logging to stderr", path.display()),
        }
    }
    let _ = b.try_init();
}
