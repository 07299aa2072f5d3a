//! Crash-safe file writes: everything the engine saves (checkpoints, metrics, plots, masks, caches, reports) goes
//! to a temporary file beside the target, is synced, then renamed over it, and the folder is synced after the
//! rename (on Unix), so that a crash, a power cut or a reader never sees a torn file: only the old one or the new
//! one, and once the call returns, the new one durably.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `path` atomically: `fill` writes the contents into a buffered temporary file in the same folder, which
/// is then flushed, synced and renamed to `path`; then the folder itself is synced so that the rename survives a
/// power cut. On any failure the temporary file is removed and the error names `path`.
pub fn write_atomic<F>(path: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
{
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = temp_path(path);
    let result = (|| {
        let file = File::create(&tmp)?;
        let mut writer = BufWriter::new(file);
        fill(&mut writer)?;
        writer.flush()?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })?;
    sync_parent(path)
}

/// Renames `from` to `to` (same folder) and syncs the folder, so that the rename is durable.
pub fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| Error::io(to, e))?;
    sync_parent(to)
}

/// Syncs the folder holding `path`, making a rename or creation of `path` durable. A no-op where folders cannot
/// be opened for syncing (not Unix).
fn sync_parent(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => d,
            None => Path::new("."),
        };
        let sync = File::open(dir).and_then(|d| d.sync_all());
        // Some file systems refuse fsync on folders (EINVAL); the rename itself has happened, so only real I/O
        // errors are reported.
        if let Err(e) = sync {
            if e.kind() != std::io::ErrorKind::InvalidInput {
                return Err(Error::io(dir, e));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Writes `bytes` to `path` atomically (see [`write_atomic`]).
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// Removes the temporary files that writers killed mid-write (`kill -9`, a power cut) left in `dir`: those named
/// `.NAME.PID.tmp` whose process `PID` is gone. Only on Linux, where `/proc` tells which processes live; elsewhere
/// a no-op. Returns how many were removed; a folder that cannot be listed counts as none.
pub fn remove_stale_temps(dir: &Path) -> usize {
    if !cfg!(target_os = "linux") || !Path::new("/proc/self").exists() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(|n| n.rsplit_once('.'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// `dir/.name.<pid>.tmp` for target `dir/name`.
fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("hyperseg-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("out.bin");
        let err = write_atomic(&target, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("boom"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("out.bin"), "{err}");
        assert!(!target.exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        write_atomic(&target, |w| w.write_all(b"ok")).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"ok");
        // Temporary files of dead writers are removed, live ones (this process's) kept.
        let dead = dir.join(format!(".out.bin.{}.tmp", u32::MAX - 1));
        let live = temp_path(&target);
        std::fs::write(&dead, b"x").unwrap();
        std::fs::write(&live, b"x").unwrap();
        std::fs::write(dir.join(".notes.tmp"), b"x").unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(remove_stale_temps(&dir), 1);
            assert!(!dead.exists() && live.exists() && dir.join(".notes.tmp").exists());
        }
        std::fs::remove_file(&live).unwrap();
        std::fs::remove_file(dir.join(".notes.tmp")).unwrap();
        let _ = std::fs::remove_file(&dead);
        // A bare file name syncs the current folder.
        assert!(sync_parent(Path::new("no-such-file-here")).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
