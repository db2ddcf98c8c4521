//! The error type of shoal-vfs and the one function that maps errors to SQLite codes.

#[cfg(feature = "vfs")]
use rusqlite::ffi;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the VFS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key-value layer failed (I/O, checksum, poisoned store, ...).
    #[cfg(feature = "vfs")]
    #[error(transparent)]
    Kv(#[from] shoal_kv::Error),
    /// A commit found the stored database changed underneath this VFS's view of it: another
    /// writer committed it, or a database server lost writes it had applied (a restart
    /// after an asynchronous commit). Nothing of the commit was applied; the database must
    /// be closed and opened again, which reads it afresh.
    #[cfg(feature = "vfs")]
    #[error(
        "{db} changed underneath this connection ({cause}): another writer committed it, \
         or the server lost writes after a restart; nothing of this commit was applied, \
         reopen the database"
    )]
    Stale {
        /// The database.
        db: String,
        /// The key-value layer's error.
        cause: shoal_kv::Error,
    },
    /// A stored file is inconsistent in a way the checksums cannot see (a chunk of the
    /// wrong length, a chunk missing inside the file).
    #[error("corrupt {file}: {reason}")]
    Corrupt {
        /// The file, named as SQLite names it.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// SQLite asked to open something this VFS cannot or will not open.
    #[error("cannot open {name:?}: {reason}")]
    CantOpen {
        /// The name SQLite gave.
        name: String,
        /// Why.
        reason: String,
    },
    /// A pragma that would make commits non-atomic, or an invalid shoal pragma value.
    #[error("{0}")]
    Refused(String),
    /// No such file (xDelete of a name that does not exist).
    #[error("no file named {0:?}")]
    NoSuchFile(String),
    /// The database has open connections.
    #[error("database {0:?} is open; close its connections first")]
    InUse(String),
    /// A VFS of this name is already registered in this process.
    #[error("a SQLite VFS named {0:?} is already registered in this process")]
    AlreadyRegistered(String),
    /// Another VFS already serves this kv (one writer per store: each keeps state in memory).
    #[error("another shoal VFS already serves this store; drop it first")]
    KvInUse,
    /// A file would grow past what the chunk numbering can address.
    #[error("{file} would grow past {max} bytes")]
    TooLarge {
        /// The file.
        file: String,
        /// The largest size it can have.
        max: u64,
    },
    /// An earlier panic may have left this database's shared state half-updated, so every
    /// call on it fails until the store is reopened.
    #[error(
        "database {db:?} is poisoned by an earlier panic in {call} ({panic}); every call on it \
         fails until the store is reopened"
    )]
    Poisoned {
        /// The database.
        db: String,
        /// The SQLite call that panicked (`xWrite`, ...).
        call: &'static str,
        /// The panic's message.
        panic: String,
    },
    /// The `Vfs` behind this VFS name was dropped: its store is closed to new opens.
    #[error("the store behind SQLite VFS {0:?} was closed (its Vfs was dropped)")]
    StoreClosed(String),
    /// Temp files (temp tables, sorts, VACUUM's copy, statement journals) would outgrow
    /// the memory they are given ([`crate::VfsOptions::temp_limit`]).
    #[error(
        "temp files (temp tables, sorts, VACUUM's copy) would outgrow their limit of {limit} bytes \
         ({} MiB, the temp share of the memory budget)", limit >> 20
    )]
    TempFull {
        /// The limit in bytes, shared by every temp file of the VFS.
        limit: u64,
    },
    /// A call SQLite refused (registration, configuration).
    #[error("SQLite refused {what} with code {code}")]
    Sqlite {
        /// What was attempted.
        what: &'static str,
        /// SQLite's result code.
        code: i32,
    },
}

/// The VFS operation an error happened in; it picks the extended SQLite error code.
#[cfg(feature = "vfs")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Open,
    Close,
    Read,
    Write,
    Truncate,
    Sync,
    FileSize,
    Lock,
    Unlock,
    CheckReservedLock,
    Delete,
    Access,
    BeginAtomic,
    CommitAtomic,
    Control,
}

#[cfg(feature = "vfs")]
impl Error {
    pub(crate) fn corrupt(file: &str, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            file: file.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn cant_open(name: &str, reason: impl Into<String>) -> Error {
        Error::CantOpen {
            name: name.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The SQLite result code for `err` raised during `op`. The one place codes are chosen:
/// - damaged data: `SQLITE_IOERR_DATA` for a checksum mismatch (what SQLite's own
///   checksum VFS returns), `SQLITE_CORRUPT` for structural damage;
/// - a failed atomic commit must be an `SQLITE_IOERR` code, or SQLite cannot fall back to
///   its rollback journal;
/// - a full disk, now or when the store was poisoned, is `SQLITE_FULL` ("database or disk
///   is full"), as the unix VFS reports ENOSPC; a write to a read-only store is
///   `SQLITE_READONLY`;
/// - every other failure is the operation's `SQLITE_IOERR_*` code.
#[cfg(feature = "vfs")]
pub(crate) fn sqlite_code(err: &Error, op: Op) -> i32 {
    match op {
        Op::CommitAtomic => return ffi::SQLITE_IOERR_COMMIT_ATOMIC,
        Op::BeginAtomic => return ffi::SQLITE_IOERR_BEGIN_ATOMIC,
        _ => {}
    }
    match err {
        Error::Kv(shoal_kv::Error::Checksum { .. }) => ffi::SQLITE_IOERR_DATA,
        Error::Kv(e) if e.is_corruption() => ffi::SQLITE_CORRUPT,
        Error::Kv(shoal_kv::Error::UnsupportedFormat { .. }) => ffi::SQLITE_CORRUPT,
        Error::Kv(e) if e.is_disk_full() => ffi::SQLITE_FULL,
        Error::Kv(shoal_kv::Error::ReadOnly { .. }) => ffi::SQLITE_READONLY,
        // Another host holds the database: busy, as a lock held elsewhere is.
        Error::Kv(shoal_kv::Error::LeasedElsewhere { .. }) => ffi::SQLITE_BUSY,
        Error::Corrupt { .. } => ffi::SQLITE_CORRUPT,
        Error::CantOpen { .. } => ffi::SQLITE_CANTOPEN,
        Error::Refused(_) => ffi::SQLITE_ERROR,
        Error::InUse(_) => ffi::SQLITE_BUSY,
        Error::NoSuchFile(_) if op == Op::Delete => ffi::SQLITE_IOERR_DELETE_NOENT,
        Error::TooLarge { .. } | Error::TempFull { .. } => ffi::SQLITE_FULL,
        // xOpen's own code is CANTOPEN; a poisoned database answers an I/O error to all.
        Error::Poisoned { .. } if op == Op::Open => ffi::SQLITE_IOERR,
        _ => io_code(op),
    }
}

/// The message of a caught panic (its `&str` or `String` payload).
#[cfg(feature = "vfs")]
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// The operation's own I/O error code (what any failure without a more specific code,
/// a panic included, returns).
#[cfg(feature = "vfs")]
pub(crate) fn io_code(op: Op) -> i32 {
    match op {
        Op::Open => ffi::SQLITE_CANTOPEN,
        Op::Close => ffi::SQLITE_IOERR_CLOSE,
        Op::Read => ffi::SQLITE_IOERR_READ,
        Op::Write => ffi::SQLITE_IOERR_WRITE,
        Op::Truncate => ffi::SQLITE_IOERR_TRUNCATE,
        Op::Sync => ffi::SQLITE_IOERR_FSYNC,
        Op::FileSize => ffi::SQLITE_IOERR_FSTAT,
        Op::Lock => ffi::SQLITE_IOERR_LOCK,
        Op::Unlock => ffi::SQLITE_IOERR_UNLOCK,
        Op::CheckReservedLock => ffi::SQLITE_IOERR_CHECKRESERVEDLOCK,
        Op::Delete => ffi::SQLITE_IOERR_DELETE,
        Op::Access => ffi::SQLITE_IOERR_ACCESS,
        Op::BeginAtomic => ffi::SQLITE_IOERR_BEGIN_ATOMIC,
        Op::CommitAtomic => ffi::SQLITE_IOERR_COMMIT_ATOMIC,
        Op::Control => ffi::SQLITE_IOERR,
    }
}

#[cfg(all(test, feature = "vfs"))]
mod tests {
    use super::*;

    #[test]
    fn a_failed_atomic_commit_is_always_an_ioerr() {
        let errs = [
            Error::corrupt("a", "x"),
            Error::Kv(shoal_kv::Error::Poisoned {
                cause: "x".into(),
                disk_full: false,
            }),
            Error::Kv(shoal_kv::Error::PreconditionFailed { what: "x".into() }),
        ];
        for e in errs {
            assert_eq!(
                sqlite_code(&e, Op::CommitAtomic) & 0xff,
                ffi::SQLITE_IOERR,
                "{e}"
            );
        }
    }

    #[test]
    fn damaged_data_is_never_a_plain_io_error() {
        let checksum = Error::Kv(shoal_kv::Error::Checksum { what: "x".into() });
        assert_eq!(sqlite_code(&checksum, Op::Read), ffi::SQLITE_IOERR_DATA);
        assert_eq!(
            sqlite_code(&Error::corrupt("a", "short"), Op::Read),
            ffi::SQLITE_CORRUPT
        );
        let injected = Error::Kv(shoal_kv::Error::Injected { op: "get", nth: 1 });
        assert_eq!(sqlite_code(&injected, Op::Read), ffi::SQLITE_IOERR_READ);
    }

    #[test]
    fn a_full_disk_is_sqlite_full_outside_atomic_commits() {
        let full = [
            shoal_kv::Error::Full {
                op: "commit",
                path: "store".into(),
                cause: "no space".into(),
            },
            shoal_kv::Error::Poisoned {
                cause: "the disk is full".into(),
                disk_full: true,
            },
            shoal_kv::Error::FlushFailed {
                cause: "no space".into(),
                disk_full: true,
            },
        ];
        for e in full.map(Error::Kv) {
            assert_eq!(sqlite_code(&e, Op::Write), ffi::SQLITE_FULL, "{e}");
            assert_eq!(sqlite_code(&e, Op::Sync), ffi::SQLITE_FULL, "{e}");
            assert_eq!(
                sqlite_code(&e, Op::CommitAtomic),
                ffi::SQLITE_IOERR_COMMIT_ATOMIC,
                "{e}"
            );
        }
        let poisoned = Error::Kv(shoal_kv::Error::Poisoned {
            cause: "flush failed".into(),
            disk_full: false,
        });
        assert_eq!(sqlite_code(&poisoned, Op::Write), ffi::SQLITE_IOERR_WRITE);
    }
}

/// Why SQLite's heap was not configured ([`crate::sqlite::configure_heap`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeapRefused {
    /// The process has other threads: one of them could be inside SQLite (in the middle
    /// of `sqlite3_initialize`, which `sqlite3_config` cannot detect) or start using it.
    #[error("SQLite's heap is configured only while the process has one thread; it has {threads}")]
    OtherThreads {
        /// The threads the process had.
        threads: u64,
    },
    /// The platform does not say how many threads the process has (only Linux does, in
    /// `/proc/self/status`), so the call cannot be known to be alone.
    #[error("SQLite's heap is configured only where the process's thread count is known (Linux)")]
    ThreadCountUnknown,
    /// This build has no arena of its own (feature `arena`; the loadable extension,
    /// whose SQLite is its host's).
    #[error("this build of shoal has no allocator arena for SQLite (feature `arena`)")]
    NoArena,
}
