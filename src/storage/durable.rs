//! Making files durable, in one place. The Raft log is the durable copy of every write
//! (fjall, fsynced before a write is acknowledged); replicas sync only at checkpoints. What
//! the log may be purged behind must be durable first: a snapshot file's contents, then the
//! directory entry that names it (ARCHITECTURE.md, "Durability", states the whole order).
//!
//! Test seam: with `CAIRN_FSYNC_LOG` set to a path, every fsync made here is appended to
//! that file once it has returned (`file <path>` or `dir <path>`), so a power-loss test can
//! keep exactly what was made durable and throw away the rest (`tests/power_loss.rs`).

use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

/// Flush `path`'s contents to stable storage.
pub fn sync_file(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()?;
    record("file", path);
    Ok(())
}

/// Flush the directory `dir`: names created, renamed or removed in it survive a power cut.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    record("dir", dir);
    Ok(())
}

/// Rename `from` to `to` (in one directory) and make the new name durable.
pub fn rename(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    match to.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

fn record(kind: &str, path: &Path) {
    static LOG: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();
    let log = LOG.get_or_init(|| {
        let path = std::env::var_os("CAIRN_FSYNC_LOG")?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
            .map(Mutex::new)
    });
    if let Some(file) = log {
        if let Ok(mut f) = file.lock() {
            let _ = writeln!(f, "{kind} {}", path.display());
        }
    }
}
