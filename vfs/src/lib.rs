//! shoal-vfs: a SQLite VFS that stores every database's pages in one shared
//! [`shoal_kv::Kv`].
//!
//! ```no_run
//! # use std::sync::Arc;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let kv = Arc::new(shoal_kv::Kv::open(Arc::new(shoal_kv::MemKv::new()))?);
//! let vfs = shoal_vfs::register(kv, shoal_vfs::VfsOptions::default())?;
//! let conn = rusqlite::Connection::open_with_flags_and_vfs(
//!     "actor-1",
//!     rusqlite::OpenFlags::default(),
//!     vfs.name(),
//! )?;
//! conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")?;
//! println!("{}", vfs.stats("actor-1")?.unwrap_or_default().batch_commits);
//! # Ok(()) }
//! ```
//!
//! How it works, and why each rule holds, is in `docs/design.md`; in short:
//! - every transaction is ONE kv batch (pages plus file metadata), on any SQLite build: a
//!   writer's pages stay in its handle until the commit point (SQLITE_FCNTL_SYNC), and a
//!   transaction larger than its memory share stages them where no reader sees them; a
//!   connection that keeps a rollback journal (`journal_mode=DELETE`) has it stored in the
//!   kv, just as crash-safe;
//! - xRead copies once, from the kv's buffer into SQLite's; xFetch lends SQLite the kv's
//!   buffer itself;
//! - xSync waits for the group committer's shared flush (or, with
//!   `PRAGMA shoal_durability=relaxed`, not at all after a commit's batch);
//! - the one pragma that could not work is refused (`journal_mode=WAL`: no shared memory).
//!
//! All unsafe code is in the `ffi` module.
//!
//! The VFS is feature `vfs` (default). Without it the crate holds only [`sqlite`] and
//! [`procfs`], SQLite's memory controls, which a build of the facade without the kv
//! backing uses too.

#![deny(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::indexing_slicing)]

#[cfg(feature = "extension")]
mod deferred;
mod durability;
mod error;
#[cfg(feature = "extension")]
mod extension;
#[allow(unsafe_code)]
mod ffi;
#[cfg(feature = "vfs")]
mod file;
#[cfg(all(feature = "vfs", feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "vfs")]
mod lock;
#[cfg(feature = "vfs")]
mod memfile;
// The rules for names hold in every build: a file-backed actor has the names a kv one has.
#[cfg_attr(not(feature = "vfs"), allow(dead_code))]
mod names;
#[cfg(feature = "vfs")]
mod pages;
#[cfg(feature = "vfs")]
mod pragma;
pub mod procfs;
// `DbStats` is part of the facade's API in every build (always `None` without the VFS).
#[cfg_attr(not(feature = "vfs"), allow(dead_code))]
mod stats;
#[cfg(feature = "vfs")]
mod vfs;

/// The safe seam between SQLite and a VFS in Rust, which shoal's own VFS implements:
/// [`VfsImpl`](contract::VfsImpl) and [`FileImpl`](contract::FileImpl) with SQLite's
/// contract on each method, [`register`](contract::register) to serve one through the
/// generic trampolines, and [`Probe`](contract::Probe) to drive a registered VFS's file
/// methods directly where SQLite would not (the contract tests).
#[cfg(feature = "vfs")]
#[doc(hidden)]
pub mod contract {
    pub use crate::ffi::probe::Probe;
    pub use crate::ffi::{
        Control, FileImpl, LockLevel, OpenParams, RegisteredVfs, Reply, SyncFlags, VfsImpl,
        register,
    };
}

#[cfg(feature = "vfs")]
use std::sync::Arc;

#[cfg(feature = "vfs")]
use shoal_kv::{EntryKind, Kv};

#[cfg(feature = "extension")]
pub use deferred::{BUDGET_ENV, DEFAULT_BUDGET_MB, STORE_ENV};
pub use durability::Durability;
pub use error::{Error, HeapRefused, Result};
pub use names::refuse_as_database;
#[cfg(feature = "vfs")]
pub use shoal_kv::Audit;
pub use stats::DbStats;

/// Process-wide and per-connection SQLite memory controls, in every build (the facade's
/// file backings use them too).
pub mod sqlite {
    pub use crate::ffi::heap::{SqliteHeap, configure as configure_heap, current as heap};
    pub use crate::ffi::sqlite::{
        cache_used, cap_malloc_arenas, connection_memory, memory_highwater, memory_used,
        set_lookaside, set_soft_heap_limit, trim_heap,
    };
}

/// How to register the VFS.
#[cfg(feature = "vfs")]
#[derive(Debug, Clone)]
pub struct VfsOptions {
    /// The name connections pass to `sqlite3_open_v2` (default `shoal`).
    pub name: String,
    /// Durability of new connections (changed per connection by
    /// `PRAGMA shoal_durability`).
    pub durability: Durability,
    /// Bytes all temp files together may hold (temp tables and indexes, sorts too large
    /// for the page cache, VACUUM's copy of the database, statement journals). They live
    /// in memory, so this bounds them: a write past it fails with SQLITE_FULL (default
    /// [`DEFAULT_TEMP_LIMIT`]).
    pub temp_limit: u64,
    /// Bytes the pages of all open transactions together may hold in memory before a
    /// transaction's pages move to the kv's staging area (default
    /// [`DEFAULT_OVERLAY_LIMIT`]). A transaction of any size commits atomically either
    /// way; a larger one past this share writes its pages twice.
    pub overlay_limit: u64,
}

/// The overlay limit of [`VfsOptions::default`]: 16 MiB.
#[cfg(feature = "vfs")]
pub const DEFAULT_OVERLAY_LIMIT: u64 = 16 << 20;

/// The temp-file limit of [`VfsOptions::default`]: 64 MiB.
#[cfg(feature = "vfs")]
pub const DEFAULT_TEMP_LIMIT: u64 = 64 << 20;

#[cfg(feature = "vfs")]
impl Default for VfsOptions {
    fn default() -> VfsOptions {
        VfsOptions {
            name: "shoal".to_owned(),
            durability: Durability::Full,
            temp_limit: DEFAULT_TEMP_LIMIT,
            overlay_limit: DEFAULT_OVERLAY_LIMIT,
        }
    }
}

/// A registered shoal VFS.
///
/// Dropping it closes the store to new connections: opening a database through its name
/// then fails with SQLITE_CANTOPEN ("the store ... was closed"). Connections still open
/// go on working and keep the store (and its kv) alive until the last one closes. The
/// name stays registered with SQLite for the rest of the process (a thread may be inside
/// one of its methods at any moment), and a later [`register`] under the same name reuses
/// that registration.
#[cfg(feature = "vfs")]
#[derive(Debug)]
pub struct Vfs {
    registered: ffi::RegisteredVfs<vfs::VfsState>,
}

/// A handle that outlives its [`Vfs`] and tells whether connections opened through it
/// still hold its store (see [`Vfs::usage`]).
#[cfg(feature = "vfs")]
#[derive(Debug, Clone)]
pub struct StoreUsage {
    state: std::sync::Weak<vfs::VfsState>,
}

#[cfg(feature = "vfs")]
impl StoreUsage {
    /// Database files still open through the VFS (one per connection, one more per
    /// attached database); 0 once the store is released.
    pub fn open_databases(&self) -> usize {
        self.state.upgrade().map_or(0, |s| {
            s.open_databases.load(std::sync::atomic::Ordering::SeqCst)
        })
    }

    /// Whether the store is still held, by the `Vfs` or by files opened through it.
    pub fn in_use(&self) -> bool {
        self.state.strong_count() > 0
    }
}

/// Registers a VFS over `kv`. Fails if the name is taken in this process or if another
/// VFS already serves `kv`. Any SQLite build works: commits need no compile-time flag.
#[cfg(feature = "vfs")]
pub fn register(kv: Arc<Kv>, options: VfsOptions) -> Result<Vfs> {
    // The VFS keeps what it wrote in memory (file sizes, the database header, whether a
    // journal exists), which is right only while it is the store's one writer.
    let claim = kv.claim().ok_or(Error::KvInUse)?;
    let state = Arc::new(vfs::VfsState::new(options.name.clone(), claim, &options));
    Ok(Vfs {
        registered: ffi::register(&state.name.clone(), state)?,
    })
}

/// Takes the SQLite result code and message of the last failure a shoal VFS method
/// returned to SQLite on this thread, clearing it. SQLite reports such failures with its
/// generic text (a full temp space is "database or disk is full"); this says which limit
/// or file it was. SQLite calls the VFS on the thread running the statement, so right
/// after a failed statement this is that statement's cause, if the VFS caused it.
#[cfg(feature = "vfs")]
pub fn take_last_failure() -> Option<(i32, String)> {
    ffi::take_last_failure()
}

#[cfg(feature = "vfs")]
impl Vfs {
    fn state(&self) -> &Arc<vfs::VfsState> {
        self.registered.state()
    }

    /// The name to open connections with.
    pub fn name(&self) -> &str {
        &self.state().name
    }

    /// The shared kv.
    pub fn kv(&self) -> &Arc<Kv> {
        &self.state().kv
    }

    /// Counters of database `name` since the VFS was registered; `None` if no such
    /// database exists. Like every name this API takes, `name` means what it means to
    /// SQLite's open: a path is resolved to the database's one name (see `docs/design.md`).
    pub fn stats(&self, name: &str) -> Result<Option<DbStats>> {
        self.state().stats(&self.state().canonical(name)?)
    }

    /// A handle that outlives this `Vfs` and tells whether its store is still held.
    pub fn usage(&self) -> StoreUsage {
        StoreUsage {
            state: Arc::downgrade(self.state()),
        }
    }

    /// Bytes the pages of open transactions hold in memory now, and their limit
    /// ([`VfsOptions::overlay_limit`]).
    pub fn overlay_bytes(&self) -> (u64, u64) {
        let o = &self.state().overlay;
        (o.used() as u64, o.limit() as u64)
    }

    /// Bytes held by temp files now, and their limit ([`VfsOptions::temp_limit`]).
    pub fn temp_bytes(&self) -> (u64, u64) {
        let temp = &self.state().temp;
        (temp.used(), temp.limit())
    }

    /// Files currently open through this VFS.
    pub fn open_files(&self) -> usize {
        self.registered.open_files()
    }

    /// Whether any connection has database `name` open.
    pub fn is_open(&self, name: &str) -> Result<bool> {
        Ok(match self.kv().lookup(&self.state().canonical(name)?)? {
            Some(entry) => self.state().is_open(entry.id),
            None => false,
        })
    }

    /// Verifies every stored record of database `name` (checksums, chunk numbering and
    /// lengths); `None` if no such database exists.
    pub fn audit(&self, name: &str) -> Result<Option<Audit>> {
        Ok(self.kv().audit(&self.state().canonical(name)?)?)
    }

    /// Whether open database `name` must be reopened before it is used again: this host
    /// lost its lease on it to another host (on a store hosts share: its writes are
    /// fenced), or a commit found the stored database changed underneath this VFS's view
    /// of it (another writer, or a server that lost writes it had applied). Its
    /// connections should be closed; the next open acquires the lease again and reads the
    /// database afresh. `false` for a database not open.
    pub fn needs_reopen(&self, name: &str) -> bool {
        self.state()
            .canonical(name)
            .is_ok_and(|name| self.state().main_is_stale(&name))
    }

    /// Whether database `name` exists (a super-journal of that name does not count).
    pub fn exists(&self, name: &str) -> Result<bool> {
        Ok(self
            .kv()
            .lookup(&self.state().canonical(name)?)?
            .is_some_and(|e| e.kind == EntryKind::Database))
    }

    /// The name of every stored database, in name order (super-journals are left out).
    pub fn list(&self) -> Result<Vec<String>> {
        self.list_prefix("")
    }

    /// Every stored name, databases and the super-journals of multi-database commits
    /// alike, with what it is, in name order.
    pub fn catalog(&self) -> Result<Vec<(String, EntryKind)>> {
        Ok(self
            .kv()
            .list()?
            .into_iter()
            .map(|(name, entry)| (name, entry.kind))
            .collect())
    }

    /// The names of the stored databases that start with `prefix`, in name order.
    pub fn list_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .kv()
            .list_prefix(prefix)?
            .into_iter()
            .filter(|(_, e)| e.kind == EntryKind::Database)
            .map(|(name, _)| name)
            .collect())
    }

    /// Gives database `from` the name `to`, durably, keeping its pages (one kv batch).
    /// Fails if `to` exists or `from` does not ([`shoal_kv::Error::AlreadyExists`],
    /// [`shoal_kv::Error::NotFound`]), and, like [`Vfs::delete_database`], while any
    /// connection has `from` open.
    pub fn rename_database(&self, from: &str, to: &str) -> Result<()> {
        let state = self.state();
        let (from, to) = (&*state.canonical(from)?, &*state.canonical(to)?);
        self.require_closed(from)?;
        state.kv.rename(from, to)?;
        state.kv.commit_durable()?;
        Ok(())
    }

    /// Fails unless catalog entry `name` (canonical) exists and no connection has it open.
    fn require_closed(&self, name: &str) -> Result<()> {
        let state = self.state();
        let entry = state
            .kv
            .lookup(name)?
            .ok_or_else(|| Error::Kv(shoal_kv::Error::NotFound(name.to_owned())))?;
        if state.is_open(entry.id) {
            return Err(Error::InUse(name.to_owned()));
        }
        Ok(())
    }

    /// The size in bytes of database `name`'s main file; `None` if it does not exist.
    pub fn file_size(&self, name: &str) -> Result<Option<u64>> {
        self.state().file_size(&self.state().canonical(name)?)
    }

    /// Restores database `name` in place to `to`, atomically, as one new commit (which
    /// restoring to the commit before it undoes); returns its bookmark. Open connections
    /// may stay open: refused with [`Error::InUse`] only while one reads or writes it, and
    /// each sees the restored state at its next transaction.
    pub fn restore_database(
        &self,
        name: &str,
        to: &shoal_kv::PointInTime,
    ) -> Result<shoal_kv::Bookmark> {
        let state = self.state();
        let name = &*state.canonical(name)?;
        state.restore(name, to)
    }

    /// Forks database `src` at `at` (its current state when `None`) into a new database
    /// `new_name`, copying no page; returns the bookmark forked.
    pub fn fork_database(
        &self,
        src: &str,
        at: Option<&shoal_kv::PointInTime>,
        new_name: &str,
    ) -> Result<shoal_kv::Bookmark> {
        let state = self.state();
        let (src, new_name) = (&*state.canonical(src)?, &*state.canonical(new_name)?);
        state.fork(src, at, new_name)
    }

    /// Deletes database `name` and every key it has, durably. Refused while any
    /// connection has it open.
    pub fn delete_database(&self, name: &str) -> Result<()> {
        let state = self.state();
        let name = &*state.canonical(name)?;
        self.require_closed(name)?;
        state.kv.drop_entry(name)?;
        state.kv.commit_durable()?;
        Ok(())
    }
}
