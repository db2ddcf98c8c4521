//! The facade's error type: one variant per thing a caller can act on. Each variant
//! that wraps another error keeps it as its `source()` (the OS error, SQLite's, the
//! key-value layer's, the VFS's), so a caller can walk the chain and downcast; its message
//! also says it, so `to_string()` alone is a whole sentence.

use std::path::PathBuf;

use crate::config::StoreLayout;

/// Result alias for the facade.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong opening a store or using an actor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The actor name is not acceptable.
    #[error("invalid actor name {name:?}: {reason}")]
    InvalidName {
        /// The name, shortened for the message.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// No actor of that name exists.
    #[error("no actor named {0:?}")]
    NoSuchActor(String),
    /// An actor of that name exists already.
    #[error("an actor named {0:?} already exists")]
    ActorExists(String),
    /// The actor has a connection checked out.
    #[error("actor {0:?} is in use; finish with it first")]
    ActorInUse(String),
    /// The store directory is locked by another open store.
    #[error("the store at {} is already open in another process", path.display())]
    StoreLocked {
        /// The store directory.
        path: PathBuf,
    },
    /// Another `Store` of this process has the directory open.
    #[error(
        "the store at {} is already open in this process (by another Store); use that one, \
         or drop it first",
        path.display()
    )]
    StoreOpenHere {
        /// The store directory.
        path: PathBuf,
    },
    /// Connections opened through an earlier `Store` on this directory, in this process,
    /// are still open and keep its backing open.
    #[error(
        "the store at {} is still in use in this process: {databases} database connection(s) \
         opened through it are still open; close them before opening it again",
        path.display()
    )]
    StoreInUse {
        /// The store directory.
        path: PathBuf,
        /// Database files still open through it (one per connection, one more per
        /// attached database).
        databases: usize,
    },
    /// There is no store at the path (for operations that must not create one).
    #[error("no store at {}", path.display())]
    NoStore {
        /// The path looked at.
        path: PathBuf,
    },
    /// The store keeps its actors in another backing (or kv engine) than the one asked
    /// for; opening it so would start an empty store beside them.
    #[error(
        "the store at {} holds its actors in {holds}, not in {asked}; open it with that backing",
        path.display()
    )]
    WrongLayout {
        /// The store directory.
        path: PathBuf,
        /// What it holds.
        holds: StoreLayout,
        /// What was asked for.
        asked: StoreLayout,
    },
    /// An actor has a transaction that was interrupted (a crash, a full disk) and must be
    /// rolled back before it can be read, which a read-only open cannot do.
    #[error(
        "an actor in the store at {} has an interrupted transaction that a read-only open \
         cannot roll back; open the store for writing once to roll it back",
        path.display()
    )]
    RollbackNeeded {
        /// The store directory.
        path: PathBuf,
    },
    /// A write was asked of a store opened with [`crate::Store::open_read_only`].
    #[error("the store at {} is open read-only", path.display())]
    ReadOnly {
        /// The store directory.
        path: PathBuf,
    },
    /// The disk holding the store is full, now or when a write failed and poisoned the
    /// store (the message says which, and what to do).
    #[cfg(feature = "kv-vfs")]
    #[error("{0}")]
    DiskFull(#[source] shoal_kv::Error),
    /// A write failed earlier in a way that left the store unusable (a failed flush, an
    /// engine that gave up): it refuses writes until it is reopened, and the message
    /// names the first failure.
    #[cfg(feature = "kv-vfs")]
    #[error("{0}")]
    Poisoned(#[source] shoal_kv::Error),
    /// The store asks for a part that this build of shoal was built without (a kv engine
    /// behind a cargo feature).
    #[error("this shoal was built without the {feature} feature, which {what} needs")]
    NotBuilt {
        /// The cargo feature that would build it.
        feature: &'static str,
        /// What needs it.
        what: &'static str,
    },
    /// History, restore and fork asked of actors stored as files.
    #[error("{what} needs the kv backing: actors stored as files keep no history")]
    NeedsKv {
        /// What was asked.
        what: &'static str,
    },
    /// [`crate::KvEngine::Postgres`] was asked for without a server to reach.
    #[error(
        "the postgres kv engine needs a server: give its URL with Config::with_postgres \
         (shoal --kv postgresql://..., or --kv postgres with SHOAL_PG_URL set)"
    )]
    NoPostgresUrl,
    /// A name of a [`crate::Backing`] or [`crate::KvEngine`] that is neither.
    #[error("unknown {what} {given:?} (expected {expected})")]
    UnknownName {
        /// What was being named.
        what: &'static str,
        /// The name given.
        given: String,
        /// The names there are.
        expected: &'static str,
    },
    /// A file to import is not a SQLite database.
    #[error("{} is not a SQLite database: {reason}", path.display())]
    NotSqlite {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file to import has a hot journal beside it: its last write was interrupted,
    /// and only SQLite's recovery in place makes it whole.
    #[error(
        "{} has a hot journal ({}) from an interrupted write: open it once with sqlite3 \
         to recover it, then import it",
        path.display(),
        journal.display()
    )]
    HotJournal {
        /// The file.
        path: PathBuf,
        /// Its journal.
        journal: PathBuf,
    },
    /// A file to write exists already.
    #[error("{} already exists; refusing to overwrite it", path.display())]
    FileExists {
        /// The file.
        path: PathBuf,
    },
    /// A file-system operation failed.
    #[error("{what} {}: {cause}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error, in the message and as the source, so a caller can tell its
        /// kind (a full disk, a missing directory) by downcasting the chain.
        #[source]
        cause: std::io::Error,
    },
    /// SQLite failed.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The key-value layer failed.
    #[cfg(feature = "kv-vfs")]
    #[error("{0}")]
    Kv(#[source] shoal_kv::Error),
    /// The VFS failed.
    #[error("{0}")]
    Vfs(#[source] shoal_vfs::Error),
}

#[cfg(feature = "kv-vfs")]
impl From<shoal_kv::Error> for Error {
    fn from(e: shoal_kv::Error) -> Error {
        if e.is_disk_full() {
            Error::DiskFull(e)
        } else if matches!(e, shoal_kv::Error::Poisoned { .. }) {
            Error::Poisoned(e)
        } else {
            Error::Kv(e)
        }
    }
}

impl From<shoal_vfs::Error> for Error {
    fn from(e: shoal_vfs::Error) -> Error {
        match e {
            #[cfg(feature = "kv-vfs")]
            shoal_vfs::Error::Kv(kv) => kv.into(),
            other => Error::Vfs(other),
        }
    }
}

impl Error {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |cause| Error::Io { what, path, cause }
    }
}
