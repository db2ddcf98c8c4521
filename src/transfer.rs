//! Plain SQLite files in and out of a store: what import accepts and how it stages a
//! source, and how export writes a file.
//!
//! Invariants:
//! - an import never writes beside its source: SQLite never opens the source. Its bytes
//!   (and those of a `-wal` beside it) are read with plain reads into a private staging
//!   directory inside the store, and SQLite works on that copy: a WAL-mode copy is
//!   checkpointed there (so commits still in the source's `-wal` are imported) and
//!   turned into a rollback-journal database, which is all shoal can open;
//! - a source with a hot journal beside it is refused (its last write was interrupted:
//!   only SQLite's recovery in place makes it whole), and so is anything but a regular
//!   file (a FIFO would block the read forever);
//! - an export writes a temporary file in the target's directory and links it into
//!   place only when it is complete and synced, never replacing an existing entry (a
//!   dangling symlink included): a failed export leaves nothing behind.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};

/// The SQLite header's first 16 bytes.
const MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Bytes of the header import reads (through the read and write format versions).
const HEADER_LEN: usize = 20;

/// A copy of an import's source, checked and in rollback-journal mode, in a staging
/// directory that is removed when this is dropped.
#[derive(Debug)]
pub(crate) struct Staged {
    dir: tempfile::TempDir,
}

impl Staged {
    /// The staged database file.
    pub(crate) fn path(&self) -> PathBuf {
        self.dir.path().join("db")
    }

    /// Opens the staged copy read-only.
    #[cfg(feature = "kv-vfs")]
    pub(crate) fn open(&self) -> Result<Connection> {
        Ok(Connection::open_with_flags(
            self.path(),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?)
    }
}

/// Copies `source` into a new directory under `staging` (an absolute path) and makes
/// the copy a sound rollback-journal database, or says why `source` cannot be imported.
pub(crate) fn stage(source: &Path, staging: &Path) -> Result<Staged> {
    let mut file = open_regular(source)?;
    let mut header = [0u8; HEADER_LEN];
    match file.read_exact(&mut header) {
        Ok(()) if header.starts_with(MAGIC) => {}
        Ok(()) => {
            return Err(not_sqlite(
                source,
                "it does not start with the SQLite header",
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(not_sqlite(source, "it is shorter than a SQLite header"));
        }
        Err(e) => return Err(Error::io("cannot read", source)(e)),
    }
    let journal = sibling(source, "-journal");
    if is_hot_journal(&journal)? {
        return Err(Error::HotJournal {
            path: source.to_path_buf(),
            journal,
        });
    }
    let dir = tempfile::Builder::new()
        .prefix("import-")
        .tempdir_in(staging)
        .map_err(Error::io("cannot create a staging directory in", staging))?;
    let staged = Staged { dir };
    let copy = staged.path();
    file.rewind().map_err(Error::io("cannot read", source))?;
    copy_into(&mut file, source, &copy)?;
    // Bytes 18 and 19 are the write and read format versions: 2 is WAL. Frames not yet
    // checkpointed live in the -wal; they are committed data and come along.
    let wal_mode = header.get(18..20).is_some_and(|v| v.contains(&2));
    if wal_mode {
        let wal = sibling(source, "-wal");
        match File::open(&wal) {
            Ok(mut w) => copy_into(&mut w, &wal, &sibling(&copy, "-wal"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("cannot read", wal)(e)),
        }
    }
    let conn = Connection::open_with_flags(
        &copy,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| not_sqlite(source, e))?;
    // Checkpoints a WAL copy and writes 1 into bytes 18 and 19.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
        .map_err(|e| not_sqlite(source, e))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(not_sqlite(
            source,
            format!("it stays in journal mode {mode} instead of a rollback journal"),
        ));
    }
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| not_sqlite(source, e))?;
    if check != "ok" {
        return Err(not_sqlite(source, format!("quick_check failed: {check}")));
    }
    conn.close().map_err(|(_, e)| not_sqlite(source, e))?;
    Ok(staged)
}

/// Opens `path` if it is a regular file (following symlinks), without blocking on a
/// FIFO: the type is checked before the open.
fn open_regular(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(Error::io("cannot read", path))?;
    if meta.is_dir() {
        let e = std::io::Error::from(std::io::ErrorKind::IsADirectory);
        return Err(Error::io("cannot read", path)(e));
    }
    if !meta.is_file() {
        return Err(not_sqlite(
            path,
            "it is not a regular file (a FIFO, socket or device)",
        ));
    }
    File::open(path).map_err(Error::io("cannot read", path))
}

/// Whether `journal` is a hot rollback journal: SQLite treats a journal as hot when it
/// exists, is not empty and its header is not zeroed (pager.c `hasHotJournal`).
fn is_hot_journal(journal: &Path) -> Result<bool> {
    let mut file = match File::open(journal) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("cannot read", journal)(e)),
    };
    let mut first = [0u8; 1];
    match file.read(&mut first) {
        Ok(0) => Ok(false),
        Ok(_) => Ok(first != [0]),
        Err(e) => Err(Error::io("cannot read", journal)(e)),
    }
}

fn copy_into(from: &mut File, from_path: &Path, to: &Path) -> Result<()> {
    let mut out = create_new(to)?;
    std::io::copy(from, &mut out).map_err(Error::io("cannot copy", from_path))?;
    Ok(())
}

/// Creates `path`, owner-only, failing if any entry (a symlink included) is there.
fn create_new(path: &Path) -> Result<File> {
    let mut options = File::options();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(Error::io("cannot create", path))
}

/// `path` with `suffix` appended to its file name (`x.db` -> `x.db-wal`).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Writes `from`'s main database to `target` as a standard SQLite file: into a
/// temporary file beside `target`, synced, then linked to `target`, which must not exist
/// as any kind of entry.
pub(crate) fn export(from: &Connection, target: &Path) -> Result<()> {
    if target.symlink_metadata().is_ok() {
        return Err(Error::FileExists {
            path: target.to_path_buf(),
        });
    }
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Absolute, so that SQLite can never read the name as a URI ("file:...").
    let parent = std::path::absolute(&parent).map_err(Error::io("cannot resolve", &parent))?;
    let prefix = format!(
        ".{}.",
        target
            .file_name()
            .map_or("export".into(), |n| n.to_string_lossy())
    );
    let temp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(&parent)
        .map_err(Error::io("cannot create a file in", &parent))?;
    let written = write_copy(from, temp.path());
    // SQLite writes no journal (journal_mode=OFF), but a failure must not leave one
    // if it did.
    let journal = sibling(temp.path(), "-journal");
    let _ = std::fs::remove_file(&journal);
    written?;
    temp.as_file()
        .sync_all()
        .map_err(Error::io("cannot sync", temp.path()))?;
    match temp.persist_noclobber(target) {
        Ok(_) => {}
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::FileExists {
                path: target.to_path_buf(),
            });
        }
        Err(e) => return Err(Error::io("cannot create", target)(e.error)),
    }
    sync_dir(&parent)
}

fn write_copy(from: &Connection, temp: &Path) -> Result<()> {
    let mut to = Connection::open_with_flags(
        temp,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // The file is not in place until it is whole and synced, so it needs no journal and
    // no syncs of its own.
    to.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")?;
    rusqlite::backup::Backup::new(from, &mut to)?.run_to_completion(
        1024,
        std::time::Duration::ZERO,
        None,
    )?;
    to.close().map_err(|(_, e)| e)?;
    Ok(())
}

/// Makes the entries of `dir` durable (a rename or link in it).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("cannot sync", dir))
}

/// Links the staged copy to `target` (on the same file system) without replacing
/// anything there, and makes the link durable.
pub(crate) fn link_into_place(staged: &Staged, target: &Path) -> Result<bool> {
    let copy = staged.path();
    File::open(&copy)
        .and_then(|f| f.sync_all())
        .map_err(Error::io("cannot sync", &copy))?;
    remove_stale_journal(target)?;
    match std::fs::hard_link(&copy, target) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(Error::io("cannot create", target)(e)),
    }
    if let Some(dir) = target.parent() {
        sync_dir(dir)?;
    }
    Ok(true)
}

/// Removes a rollback journal left beside `target` when no database is there. It belongs
/// to a database of that name that no longer exists (an import refuses an existing actor;
/// a delete killed between removing a database and its journal leaves one): SQLite would
/// take it for a hot journal and roll it back onto the database linked in its place.
/// With no database beside it, no connection can be writing through it.
fn remove_stale_journal(target: &Path) -> Result<()> {
    match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // A database is there (the link will refuse it) or it cannot be told: leave all.
        _ => return Ok(()),
    }
    let mut journal = target.as_os_str().to_owned();
    journal.push("-journal");
    let journal = std::path::PathBuf::from(journal);
    match std::fs::remove_file(&journal) {
        Ok(()) => {
            // Durable before the link is, so no crash keeps the journal beside the copy.
            if let Some(dir) = target.parent() {
                sync_dir(dir)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot delete", &journal)(e)),
    }
}

fn not_sqlite(path: &Path, reason: impl ToString) -> Error {
    Error::NotSqlite {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}
