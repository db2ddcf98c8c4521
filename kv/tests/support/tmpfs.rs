//! A small tmpfs mounted for one test, so a full disk (or a read-only one) can be made
//! on purpose. Mounting needs root. Where it fails the test is skipped with a printed
//! reason, except under CI (the `CI` variable set), where it fails: CI runs as root and
//! must not skip these silently. The guard unmounts on drop, even when the test fails
//! (lazily, so a file still open in a stuck thread does not keep it mounted).

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// A mounted tmpfs in a temporary directory; unmounted on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_kib` KiB, or `None` (skip) where that is impossible
    /// outside CI.
    pub fn mount(size_kib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("temporary directory");
        match mount(
            &["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"],
            dir.path(),
        ) {
            Ok(()) => Some(Tmpfs { dir }),
            Err(why) if std::env::var_os("CI").is_some() => {
                panic!("cannot mount a tmpfs under CI (these tests need root): {why}")
            }
            Err(why) => {
                eprintln!("skipped: cannot mount a tmpfs ({why}); run as root to test this");
                None
            }
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Gives the file system `size_kib` KiB (frees space without touching its files).
    pub fn resize(&self, size_kib: u64) {
        mount(&["-o", &format!("remount,size={size_kib}k")], self.path()).expect("remount");
    }

    /// Makes the file system read-only (`true`) or writable again. A read-only remount is
    /// refused while a file on it is open for writing, and a closed fjall store's journal
    /// can stay open for a moment after the close returns (fjall's worker threads let go
    /// of it as they exit, after the close stops waiting for them): retried for up to 2 s.
    pub fn set_read_only(&self, read_only: bool) {
        let mode = if read_only {
            "remount,ro"
        } else {
            "remount,rw"
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match mount(&["-o", mode], self.path()) {
                Ok(()) => return,
                Err(e) if e.contains("busy") && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("remount: {e:?}"),
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

fn mount(args: &[&str], at: &Path) -> Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .arg(at)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}
