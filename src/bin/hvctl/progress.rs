//! Progress for long operations (indicatif), shown only when stdout is a terminal so scripts
//! and tests read the same output virsh gives.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A byte-count bar over `total` bytes, or `None` when stdout is not a terminal.
pub fn bar(total: u64, what: String) -> Option<ProgressBar> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let b = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_message(what);
    Some(b)
}

/// A spinner for an operation of unknown length, or `None` when stdout is not a terminal.
pub fn spinner(what: String) -> Option<ProgressBar> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let s = ProgressBar::new_spinner();
    s.set_message(what);
    s.enable_steady_tick(Duration::from_millis(100));
    Some(s)
}

/// Removes a bar or spinner from the terminal.
pub fn finish(p: Option<ProgressBar>) {
    if let Some(p) = p {
        p.finish_and_clear();
    }
}
