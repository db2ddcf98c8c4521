//! The safe seam between SQLite and a VFS written in Rust: [`VfsImpl`] for the VFS,
//! [`FileImpl`] for one open file. The trampolines in `methods.rs` and `io.rs` are
//! generic over these traits and know nothing else; everything SQLite requires of a VFS
//! that safe code cannot see in a signature is written on the method it concerns.
//!
//! Every method returns [`crate::Error`]; the trampoline turns it into SQLite's code for
//! the method (`crate::error::sqlite_code`, the one place codes are chosen) and keeps its
//! message for `xGetLastError`, SQLite's error log and `take_last_failure`. A panic in any
//! method is caught at the boundary and answers the method's own `SQLITE_IOERR_*` code
//! (`SQLITE_CANTOPEN` for xOpen); it never unwinds into SQLite.

use std::ffi::{CStr, CString, c_char};
use std::marker::PhantomData;
use std::sync::Arc;

use rusqlite::ffi as sys;

use crate::error::Result;
pub use crate::lock::LockLevel;

/// A VFS: what SQLite's `sqlite3_vfs` methods ask of it. Randomness, time, sleep and
/// extension loading are delegated to SQLite's default VFS.
///
/// Registered with `register`, one value serves every connection that names the VFS,
/// from any thread at once, hence `Send + Sync`.
pub trait VfsImpl: Send + Sync + Sized + 'static {
    /// One open file.
    type File: FileImpl;

    /// xOpen: opens `name` (`None` for SQLite's anonymous temp files) with SQLite's
    /// `SQLITE_OPEN_*` `flags`.
    ///
    /// SQLite's contract: when xOpen fails, `pMethods` stays NULL, so SQLite never calls
    /// xClose on the half-made file. The trampoline keeps it: it writes the file (and
    /// sets `pMethods`) only after this returned `Ok`, and answers an `Err` or a panic
    /// with `pMethods` NULL and nothing left to drop. The name lives until the file's
    /// xClose. `SQLITE_OPEN_WAL` files must be refused (there is no shared memory; see
    /// [`FileImpl`]).
    fn open(self: &Arc<Self>, name: Option<&str>, flags: i32) -> Result<Self::File>;

    /// xOpen with the URI parameters of the name (`file:a?store=/x` gives `store`), for a
    /// VFS configured per database. By default the parameters are ignored.
    fn open_with(
        self: &Arc<Self>,
        name: Option<&str>,
        flags: i32,
        params: OpenParams<'_>,
    ) -> Result<Self::File> {
        let _ = params;
        self.open(name, flags)
    }

    /// xDelete. A name that does not exist is `Error::NoSuchFile`, which becomes
    /// `SQLITE_IOERR_DELETE_NOENT` (what SQLite expects for a journal already gone).
    fn delete(&self, name: &str) -> Result<()>;

    /// xAccess (EXISTS and READWRITE alike): whether `name` exists.
    fn access(&self, name: &str) -> Result<bool>;

    /// xFullPathname: the one canonical name of `name`. It must be shorter than
    /// SQLite's `mxPathname` (1024 bytes with the NUL), or the open fails.
    fn full_pathname(&self, name: &str) -> Result<String>;
}

/// How SQLite asks xSync to sync (its `SQLITE_SYNC_*` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncFlags {
    /// `SQLITE_SYNC_FULL` (else `SQLITE_SYNC_NORMAL`): the Mac's F_FULLFSYNC.
    pub full: bool,
    /// `SQLITE_SYNC_DATAONLY`: the file's metadata (its size) need not be synced.
    pub data_only: bool,
}

/// One open file: what SQLite's `sqlite3_io_methods` (version 3) ask of it. SQLite calls
/// one file from one thread at a time (a connection serialises its files), so methods
/// take `&mut self`; the file may move between threads, hence `Send`.
///
/// Version 3 has no shared memory: xShmMap, xShmLock, xShmBarrier and xShmUnmap are NULL,
/// so SQLite cannot open a WAL in normal locking mode. A VFS without shared memory must
/// also refuse WAL itself, as shoal does: `PRAGMA journal_mode=WAL` is refused through
/// [`Control::Pragma`] (in EXCLUSIVE locking mode SQLite would otherwise keep the WAL
/// index on its heap), and [`VfsImpl::open`] refuses `SQLITE_OPEN_WAL`.
pub trait FileImpl: Send + 'static {
    /// xRead: fills `buf` from `offset` and returns how many bytes it filled. Fewer than
    /// `buf.len()` means the file ended.
    ///
    /// SQLite's contract for a short read: the call returns `SQLITE_IOERR_SHORT_READ` and
    /// fills the rest of the buffer with zeros ("failure to zero-fill short reads will
    /// eventually lead to database corruption", sqlite3.h). The trampoline does both; the
    /// implementation only reports the count.
    fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<usize>;

    /// xWrite: writes `data` at `offset`, growing the file if needed.
    fn write(&mut self, data: &[u8], offset: u64) -> Result<()>;

    /// xTruncate: sets the file's size to `size`.
    fn truncate(&mut self, size: u64) -> Result<()>;

    /// xSync: makes the file's writes durable, as `flags` asks.
    fn sync(&mut self, flags: SyncFlags) -> Result<()>;

    /// xFileSize.
    fn file_size(&mut self) -> Result<u64>;

    /// xLock: raises this file's lock to at least `level`. `Ok(false)` is
    /// `SQLITE_BUSY` (another connection holds a conflicting lock; SQLite's busy handler
    /// retries). The rules are os_unix.c's, summed up in `lock.rs`.
    fn lock(&mut self, level: LockLevel) -> Result<bool>;

    /// xUnlock: lowers this file's lock to `level` (SHARED or NONE).
    fn unlock(&mut self, level: LockLevel) -> Result<()>;

    /// xCheckReservedLock: whether any connection holds RESERVED or more on the file.
    fn check_reserved_lock(&mut self) -> Result<bool>;

    /// xFileControl, decoded. [`Reply::NotFound`] is `SQLITE_NOTFOUND`, which SQLite
    /// requires for every op a VFS does not know. For the atomic-write ops an error
    /// becomes `SQLITE_IOERR_BEGIN_ATOMIC` / `SQLITE_IOERR_COMMIT_ATOMIC`: only an
    /// `SQLITE_IOERR` code lets SQLite fall back to its rollback journal.
    fn control(&mut self, control: Control<'_>) -> Result<Reply>;

    /// xSectorSize: the smallest write the storage can make without disturbing
    /// neighbouring bytes. shoal answers 512 for every file, as it always has.
    fn sector_size(&self) -> i32 {
        512
    }

    /// xDeviceCharacteristics: the `SQLITE_IOCAP_*` flags the file honours. Claim only
    /// what holds: SQLite skips journal writes and syncs on the strength of these.
    fn device_characteristics(&self) -> i32;

    /// xFetch: a pointer to `len` bytes of the file at `offset`, or `None` to make
    /// SQLite read the page with xRead instead (an error, too, is `None`: xRead then
    /// reports it properly).
    ///
    /// SQLite's contract for the pointer: the bytes behind it must stay valid and
    /// unchanged until SQLite gives the same pointer back through [`FileImpl::unfetch`],
    /// or until [`FileImpl::close`], whichever is first. SQLite only reads through it,
    /// and it may read it from several threads (a connection may move between threads,
    /// and in shared-cache mode one pager serves connections on several), so the bytes
    /// must be immutable and `Sync` while lent. The same page may be lent twice and is
    /// then given back twice.
    fn fetch(&mut self, offset: u64, len: usize) -> Option<*const u8> {
        let _ = (offset, len);
        None
    }

    /// xUnfetch. `Some(ptr)` gives back one lend of a pointer [`FileImpl::fetch`]
    /// returned for `offset`.
    ///
    /// `None` is xUnfetch(iOfst, NULL): the pager drops the whole mapping, because the
    /// file may have changed under it (after an error, or when another connection changed
    /// the database while it held no lock). No page is outstanding then; os_unix.c says
    /// so in `unixUnfetch`: "If p==0 (unmap the entire file) then there must be no
    /// outstanding xFetch references", and answers by unmapping the file. A VFS that
    /// caches pages for xFetch drops that cache.
    fn unfetch(&mut self, offset: u64, ptr: Option<*const u8>);

    /// xClose: releases the file's locks and writes back anything it still holds. The
    /// file is gone whatever this returns (SQLite does not retry a close).
    fn close(self) -> Result<()>;
}

/// A file control request, decoded from SQLite's op code and argument.
#[derive(Debug)]
#[non_exhaustive]
pub enum Control<'a> {
    /// SQLITE_FCNTL_BEGIN_ATOMIC_WRITE: the writes up to the commit form one batch.
    BeginAtomicWrite,
    /// SQLITE_FCNTL_COMMIT_ATOMIC_WRITE: make the batch durable as one unit.
    CommitAtomicWrite,
    /// SQLITE_FCNTL_ROLLBACK_ATOMIC_WRITE: forget the batch.
    RollbackAtomicWrite,
    /// SQLITE_FCNTL_SYNC: sent right before xSync of a database file, or in its place
    /// under `synchronous=OFF` (pager.c `sqlite3PagerSync`). An error is returned to
    /// SQLite as an SQLITE_IOERR code; SQLITE_NOTFOUND (not an error) is fine.
    Sync,
    /// SQLITE_FCNTL_COMMIT_PHASETWO: a transaction committed, before the unlock.
    CommitPhaseTwo,
    /// SQLITE_FCNTL_PRAGMA: the value as SQLite passes it (unquoted, any bytes).
    /// [`Reply::Text`] is the pragma's result; an error's message becomes the
    /// statement's error.
    Pragma {
        /// The pragma's name.
        name: &'a str,
        /// Its value, if one was given.
        value: Option<&'a [u8]>,
    },
    /// SQLITE_FCNTL_MMAP_SIZE: the new limit (negative only asks); answer the old one.
    MmapSize(i64),
    /// SQLITE_FCNTL_LOCKSTATE: answer the lock level held.
    LockState,
    /// SQLITE_FCNTL_HAS_MOVED: answer 1 if the file was renamed or deleted.
    HasMoved,
    /// SQLITE_FCNTL_POWERSAFE_OVERWRITE asking (its argument < 0): answer 1 or 0.
    PowersafeOverwrite,
    /// SQLITE_FCNTL_VFSNAME: answer the VFS's name.
    VfsName,
    /// SIZE_HINT and CHUNK_SIZE: accepted, nothing to do.
    Hint,
    /// Any other op.
    Other,
}

/// The answer to a [`Control`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Reply {
    /// SQLITE_NOTFOUND: not an op this file answers.
    NotFound,
    /// SQLITE_OK with nothing to return.
    Done,
    /// SQLITE_OK with a string (the pragma's result, the VFS name).
    Text(String),
    /// SQLITE_OK with a number in the op's argument.
    Int(i64),
}

/// The URI parameters SQLite keeps beside the name it passes xOpen for a main database
/// (`file:actor-1?store=/x&budget_mb=64` has `store` and `budget_mb`). Empty for other
/// files and for names opened without SQLITE_OPEN_URI.
#[derive(Clone, Copy)]
pub struct OpenParams<'a> {
    /// SQLite's name, or NULL for none.
    filename: *const c_char,
    _name: PhantomData<&'a CStr>,
}

impl std::fmt::Debug for OpenParams<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenParams").finish_non_exhaustive()
    }
}

impl<'a> OpenParams<'a> {
    /// No parameters.
    pub fn none() -> OpenParams<'static> {
        OpenParams {
            filename: std::ptr::null(),
            _name: PhantomData,
        }
    }

    /// The parameters of `filename`.
    ///
    /// # Safety
    /// `filename` must be NULL or the name SQLite passed xOpen for a main database file,
    /// valid for `'a` (SQLite keeps it until the file's xClose).
    pub(crate) unsafe fn of(filename: *const c_char) -> OpenParams<'a> {
        OpenParams {
            filename,
            _name: PhantomData,
        }
    }

    /// The value of parameter `key`, if the name has it (and it is UTF-8).
    pub fn get(&self, key: &str) -> Option<&'a str> {
        if self.filename.is_null() {
            return None;
        }
        let key = CString::new(key).ok()?;
        // SAFETY: `filename` is a main database's name from xOpen (the contract of `of`);
        // sqlite3_uri_parameter only reads it and the NUL-terminated key.
        let value = unsafe { sys::sqlite3_uri_parameter(self.filename, key.as_ptr()) };
        if value.is_null() {
            return None;
        }
        // SAFETY: SQLite returns a NUL-terminated string inside the name's own memory,
        // which lives for 'a.
        unsafe { CStr::from_ptr(value) }.to_str().ok()
    }
}

// SAFETY: the name is immutable memory SQLite keeps until the file's xClose; reading it
// from another thread is fine.
unsafe impl Send for OpenParams<'_> {}
