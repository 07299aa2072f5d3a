//! Warnings of the data pipeline: things worth telling the user about that do not stop a run (a mask that is not
//! pure 0/255, a mask without an image, a file name that is not UTF-8).
//!
//! Each is printed once per file and process on stderr as `warning: PATH: MESSAGE` (the path shown lossily when
//! it is not UTF-8), however many epochs decode the file again. Every warning printed is also kept in memory so
//! that callers and tests can read them back with [`warnings`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

struct Log {
    warned: HashSet<(PathBuf, &'static str)>,
    lines: Vec<String>,
}

static LOG: Mutex<Option<Log>> = Mutex::new(None);

/// Prints `warning: PATH: MESSAGE` unless a warning of this `kind` was already printed for `path` in this process.
/// Returns whether it was printed.
pub fn warn_once(path: &Path, kind: &'static str, message: &str) -> bool {
    let mut guard = LOG.lock().unwrap_or_else(|e| e.into_inner());
    let log = guard.get_or_insert_with(|| Log { warned: HashSet::new(), lines: Vec::new() });
    if !log.warned.insert((path.to_path_buf(), kind)) {
        return false;
    }
    let line = format!("warning: {}: {message}", path.display());
    eprintln!("{line}");
    log.lines.push(line);
    true
}

/// Every warning printed so far by this process, in order (each `warning: PATH: MESSAGE`).
pub fn warnings() -> Vec<String> {
    let guard = LOG.lock().unwrap_or_else(|e| e.into_inner());
    guard.as_ref().map(|l| l.lines.clone()).unwrap_or_default()
}
