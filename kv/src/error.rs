//! The one error type of shoal-kv. Every variant carries enough context (which key,
//! which database) to be acted on without a debugger.

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the key-value layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend failed (I/O, a lock held by another process, a backend bug).
    #[error("storage backend error during {op}: {cause}")]
    Backend {
        /// The operation that failed.
        op: &'static str,
        /// The backend's own error.
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store's directory is held by another open store (another process, or this one).
    #[error("the store at {} is already open in another process (or elsewhere in this one)", path.display())]
    StoreLocked {
        /// The store's directory.
        path: std::path::PathBuf,
    },
    /// A stored value does not match its checksum: a flipped bit, a truncated value, or a
    /// value stored under another key.
    #[error("checksum mismatch in {what}: the stored value is corrupt")]
    Checksum {
        /// Which key, described.
        what: String,
    },
    /// A key or value is malformed in a way a checksum cannot catch (a missing record,
    /// an impossible length).
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// Which key or value.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store, a file or a record was written by a format this build does not read.
    #[error("unsupported format version {found} in {what} (this build reads version {supported})")]
    UnsupportedFormat {
        /// Where the version was found.
        what: String,
        /// The version found.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// A guarded batch found its precondition key changed: another writer got there first.
    #[error("precondition failed on {what}: the value changed underneath this writer")]
    PreconditionFailed {
        /// The guarded key, described.
        what: String,
    },
    /// The flush that was to make this request durable failed.
    #[error("flush failed: {cause}")]
    FlushFailed {
        /// The backend's error, as text (one failure is reported to many waiters).
        cause: String,
        /// Whether it failed for lack of space.
        disk_full: bool,
    },
    /// A flush or write failed earlier; the store refuses writes until it is reopened.
    #[error("the store refuses writes until it is reopened, after an earlier failure: {cause}")]
    Poisoned {
        /// The error of the first failure.
        cause: String,
        /// Whether that failure was a full disk.
        disk_full: bool,
    },
    /// The file system holding the store has no space left.
    #[error(
        "the disk is full ({op} in the store at {}: {cause}); free space, then reopen the store",
        path.display()
    )]
    Full {
        /// The operation that failed.
        op: &'static str,
        /// The store's directory.
        path: std::path::PathBuf,
        /// The engine's error, as text.
        cause: String,
    },
    /// A write was asked of a store opened read-only ([`crate::Kv::open_read_only`]).
    #[error("the store is open read-only: {op} refused")]
    ReadOnly {
        /// The refused operation.
        op: &'static str,
    },
    /// The engine could not open its files for lack of access: neither engine has a
    /// read-only mode, so a store on read-only storage (or without write permission)
    /// cannot be opened.
    #[error("cannot open the {engine} files in {} ({cause}); {engine} {why}", path.display())]
    NoAccess {
        /// The engine.
        engine: &'static str,
        /// The engine's directory.
        path: std::path::PathBuf,
        /// The I/O error, as text.
        cause: String,
        /// Why the engine needs write access.
        why: &'static str,
    },
    /// A database name is not acceptable.
    #[error("invalid database name {name:?}: {reason}")]
    InvalidName {
        /// The name (shortened for the message).
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The name is already in the catalog.
    #[error("database {0:?} already exists")]
    AlreadyExists(String),
    /// The name is not in the catalog.
    #[error("no database named {0:?}")]
    NotFound(String),
    /// A fault injected by [`crate::FaultyKv`].
    #[error("injected fault in {op} #{nth}")]
    Injected {
        /// The operation that failed.
        op: &'static str,
        /// Its index among operations of its kind, from 1.
        nth: u64,
    },
    /// The store was already closed (sled's handle dropped while closing).
    #[error("the store is closed")]
    Closed,
    /// A batch is past a limit every backend keeps (FoundationDB's: see
    /// [`Batch::check_limits`](crate::raw::Batch::check_limits)); nothing was applied.
    #[error("batch refused: {size} {what} is over the limit of {limit}")]
    LimitExceeded {
        /// What was counted.
        what: &'static str,
        /// How much the batch had.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The database server could not be reached, or dropped the connection: the operation
    /// did nothing that was acknowledged, and the same call may succeed once it is back.
    #[error("the database server is unavailable during {op}: {cause}")]
    Unavailable {
        /// The operation that failed.
        op: &'static str,
        /// The client's error, as text.
        cause: String,
    },
    /// This host's lease on a database was taken over by another host: the write was
    /// refused and nothing of it was applied. The database must be reopened (its lease
    /// acquired again) before this host writes it.
    #[error(
        "fenced: database {id} is now leased to host {owner:?} (generation {generation}); \
         this host's write was refused and nothing of it applied"
    )]
    Fenced {
        /// The database.
        id: u64,
        /// The host that holds its lease now (empty if it was released).
        owner: String,
        /// The generation of that lease.
        generation: u64,
    },
    /// A write of a database this host holds no lease on (leases are on: see
    /// [`Kv::enable_leases`](crate::Kv::enable_leases)).
    #[error("database {id} is not leased to this host: acquire its lease before writing it")]
    NotLeased {
        /// The database.
        id: u64,
    },
    /// Another host holds a live lease on the database, and it did not expire in time.
    #[error(
        "database {id} is leased to host {owner:?} for {remaining_ms} ms more \
         (waited {waited_ms} ms); try again later, or after that host stops"
    )]
    LeasedElsewhere {
        /// The database.
        id: u64,
        /// The host holding it.
        owner: String,
        /// How long its lease still runs.
        remaining_ms: u64,
        /// How long this host waited for it.
        waited_ms: u64,
    },
    /// A point in a database's history that does not exist, is past its retention, or
    /// cannot be restored (a bookmark of no commit, a time before the history kept, an
    /// unknown or malformed label).
    #[error("{db}: {reason}")]
    NoSuchPoint {
        /// The database, named.
        db: String,
        /// What is wrong with the point asked for.
        reason: String,
    },
    /// An operation on history that cannot run now: the database is in use, or a
    /// transaction of it is being moved into place.
    #[error("{db}: {reason}")]
    HistoryBusy {
        /// The database, named.
        db: String,
        /// Why the operation cannot run now.
        reason: String,
    },
}

impl Error {
    pub(crate) fn backend(
        op: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::Backend {
            op,
            cause: Box::new(source),
        }
    }

    /// Maps a backend's error during `op` (for `map_err`).
    #[cfg(any(feature = "fjall", feature = "sled"))]
    pub(crate) fn at<E>(op: &'static str) -> impl Fn(E) -> Error
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        move |e| Error::backend(op, e)
    }

    /// Whether this error means stored data is damaged (as opposed to an I/O failure).
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Checksum { .. } | Error::Corrupt { .. })
    }

    /// Whether this error comes from a full disk (now, or when the store was poisoned).
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            Error::Full { .. }
                | Error::Poisoned {
                    disk_full: true,
                    ..
                }
                | Error::FlushFailed {
                    disk_full: true,
                    ..
                }
        )
    }

    /// Whether this error leaves the store unable to take writes until it is reopened:
    /// a full disk (a write the engine half made may be in its log), or an engine that
    /// poisoned itself.
    pub fn poisons_store(&self) -> bool {
        matches!(self, Error::Full { .. } | Error::Poisoned { .. })
    }
}

/// The I/O error saying the file system (or the user's quota on it) has no space left,
/// as text, if `err` is one or was caused by one.
#[cfg(any(feature = "fjall", feature = "sled"))]
pub(crate) fn out_of_space(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    io_error_of_kind(
        err,
        &[
            std::io::ErrorKind::StorageFull,
            std::io::ErrorKind::QuotaExceeded,
        ],
    )
}

/// The I/O error saying access was refused (no permission, a read-only file system), as
/// text, if `err` is one or was caused by one.
#[cfg(any(feature = "fjall", feature = "sled"))]
pub(crate) fn access_denied(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    io_error_of_kind(
        err,
        &[
            std::io::ErrorKind::PermissionDenied,
            std::io::ErrorKind::ReadOnlyFilesystem,
        ],
    )
}

/// The first I/O error of one of `kinds` among `err` and its causes, as text.
#[cfg(any(feature = "fjall", feature = "sled"))]
fn io_error_of_kind(
    err: &(dyn std::error::Error + 'static),
    kinds: &[std::io::ErrorKind],
) -> Option<String> {
    io_errors(err)
        .find(|io| kinds.contains(&io.kind()))
        .map(ToString::to_string)
}

/// The I/O errors among `err` and the errors it was caused by.
#[cfg(any(feature = "fjall", feature = "sled"))]
pub(crate) fn io_errors<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a std::io::Error> {
    std::iter::successors(Some(err), |e| e.source())
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
}

/// The message of a caught panic, as far as it is text.
#[cfg(any(feature = "fjall", feature = "sled"))]
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
