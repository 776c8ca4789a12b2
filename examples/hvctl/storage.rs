//! hvctl verbs for this domain.

use std::path::Path;

use crate::VerbResult;

/// `(verb, one-line help)` for each verb this module handles.
pub const VERBS: &[(&str, &str)] = &[];

/// Runs `verb` if this module handles it; `None` when the verb is not ours.
pub fn run(_state_dir: &Path, _verb: &str, _args: &[String]) -> Option<VerbResult> {
    None
}
