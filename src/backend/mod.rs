//! Where actor databases live: the one seam between the store and its backings. A
//! [`Backend`] opens an actor's connection and keeps the set of actors (exists, list,
//! delete, import, sizes); the store above it owns everything the backings share (the
//! lock, the awake set, tuning, the memory budget). The kv backing (`kv.rs`, feature
//! `kv-vfs`) keeps actors as pages in the shared key-value store, the files backing
//! (`files.rs`) as one SQLite file each.

mod files;
#[cfg(feature = "kv-vfs")]
mod kv;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::config::Durability;
use crate::error::{Error, Result};
use crate::store::CheckReport;
use crate::transfer::Staged;

pub(crate) use files::FilesBacking;
#[cfg(feature = "kv-vfs")]
pub(crate) use kv::KvBacking;

/// What a backing does for the store. Names are valid actor names (checked above).
pub(crate) trait Backend: std::fmt::Debug + Send + Sync {
    /// Opens actor `name`'s database with `flags` (a missing one without
    /// `SQLITE_OPEN_CREATE` fails).
    fn open(&self, name: &str, flags: OpenFlags) -> rusqlite::Result<Connection>;

    /// The actor's plain SQLite file, on a backing that has one.
    fn actor_file(&self, name: &str) -> Option<PathBuf>;

    /// The `PRAGMA synchronous` value that gives a new connection `durability`, on a
    /// backing where the connection sets it.
    fn synchronous(&self, durability: Durability) -> Option<&'static str>;

    /// Whether actor `name` exists.
    fn exists(&self, name: &str) -> Result<bool>;

    /// Every actor's name, in no particular order.
    fn list(&self) -> Result<Vec<String>>;

    /// Deletes actor `name` (which exists and has no connection of the store's open).
    fn delete(&self, name: &str) -> Result<()>;

    /// The size of actor `name`'s database, and its I/O counters where the backing keeps
    /// them.
    fn stats(&self, name: &str) -> Result<(u64, Option<shoal_vfs::DbStats>)>;

    /// Makes the sound, staged copy `staged` actor `name`, all at once;
    /// [`Error::ActorExists`] if `name` appeared meanwhile.
    fn import(&self, staged: &Staged, name: &str) -> Result<()>;

    /// Adds the backing's own checks of actor `report.name` to `report`.
    fn check(&self, _report: &mut CheckReport) -> Result<()> {
        Ok(())
    }

    /// Whether actor `name`'s connections must be closed rather than kept awake: this
    /// host lost it to another host, or its stored database changed underneath them.
    fn needs_reopen(&self, _name: &str) -> bool {
        false
    }

    /// Bytes the backing's caches may hold.
    fn cache_capacity(&self) -> u64 {
        0
    }

    /// Forgets what the backing noted about earlier failures on this thread, before a
    /// caller's statements run.
    fn forget_failure(&self) {}

    /// SQLite's error `e`, with what the backing knows of its cause.
    fn explain(&self, e: rusqlite::Error) -> Error {
        Error::Sqlite(e)
    }

    /// The VFS of the kv backing.
    #[cfg(feature = "kv-vfs")]
    fn vfs(&self) -> Option<&shoal_vfs::Vfs> {
        None
    }
}

/// Creates `dir` (and its parents) readable by its owner only.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(Error::io("cannot create", dir))
}
