//! Claiming a grid cell, so two sweeps over one results folder never run the same cell at once.
//!
//! The claim is an exclusive `flock` on `sweep.lock` in the cell's run folder. The operating
//! system drops it when its holder exits or dies, so a crashed sweep leaves no stale lock to
//! detect (no pid checks, which cannot see processes on other machines of a shared
//! filesystem) and there is no window in which two sweeps both "take over" a stale one. The
//! file itself stays: deleting it on release would let a waiter lock the old, unlinked file
//! while a newcomer locks a new one. It holds the holder's pid and host, for people.
//!
//! Outside Unix, the claim falls back to creating the file exclusively (`create_new`) and
//! removing it on release; a lock left by a crashed sweep there must be deleted by hand.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A held claim on one cell; released on drop.
#[derive(Debug)]
pub struct CellLock {
    path: PathBuf,
    /// Open for as long as the claim is held (on Unix the lock belongs to this open file).
    file: File,
}

/// The lock file of the run folder `dir`.
pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join("sweep.lock")
}

impl CellLock {
    /// Claims `dir` if no one holds it; `None` if another process does.
    pub fn try_claim(dir: &Path) -> Result<Option<Self>> {
        Self::acquire(dir, false)
    }

    /// Claims `dir`, waiting for its current holder to finish.
    pub fn claim(dir: &Path) -> Result<Self> {
        loop {
            if let Some(lock) = Self::acquire(dir, true)? {
                return Ok(lock);
            }
            // Only the create_new fallback gets here: poll.
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }

    #[cfg(unix)]
    fn acquire(dir: &Path, wait: bool) -> Result<Option<Self>> {
        use std::os::unix::io::AsRawFd;
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let path = lock_path(dir);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        let operation = if wait { libc::LOCK_EX } else { libc::LOCK_EX | libc::LOCK_NB };
        // SAFETY: flock on a file descriptor this function owns for the duration of the call.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(Error::Io { path, source: error });
        }
        let lock = Self { path, file };
        lock.write_holder()?;
        Ok(Some(lock))
    }

    #[cfg(not(unix))]
    fn acquire(dir: &Path, _wait: bool) -> Result<Option<Self>> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let path = lock_path(dir);
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => {
                let lock = Self { path, file };
                lock.write_holder()?;
                Ok(Some(lock))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(Error::Io { path, source: e }),
        }
    }

    /// Records who holds the claim (informational only).
    fn write_holder(&self) -> Result<()> {
        let host = std::env::var("HOSTNAME").unwrap_or_default();
        let mut file = &self.file;
        file.set_len(0)
            .and_then(|()| writeln!(file, "pid {} {host}", std::process::id()))
            .map_err(Error::io(&self.path))
    }
}

#[cfg(not(unix))]
impl Drop for CellLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_claim_excludes_others_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let first = CellLock::try_claim(dir.path()).unwrap().expect("free");
        assert!(CellLock::try_claim(dir.path()).unwrap().is_none(), "held by the first claim");
        drop(first);
        assert!(CellLock::try_claim(dir.path()).unwrap().is_some(), "released on drop");
    }
}
