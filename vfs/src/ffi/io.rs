//! The `sqlite3_io_methods` table (version 3: with xFetch/xUnfetch, without shared
//! memory) and its trampolines, generic over the [`VfsImpl`] whose [`FileImpl`] they
//! call. The file's state is the `FileSlot` xOpen wrote into SQLite's allocation.

use std::ffi::{c_char, c_int, c_void};

use rusqlite::ffi as sys;

use super::{
    Control, FileImpl, FileSlot, LockLevel, OpenFile, Reply, SyncFlags, VfsImpl, c_str, catch,
    guard, sqlite_string,
};
use crate::error::{Error, Op, Result, sqlite_code};

/// The method table of `V`'s files: one `'static` table per implementation.
pub(super) fn io_methods<V: VfsImpl>() -> &'static sys::sqlite3_io_methods {
    const {
        &sys::sqlite3_io_methods {
            iVersion: 3,
            xClose: Some(x_close::<V>),
            xRead: Some(x_read::<V>),
            xWrite: Some(x_write::<V>),
            xTruncate: Some(x_truncate::<V>),
            xSync: Some(x_sync::<V>),
            xFileSize: Some(x_file_size::<V>),
            xLock: Some(x_lock::<V>),
            xUnlock: Some(x_unlock::<V>),
            xCheckReservedLock: Some(x_check_reserved_lock::<V>),
            xFileControl: Some(x_file_control::<V>),
            xSectorSize: Some(x_sector_size::<V>),
            xDeviceCharacteristics: Some(x_device_characteristics::<V>),
            // No shared memory, so no WAL (see `FileImpl`).
            xShmMap: None,
            xShmLock: None,
            xShmBarrier: None,
            xShmUnmap: None,
            xFetch: Some(x_fetch::<V>),
            xUnfetch: Some(x_unfetch::<V>),
        }
    }
}

/// The handle of an open file.
///
/// # Safety
/// `file` must be a `FileSlot<V>` that xOpen initialised (SQLite calls io methods only on
/// a file whose xOpen set pMethods), not yet freed, used by one thread at a time (SQLite
/// serialises calls on one connection's files).
unsafe fn handle<'a, V: VfsImpl>(file: *mut sys::sqlite3_file) -> Result<&'a mut V::File> {
    // SAFETY: per this function's contract the file is an initialised FileSlot<V> and no
    // other reference to it exists now.
    let open = unsafe { &mut (*file.cast::<FileSlot<V>>()).open };
    open.as_mut()
        .map(|o| &mut o.file)
        .ok_or_else(|| Error::Sqlite {
            what: "an I/O call on a closed file",
            code: sys::SQLITE_MISUSE,
        })
}

fn offset(offset: sys::sqlite3_int64) -> Result<u64> {
    u64::try_from(offset).map_err(|_| Error::Sqlite {
        what: "a negative file offset",
        code: sys::SQLITE_MISUSE,
    })
}

fn length(amount: c_int) -> Result<usize> {
    usize::try_from(amount).map_err(|_| Error::Sqlite {
        what: "a negative length",
        code: sys::SQLITE_MISUSE,
    })
}

unsafe extern "C" fn x_close<V: VfsImpl>(file: *mut sys::sqlite3_file) -> c_int {
    catch(Op::Close, || {
        // SAFETY: SQLite closes a file it opened successfully, once; taking the state out
        // of the slot leaves `None`, so it is dropped exactly once and a second close
        // finds nothing.
        let open = unsafe { (*file.cast::<FileSlot<V>>()).open.take() };
        let Some(OpenFile { reg, vfs, file }) = open else {
            return Ok(sys::SQLITE_OK);
        };
        // The file is closed however the close ends: a panic in it (which poisons the
        // database and unwinds on to `catch`) must still free a dropped VFS's slot once
        // this was its last file, or the store could never be served again.
        let _closed = ClosedOne { reg, vfs: &vfs };
        file.close()?;
        Ok(sys::SQLITE_OK)
    })
}

/// Calls [`super::Registration::closed_one`] when dropped, unwinding included.
struct ClosedOne<'a, V: VfsImpl> {
    reg: &'static super::Registration<V>,
    vfs: &'a std::sync::Arc<V>,
}

impl<V: VfsImpl> Drop for ClosedOne<'_, V> {
    fn drop(&mut self) {
        self.reg.closed_one(self.vfs);
    }
}

/// xRead. SQLite's contract: a short read fills the rest of the buffer with zeros and
/// returns SQLITE_IOERR_SHORT_READ.
unsafe extern "C" fn x_read<V: VfsImpl>(
    file: *mut sys::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    at: sys::sqlite3_int64,
) -> c_int {
    catch(Op::Read, || {
        // SAFETY: see `handle`.
        let h = unsafe { handle::<V>(file) }?;
        let len = length(amount)?;
        // SAFETY: SQLite passes `amount` writable bytes at `buf`.
        let buf = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
        let n = h.read(buf, offset(at)?)?;
        if n < len {
            buf.get_mut(n..).unwrap_or_default().fill(0);
            return Ok(sys::SQLITE_IOERR_SHORT_READ);
        }
        Ok(sys::SQLITE_OK)
    })
}

unsafe extern "C" fn x_write<V: VfsImpl>(
    file: *mut sys::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    at: sys::sqlite3_int64,
) -> c_int {
    catch(Op::Write, || {
        // SAFETY: see `handle`.
        let h = unsafe { handle::<V>(file) }?;
        // SAFETY: SQLite passes `amount` readable bytes at `buf`.
        let data = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), length(amount)?) };
        h.write(data, offset(at)?)?;
        Ok(sys::SQLITE_OK)
    })
}

unsafe extern "C" fn x_truncate<V: VfsImpl>(
    file: *mut sys::sqlite3_file,
    size: sys::sqlite3_int64,
) -> c_int {
    catch(Op::Truncate, || {
        // SAFETY: see `handle`.
        let h = unsafe { handle::<V>(file) }?;
        h.truncate(offset(size)?)?;
        Ok(sys::SQLITE_OK)
    })
}

unsafe extern "C" fn x_sync<V: VfsImpl>(file: *mut sys::sqlite3_file, flags: c_int) -> c_int {
    catch(Op::Sync, || {
        // SAFETY: see `handle`.
        let h = unsafe { handle::<V>(file) }?;
        h.sync(SyncFlags {
            // NORMAL or FULL in the low bits, DATAONLY beside them (os_unix.c `unixSync`).
            full: flags & 0x0f == sys::SQLITE_SYNC_FULL,
            data_only: flags & sys::SQLITE_SYNC_DATAONLY != 0,
        })?;
        Ok(sys::SQLITE_OK)
    })
}

unsafe extern "C" fn x_file_size<V: VfsImpl>(
    file: *mut sys::sqlite3_file,
    out: *mut sys::sqlite3_int64,
) -> c_int {
    catch(Op::FileSize, || {
        // SAFETY: see `handle`.
        let h = unsafe { handle::<V>(file) }?;
        let size =
            i64::try_from(h.file_size()?).map_err(|_| Error::corrupt("file", "size beyond i64"))?;
        // SAFETY: SQLite passes a writable i64.
        unsafe { *out = size };
        Ok(sys::SQLITE_OK)
    })
}

fn level(level: c_int) -> Result<LockLevel> {
    LockLevel::from_sqlite(level).ok_or(Error::Sqlite {
        what: "an unknown lock level",
        code: sys::SQLITE_MISUSE,
    })
}

unsafe extern "C" fn x_lock<V: VfsImpl>(file: *mut sys::sqlite3_file, lock: c_int) -> c_int {
    catch(Op::Lock, || {
        // SAFETY: see `handle`.
        let h = unsafe { handle::<V>(file) }?;
        Ok(if h.lock(level(lock)?)? {
            sys::SQLITE_OK
        } else {
            sys::SQLITE_BUSY
        })
    })
}

unsafe extern "C" fn x_unlock<V: VfsImpl>(file: *mut sys::sqlite3_file, lock: c_int) -> c_int {
    catch(Op::Unlock, || {
        // SAFETY: see `handle`.
        let h = unsafe { handle::<V>(file) }?;
        h.unlock(level(lock)?)?;
        Ok(sys::SQLITE_OK)
    })
}

unsafe extern "C" fn x_check_reserved_lock<V: VfsImpl>(
    file: *mut sys::sqlite3_file,
    out: *mut c_int,
) -> c_int {
    catch(Op::CheckReservedLock, || {
        // SAFETY: see `handle`.
        let h = unsafe { handle::<V>(file) }?;
        let reserved = h.check_reserved_lock()?;
        // SAFETY: SQLite passes a writable int.
        unsafe { *out = c_int::from(reserved) };
        Ok(sys::SQLITE_OK)
    })
}

/// xFileControl. Unknown ops answer SQLITE_NOTFOUND, as SQLite requires.
unsafe extern "C" fn x_file_control<V: VfsImpl>(
    file: *mut sys::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    let error_op = match op {
        sys::SQLITE_FCNTL_BEGIN_ATOMIC_WRITE => Op::BeginAtomic,
        sys::SQLITE_FCNTL_COMMIT_ATOMIC_WRITE => Op::CommitAtomic,
        sys::SQLITE_FCNTL_SYNC => Op::Sync,
        _ => Op::Control,
    };
    let pragma_args = arg.cast::<*mut c_char>();
    let result = catch(error_op, || {
        // SAFETY: see `handle`.
        let h = unsafe { handle::<V>(file) }?;
        let control = match op {
            sys::SQLITE_FCNTL_BEGIN_ATOMIC_WRITE => Control::BeginAtomicWrite,
            sys::SQLITE_FCNTL_COMMIT_ATOMIC_WRITE => Control::CommitAtomicWrite,
            sys::SQLITE_FCNTL_ROLLBACK_ATOMIC_WRITE => Control::RollbackAtomicWrite,
            sys::SQLITE_FCNTL_SYNC => Control::Sync,
            sys::SQLITE_FCNTL_COMMIT_PHASETWO => Control::CommitPhaseTwo,
            sys::SQLITE_FCNTL_PRAGMA => {
                // SAFETY: for PRAGMA, `arg` is char*[3]: [out, name, value or NULL].
                let args = unsafe { std::slice::from_raw_parts(pragma_args, 3) };
                let (name, value) = match args {
                    [_, name, value] => (*name, *value),
                    _ => return Ok(sys::SQLITE_NOTFOUND),
                };
                // SAFETY: SQLite's pragma name is NUL-terminated for this call. A name
                // that is not UTF-8 is none of the pragmas this VFS answers.
                let Ok(Some(name)) = (unsafe { c_str(name) }) else {
                    return Ok(sys::SQLITE_NOTFOUND);
                };
                // The value stays bytes: SQLite reads `0\xff` as the number 0, so a
                // value that is not UTF-8 must be judged too, not passed through.
                let value = (!value.is_null())
                    // SAFETY: SQLite's pragma value is NULL or NUL-terminated.
                    .then(|| unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes());
                return pragma::<V::File>(h, pragma_args, name, value);
            }
            sys::SQLITE_FCNTL_MMAP_SIZE => {
                // SAFETY: for MMAP_SIZE, `arg` points at an i64 (in and out).
                Control::MmapSize(unsafe { *arg.cast::<i64>() })
            }
            sys::SQLITE_FCNTL_LOCKSTATE => Control::LockState,
            sys::SQLITE_FCNTL_HAS_MOVED => Control::HasMoved,
            sys::SQLITE_FCNTL_POWERSAFE_OVERWRITE => {
                // SAFETY: for POWERSAFE_OVERWRITE, `arg` points at an int; < 0 asks.
                if unsafe { *arg.cast::<c_int>() } >= 0 {
                    return Ok(sys::SQLITE_OK);
                }
                Control::PowersafeOverwrite
            }
            sys::SQLITE_FCNTL_VFSNAME => Control::VfsName,
            sys::SQLITE_FCNTL_SIZE_HINT | sys::SQLITE_FCNTL_CHUNK_SIZE => Control::Hint,
            _ => Control::Other,
        };
        match h.control(control)? {
            Reply::NotFound => Ok(sys::SQLITE_NOTFOUND),
            Reply::Done => Ok(sys::SQLITE_OK),
            Reply::Int(v) => {
                match op {
                    // SAFETY: MMAP_SIZE's argument is an i64.
                    sys::SQLITE_FCNTL_MMAP_SIZE => unsafe { *arg.cast::<i64>() = v },
                    // SAFETY: the other int-answering ops take an int.
                    _ => unsafe { *arg.cast::<c_int>() = c_int::try_from(v).unwrap_or(c_int::MAX) },
                }
                Ok(sys::SQLITE_OK)
            }
            Reply::Text(text) => {
                // SAFETY: VFSNAME's argument is a char* out-parameter SQLite frees.
                unsafe { *arg.cast::<*mut c_char>() = sqlite_string(&text) };
                Ok(sys::SQLITE_OK)
            }
        }
    });
    // SQLite's contract for the atomic-write ops: only an SQLITE_IOERR family code lets it
    // fall back to the journal; `catch` maps these ops' errors accordingly.
    result
}

/// Answers an SQLITE_FCNTL_PRAGMA: a result or an error message goes in `args[0]`.
fn pragma<F: FileImpl>(
    h: &mut F,
    args: *mut *mut c_char,
    name: &str,
    value: Option<&[u8]>,
) -> Result<c_int> {
    let (rc, text) = match h.control(Control::Pragma { name, value }) {
        Ok(Reply::Text(text)) => (sys::SQLITE_OK, Some(text)),
        Ok(Reply::NotFound) => (sys::SQLITE_NOTFOUND, None),
        Ok(_) => (sys::SQLITE_OK, None),
        // A poisoned database says why in the statement's error message too.
        Err(e @ (Error::Refused(_) | Error::Poisoned { .. })) => {
            (sqlite_code(&e, Op::Control), Some(e.to_string()))
        }
        Err(e) => return Err(e),
    };
    if let Some(text) = text {
        // SAFETY: args[0] is SQLite's out-parameter for the result or message; it frees it.
        unsafe { *args = sqlite_string(&text) };
    }
    Ok(rc)
}

unsafe extern "C" fn x_sector_size<V: VfsImpl>(file: *mut sys::sqlite3_file) -> c_int {
    // A failure cannot be answered as a size: 512 then, as shoal always answered.
    guard(Op::Control, || {
        // SAFETY: see `handle`.
        Ok(unsafe { handle::<V>(file) }?.sector_size())
    })
    .unwrap_or(512)
}

unsafe extern "C" fn x_device_characteristics<V: VfsImpl>(file: *mut sys::sqlite3_file) -> c_int {
    // A failure cannot be answered as flags: claim nothing then.
    guard(Op::Control, || {
        // SAFETY: see `handle`.
        Ok(unsafe { handle::<V>(file) }?.device_characteristics())
    })
    .unwrap_or(0)
}

/// xFetch: `*pp` gets a pointer into a stored page, or NULL to make SQLite use xRead.
unsafe extern "C" fn x_fetch<V: VfsImpl>(
    file: *mut sys::sqlite3_file,
    at: sys::sqlite3_int64,
    amount: c_int,
    pp: *mut *mut c_void,
) -> c_int {
    if pp.is_null() {
        return sys::SQLITE_OK;
    }
    // SAFETY: SQLite passes a writable pointer slot.
    unsafe { *pp = std::ptr::null_mut() };
    catch(Op::Read, || {
        // SAFETY: see `handle`.
        let h = unsafe { handle::<V>(file) }?;
        if let Some(ptr) = h.fetch(offset(at)?, length(amount)?) {
            // SAFETY: as above. SQLite only reads through the pointer; `FileImpl::fetch`'s
            // contract keeps the bytes valid until xUnfetch or xClose.
            unsafe { *pp = ptr.cast_mut().cast() };
        }
        Ok(sys::SQLITE_OK)
    })
}

/// xUnfetch: gives back a page xFetch lent, or, for NULL, asks the file to drop every
/// mapping (os_unix.c `unixUnfetch`: "If p==0 (unmap the entire file) then there must be
/// no outstanding xFetch references"); both reach [`FileImpl::unfetch`].
unsafe extern "C" fn x_unfetch<V: VfsImpl>(
    file: *mut sys::sqlite3_file,
    at: sys::sqlite3_int64,
    p: *mut c_void,
) -> c_int {
    catch(Op::Read, || {
        // SAFETY: see `handle`.
        let h = unsafe { handle::<V>(file) }?;
        // NULL asks to drop every mapping (see `FileImpl::unfetch`).
        h.unfetch(offset(at)?, (!p.is_null()).then_some(p.cast_const().cast()));
        Ok(sys::SQLITE_OK)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use shoal_kv::{FaultOp, FaultyKv, Kv, KvStore, MemKv};

    use super::*;
    use crate::VfsOptions;
    use crate::ffi::probe::Probe;

    /// SQLite itself never leaves a journal dirty at xClose (it syncs first), so this
    /// drives the VFS table directly: a journal write left in the overlay, the `Vfs`
    /// dropped, then a close whose write-back panics. The panic poisons the database,
    /// and the store must still be free to serve again.
    #[test]
    fn a_panic_in_the_last_close_still_frees_the_registration() {
        let faulty = Arc::new(FaultyKv::new(MemKv::new()));
        let kv = Arc::new(Kv::open(Arc::clone(&faulty) as Arc<dyn KvStore>).unwrap());
        let name = "shoal-close-panic-test";
        let options = || VfsOptions {
            name: name.to_owned(),
            ..VfsOptions::default()
        };
        let vfs = crate::register(Arc::clone(&kv), options()).unwrap();
        let usage = vfs.usage();
        let flags = sys::SQLITE_OPEN_MAIN_DB | sys::SQLITE_OPEN_CREATE | sys::SQLITE_OPEN_READWRITE;
        let (main, opened) = Probe::open(name, Some("db"), flags).unwrap();
        assert_eq!(opened, sys::SQLITE_OK);
        let journal_flags =
            sys::SQLITE_OPEN_MAIN_JOURNAL | sys::SQLITE_OPEN_CREATE | sys::SQLITE_OPEN_READWRITE;
        let (mut file, opened) = Probe::open(name, Some("db-journal"), journal_flags).unwrap();
        assert_eq!(opened, sys::SQLITE_OK);
        let page = [7u8; 4096];
        assert_eq!(file.write(&page, 0), sys::SQLITE_OK);
        assert_eq!(main.close(), sys::SQLITE_OK);
        drop(vfs);
        faulty.panic_from(FaultOp::Any, 1);
        assert_ne!(file.close(), sys::SQLITE_OK, "the write-back panicked");
        assert!(faulty.injected() > 0);
        faulty.clear();
        assert!(!usage.in_use(), "the last close released the store");
        crate::register(kv, options()).unwrap();
    }
}
