//! Scratch directories of the fuzz bodies and tests: where they live (tmpfs where there
//! is one), the removal of those that processes which have exited left behind, and a copy
//! of a store's directory that keeps its holes. Each directory is
//! named `<prefix><pid>-...`, so that a later process can tell whose it is.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where stores live: in `/dev/shm` where there is one, since fjall fsyncs its files
/// and directories as it creates them and the fsyncs of an open cost a dozen times what
/// the rest of it does on disk (about 3 ms against 0.25 ms on tmpfs, measured here);
/// crashes of the process, all the crash reopen stands for, lose nothing there either.
pub fn base_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// A new directory name for a store: `<base>/shoal-kv-ops-<pid>-<n>`.
pub(crate) fn fresh_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    sweep_dead_processes();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = base_dir().join(format!("shoal-kv-ops-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Directory prefixes of the fuzz bodies' per-process files, each followed by the pid.
const PROCESS_DIRS: [&str; 2] = ["shoal-kv-ops-", "shoal-sql-diff-"];

/// Removes, once per process, the directories that fuzzing processes which have exited
/// left under [`base_dir`] (libFuzzer exits without waiting for stores still closing).
/// Only where `/proc` tells which processes are alive.
pub fn sweep_dead_processes() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        if !Path::new("/proc/self").exists() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(base_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name
                .to_str()
                .and_then(|n| PROCESS_DIRS.iter().find_map(|p| n.strip_prefix(p)))
            else {
                continue;
            };
            let Some(pid) = rest.split('-').next().filter(|p| p.parse::<u32>().is_ok()) else {
                continue;
            };
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
}

/// Copies the files under `from` to `to`, keeping holes: fjall preallocates each journal
/// as 32 MiB of them, and reading those back cost more than the rest of an input. Only the
/// data extents are read (`SEEK_DATA`/`SEEK_HOLE`; a file system without them reports
/// the whole file as data).
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{SeekFrom, seek};
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type()?.is_dir() {
            copy_dir(&src, &dst)?;
            continue;
        }
        let input = std::fs::File::open(&src)?;
        let output = std::fs::File::create(&dst)?;
        let len = input.metadata()?.len();
        let mut block = vec![0u8; 64 << 10];
        let mut offset = 0u64;
        while offset < len {
            let start = match seek(&input, SeekFrom::Data(offset)) {
                Ok(start) => start,
                // No data past `offset`.
                Err(rustix::io::Errno::NXIO) => break,
                Err(e) => return Err(e.into()),
            };
            let end = seek(&input, SeekFrom::Hole(start))?.min(len);
            let mut at = start;
            while at < end {
                let n = usize::try_from(end - at).map_or(block.len(), |n| n.min(block.len()));
                input.read_exact_at(&mut block[..n], at)?;
                output.write_all_at(&block[..n], at)?;
                at += n as u64;
            }
            offset = end;
        }
        output.set_len(len)?;
    }
    Ok(())
}
